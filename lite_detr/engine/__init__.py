"""Training loop, hooks, the train/eval entry points of ``train_net.py`` and the predictor."""

from ..config import ConfigError, check_config, load_config
from .defaults import (
    build_checkpointer,
    build_train_loader,
    check_output_dir,
    claim_output_dir,
    default_argument_parser,
    do_eval_only,
    do_test,
    do_train,
    resolve_epochs,
    train_or_evaluate,
)
from .ema import EMAHook, ModelEMA, apply_ema_weights
from .hooks import PeriodicCheckpointer
from .predictor import Predictor, read_rgb
from .train_loop import LiteDetrTrainer

__all__ = [
    "ConfigError",
    "build_checkpointer",
    "build_train_loader",
    "check_config",
    "check_output_dir",
    "claim_output_dir",
    "default_argument_parser",
    "do_eval_only",
    "do_test",
    "do_train",
    "load_config",
    "resolve_epochs",
    "train_or_evaluate",
    "EMAHook",
    "ModelEMA",
    "apply_ema_weights",
    "PeriodicCheckpointer",
    "Predictor",
    "read_rgb",
    "LiteDetrTrainer",
]
