"""Exponential moving average of the model weights, as a trainer hook."""

import contextlib
import logging
from typing import Dict

import torch
from detectron2.engine import HookBase

__all__ = ["ModelEMA", "EMAHook", "apply_ema_weights"]

logger = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model  # DDP


class ModelEMA:
    """
    Keeps ``ema = d * ema + (1 - d) * weights`` for floating-point parameters and buffers; other
    buffers (e.g. BatchNorm's ``num_batches_tracked``) are copied.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates so the average
    is not dominated by the random initialisation in short runs.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9998):
        """
        Args:
            model (nn.Module): the model (or its DDP wrapper) whose weights are averaged.
            decay (float): the final decay in [0, 1).
        """
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.model_ema.decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.state = {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, v in _unwrap(model).state_dict().items():
            ema = self.state[k]
            if ema.dtype.is_floating_point:
                ema.mul_(d).add_(v.detach().to(ema.dtype), alpha=1 - d)
            else:
                ema.copy_(v)

    def state_dict(self) -> Dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "state": self.state}

    def load_state_dict(self, state_dict: Dict) -> None:
        missing = set(self.state) - set(state_dict["state"])
        if missing:
            raise KeyError(f"EMA state in the checkpoint lacks {sorted(missing)[:5]} ...")
        self.num_updates = state_dict["num_updates"]
        for k, v in state_dict["state"].items():
            if k in self.state:
                self.state[k].copy_(v)


@contextlib.contextmanager
def apply_ema_weights(model: torch.nn.Module, ema_state: Dict[str, torch.Tensor]):
    """Temporarily load ``ema_state`` into ``model``; the training weights come back on exit."""
    module = _unwrap(model)
    backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.load_state_dict(ema_state)
    try:
        yield model
    finally:
        module.load_state_dict(backup)


class EMAHook(HookBase):
    """
    Update a :class:`ModelEMA` after every step. Its state goes into checkpoints through the
    trainer's hook state (key ``EMAHook``), so ``--resume`` continues the same average.

    Use :meth:`apply` around evaluation to evaluate the EMA weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9998):
        self.model = model
        self.ema = ModelEMA(model, decay)

    def after_step(self):
        self.ema.update(self.model)

    def apply(self):
        """Context manager: the model holds the EMA weights inside it."""
        return apply_ema_weights(self.model, self.ema.state)

    def state_dict(self):
        return self.ema.state_dict()

    def load_state_dict(self, state_dict):
        self.ema.load_state_dict(state_dict)
        logger.info(f"Loaded EMA weights after {self.ema.num_updates} updates")
