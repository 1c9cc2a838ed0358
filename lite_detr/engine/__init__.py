"""Training loop, hooks and the train/eval entry points used by ``train_net.py``."""

from .defaults import (
    ConfigError,
    build_checkpointer,
    build_train_loader,
    check_config,
    check_output_dir,
    claim_output_dir,
    do_eval_only,
    do_test,
    do_train,
    load_config,
)
from .ema import EMAHook, ModelEMA, apply_ema_weights
from .hooks import PeriodicCheckpointer
from .train_loop import LiteDetrTrainer

__all__ = [
    "ConfigError",
    "build_checkpointer",
    "build_train_loader",
    "check_config",
    "check_output_dir",
    "claim_output_dir",
    "do_eval_only",
    "do_test",
    "do_train",
    "load_config",
    "EMAHook",
    "ModelEMA",
    "apply_ema_weights",
    "PeriodicCheckpointer",
    "LiteDetrTrainer",
]
