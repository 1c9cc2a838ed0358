"""A device-agnostic trainer: AMP (fp16/bf16), gradient clipping, NaN-loss stop, exact resume."""

import logging
import time
from typing import Dict, List

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

from lite_detr.data import DatasetError
from lite_detr.utils import get_rng_states, set_rng_states

__all__ = ["LiteDetrTrainer"]

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# values per scalar that a checkpoint keeps: the window of detectron2's writers' medians
_HISTORY_WINDOW = 20
# stops whose message says all (a NaN loss, an image that cannot be read): the caller reports
# them in one line, so detectron2's loop does not log their traceback
_ONE_LINE_STOPS = (FloatingPointError, DatasetError)


class _NoTracebackForOneLineStops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _ONE_LINE_STOPS)


_QUIET = _NoTracebackForOneLineStops()


class LiteDetrTrainer(SimpleTrainer):
    """
    ``SimpleTrainer`` with optional automatic mixed precision and gradient clipping, on any device.

    detectron2 0.6's ``AMPTrainer`` asserts CUDA and has no clipping; this trainer runs on CPU
    and GPU. fp16 uses a ``GradScaler`` (its state is checkpointed, so ``--resume`` continues with
    the same scale); bf16 has fp32's exponent range and needs none. Gradients are unscaled before
    clipping so ``max_norm`` means the same with and without AMP.

    A non-finite loss raises ``FloatingPointError`` naming the iteration *before* the backward
    pass and optimizer step, so the weights and the last periodic checkpoint stay good.

    Exact resume: the state dict holds, for every rank, the global RNG states and the position
    of a data loader that has ``state_dict`` (:class:`~lite_detr.data.ResumableTrainLoader`); a
    run resumed from it continues as the uninterrupted run would. With several processes,
    :meth:`gather_rank_states` must run on all ranks before the main rank saves. It also holds
    the last values of every logged scalar, which a resumed run puts back into its
    ``EventStorage`` before the first iteration, so that the smoothed values it logs (medians
    over 20 iterations) are those of the uninterrupted run.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        *,
        amp_enabled: bool = False,
        amp_dtype: str = "float16",
        clip_grad_params: Dict | None = None,
        device_type: str = "cpu",
    ):
        """
        Args:
            model, data_loader, optimizer: as in ``SimpleTrainer``.
            amp_enabled (bool): run the forward pass under ``torch.autocast``.
            amp_dtype (str): "float16" (with gradient scaling) or "bfloat16".
            clip_grad_params (dict, optional): kwargs of ``torch.nn.utils.clip_grad_norm_``
                (``max_norm``, ``norm_type``); None disables clipping.
            device_type (str): "cpu" or "cuda", the autocast / GradScaler device.
        """
        if amp_dtype not in _AMP_DTYPES:
            raise ValueError(
                f"train.amp.dtype must be one of {sorted(_AMP_DTYPES)}, got {amp_dtype!r}"
            )
        super().__init__(model, data_loader, optimizer)
        self.amp_enabled = amp_enabled
        self.amp_dtype = _AMP_DTYPES[amp_dtype]
        self.device_type = device_type
        self.clip_grad_params = dict(clip_grad_params) if clip_grad_params else None
        use_scaler = amp_enabled and self.amp_dtype == torch.float16
        self.grad_scaler = torch.amp.GradScaler(device_type) if use_scaler else None
        self._rank_states: List[Dict] | None = None
        self._resumed_history: Dict | None = None

    def train(self, start_iter: int, max_iter: int):
        log = logging.getLogger("detectron2.engine.train_loop")
        log.addFilter(_QUIET)
        try:
            super().train(start_iter, max_iter)
        finally:
            log.removeFilter(_QUIET)

    def before_train(self):
        if self._resumed_history is not None:
            self._restore_history(self._resumed_history)
            self._resumed_history = None
        super().before_train()

    def after_train(self):
        # detectron2 counts one past the end after its loop, also when a resumed finished run
        # has no iteration left: the final evaluation is logged at max_iter either way
        self.iter = min(self.iter, self.max_iter)
        super().after_train()

    def run_step(self):
        assert self.model.training, "[LiteDetrTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp_enabled):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not torch.isfinite(losses):
            values = {k: float(v.detach()) for k, v in loss_dict.items()}
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration {self.iter}: {values}. "
                "The weights are not updated; the last periodic checkpoint is intact. Try a "
                "lower lr, gradient clipping (train.clip_grad) or train.amp.dtype=bfloat16."
            )

        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()

        self._write_metrics(loss_dict, data_time)

        if self.clip_grad_params is not None:
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
            params = [
                p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, **self.clip_grad_params)
            self.storage.put_scalar("grad_norm", float(grad_norm), smoothing_hint=True)

        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def _local_resume_state(self) -> Dict:
        loader = self.data_loader if hasattr(self.data_loader, "state_dict") else None
        return {"rng": get_rng_states(), "data_loader": loader.state_dict() if loader else None}

    def gather_rank_states(self) -> None:
        """Collect every rank's RNG and data-loader state for ``state_dict`` (all ranks must call
        it; :meth:`forget_rank_states` after the save)."""
        self._rank_states = comm.all_gather(self._local_resume_state())

    def forget_rank_states(self) -> None:
        self._rank_states = None

    def _history(self) -> Dict | None:
        storage = getattr(self, "storage", None)
        if storage is None:
            return None
        return {
            "scalars": {k: h.values()[-_HISTORY_WINDOW:] for k, h in storage.histories().items()},
            "smoothing_hints": storage.smoothing_hints(),
        }

    def _restore_history(self, history: Dict) -> None:
        storage, start = self.storage, self.storage.iter
        hints = history["smoothing_hints"]
        for name, values in history["scalars"].items():
            for value, iteration in values:
                storage.iter = iteration
                storage.put_scalar(name, value, smoothing_hint=hints.get(name, True))
        storage.iter = start

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        ret["ranks"] = self._rank_states or [self._local_resume_state()]
        ret["metrics_history"] = self._history()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._resumed_history = state_dict.get("metrics_history")
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        ranks = state_dict.get("ranks")
        world = comm.get_world_size()
        if not ranks or len(ranks) != world:
            saved = f"{len(ranks)} processes" if ranks else "no RNG or data-loader state"
            logger.warning(
                f"The checkpoint has {saved}; this run has {world}: the data order and random "
                "numbers after resuming differ from those of an uninterrupted run."
            )
            return
        mine = ranks[comm.get_rank()]
        set_rng_states(mine["rng"])
        if mine.get("data_loader") is not None and hasattr(self.data_loader, "load_state_dict"):
            self.data_loader.load_state_dict(mine["data_loader"])
