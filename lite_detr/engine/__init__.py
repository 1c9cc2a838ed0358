"""Training loop, hooks and the train/eval entry points used by ``train_net.py``."""

from .defaults import (
    ConfigError,
    build_checkpointer,
    check_config,
    do_eval_only,
    do_test,
    do_train,
    load_config,
)
from .ema import EMAHook, ModelEMA, apply_ema_weights
from .train_loop import LiteDetrTrainer

__all__ = [
    "ConfigError",
    "build_checkpointer",
    "check_config",
    "do_eval_only",
    "do_test",
    "do_train",
    "load_config",
    "EMAHook",
    "ModelEMA",
    "apply_ema_weights",
    "LiteDetrTrainer",
]
