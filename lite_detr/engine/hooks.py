"""Training hooks: the periodic checkpointer of this project's runs."""

import logging
import os
import re
import shutil

from detectron2.engine import hooks
from detectron2.utils import comm

from lite_detr.checkpoint import CheckpointError
from lite_detr.utils import atomic_write

__all__ = ["PeriodicCheckpointer"]

logger = logging.getLogger("detectron2")  # shown and in log.txt, as train_net.py sets it up


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """
    detectron2's ``PeriodicCheckpointer`` hook, registered on every rank, with two changes:

    * before a save, every rank's RNG and data-loader state is gathered into the trainer
      (``LiteDetrTrainer.gather_rank_states``), so the checkpoint resumes all ranks exactly;
      only the main rank writes (the checkpointer's ``save_to_disk``);
    * ``max_to_keep`` counts the periodic checkpoints on disk, not the ones this process wrote:
      after every periodic save the oldest ``model_NNNNNNN.pth`` beyond ``max_to_keep`` are
      deleted, including those of earlier, resumed runs. ``model_final.pth`` and the file that
      ``last_checkpoint`` names are never deleted;
    * a resumed run whose schedule is over (the checkpoint of iteration ``max_iter - 1`` was
      resumed) makes sure that ``model_final.pth`` holds that checkpoint: a run killed while
      saving it leaves it missing, since the periodic checkpoint of the same iteration is saved
      first and ``last_checkpoint`` names that one. It is then copied from that checkpoint, with
      a warning.
    """

    def __init__(self, checkpointer, period: int, max_iter=None, max_to_keep=None, **kwargs):
        super().__init__(checkpointer, period, max_iter=max_iter, max_to_keep=None, **kwargs)
        self.keep = max_to_keep

    def before_train(self):
        super().before_train()
        if self.trainer.start_iter >= self.max_iter and comm.is_main_process():
            self._restore_final(self.trainer.start_iter - 1)

    def _restore_final(self, iteration: int) -> None:
        source = self.checkpointer.resumed_from
        final = os.path.join(self.checkpointer.save_dir, f"{self.file_prefix}_final.pth")
        if source is None or os.path.abspath(source) == os.path.abspath(final):
            return
        if not os.path.isfile(final):
            problem = "is missing"
        else:
            try:
                found = self.checkpointer.read_iteration(final)
                problem = None if found == iteration else f"holds iteration {found}"
            except CheckpointError as e:
                problem = f"is unusable ({e})"
        if problem is None:
            return
        logger.warning(
            f"{final} {problem} (a run killed while saving it): the schedule ended at iteration "
            f"{iteration}; writing it from {source}, the checkpoint of that iteration."
        )
        with open(source, "rb") as src, atomic_write(final, "wb") as dst:
            shutil.copyfileobj(src, dst)
        self.checkpointer.tag_last_checkpoint(os.path.basename(final))

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
