"""Training hooks: the periodic checkpointer of this project's runs."""

import logging
import os
import re

from detectron2.engine import hooks
from detectron2.utils import comm

__all__ = ["PeriodicCheckpointer"]

logger = logging.getLogger(__name__)


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """
    detectron2's ``PeriodicCheckpointer`` hook, registered on every rank, with two changes:

    * before a save, every rank's RNG and data-loader state is gathered into the trainer
      (``LiteDetrTrainer.gather_rank_states``), so the checkpoint resumes all ranks exactly;
      only the main rank writes (the checkpointer's ``save_to_disk``);
    * ``max_to_keep`` counts the periodic checkpoints on disk, not the ones this process wrote:
      after every periodic save the oldest ``model_NNNNNNN.pth`` beyond ``max_to_keep`` are
      deleted, including those of earlier, resumed runs. ``model_final.pth`` and the file that
      ``last_checkpoint`` names are never deleted.
    """

    def __init__(self, checkpointer, period: int, max_iter=None, max_to_keep=None, **kwargs):
        super().__init__(checkpointer, period, max_iter=max_iter, max_to_keep=None, **kwargs)
        self.keep = max_to_keep

    def step(self, iteration: int, **kwargs) -> None:
        iteration = int(iteration)
        periodic = (iteration + 1) % self.period == 0
        final = self.max_iter is not None and iteration >= self.max_iter - 1
        if not (periodic or final):
            return
        gather = hasattr(self.trainer, "gather_rank_states")
        if gather:
            self.trainer.gather_rank_states()
        try:
            super().step(iteration, **kwargs)
        finally:
            if gather:
                self.trainer.forget_rank_states()
        if periodic and self.keep is not None and comm.is_main_process():
            self._prune()

    def _prune(self) -> None:
        folder = self.checkpointer.save_dir
        pattern = re.compile(rf"^{re.escape(self.file_prefix)}_(\d+)\.pth$")
        found = sorted(
            (int(m.group(1)), name)
            for name in os.listdir(folder)
            if (m := pattern.match(name)) is not None
        )
        protected = os.path.basename(self.checkpointer.get_checkpoint_file())
        for _, name in found[: max(0, len(found) - self.keep)]:
            if name != protected:
                os.remove(os.path.join(folder, name))
                logger.info(f"Removed {name} (train.checkpointer.max_to_keep={self.keep}).")
