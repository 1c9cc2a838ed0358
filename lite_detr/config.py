"""
Configs as user input: :func:`load_config` (a LazyConfig file and its ``key=value`` overrides,
unknown keys refused), :func:`check_config` (what ``train_net.py`` checks before it writes
anything) and :class:`ConfigError`, the one exception type for bad user input that the tools
report as one line.
"""

import contextlib
import copy
import difflib
import inspect
import logging
import math
import os
import re
import sysconfig
import traceback
from typing import List

import torch
from detectron2.config import LazyConfig
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from .checkpoint import CheckpointError, VariantMismatchError

__all__ = [
    "ConfigError",
    "check_config",
    "check_device",
    "config_error_on_bad_checkpoint",
    "load_config",
]

logger = logging.getLogger("detectron2")


class ConfigError(RuntimeError):
    """Bad user input (config, override, dataset, checkpoint): the message says what to fix."""


def load_config(config_file: str, overrides: List[str] | None = None) -> DictConfig:
    """
    Load a LazyConfig file and apply ``key=value`` overrides, rejecting unknown keys; register
    the COCO-format files its ``datasets`` node names and fill ``model.num_classes: null`` from
    their json (``lite_detr.data.fill_num_classes``).

    detectron2's ``apply_overrides`` silently adds a key that does not exist, so a typo
    (``train.max_iters=10``) trains with the default. Here a key must exist, or name an argument
    that the LazyCall node's target accepts (``model.foo=1`` for ``L(Model)(...)`` with ``foo``).
    A ``model.*`` override must also have the type of the value it replaces (the config's, or the
    argument's default): the model's constructors would otherwise fail deep inside with an
    unrelated message (``model.embed_dim=abc``).
    """
    if not config_file:
        raise ConfigError("No config given: pass --config-file path/to/config.py.")
    if not os.path.isfile(config_file):
        raise ConfigError(
            f"Config file {config_file!r} does not exist (cwd: {os.getcwd()}). "
            "Pass an existing path, e.g. projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py."
        )
    try:
        cfg = _load_once(config_file)
    except Exception as e:  # the config is Python: anything can be raised while running it
        raise ConfigError(f"Cannot load config {_where(e, config_file)}") from e
    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"Override {override!r} is not of the form key=value.")
        _check_override_key(cfg, override.split("=", 1)[0].lstrip("+~"))
    model_keys = [o.split("=", 1)[0] for o in overrides or [] if o.startswith("model.")]
    replaced = {key: _current_value(cfg, key) for key in model_keys}
    try:
        cfg = LazyConfig.apply_overrides(cfg, overrides or [])
    except Exception as e:  # hydra's parser errors have no common base class
        raise ConfigError(f"Cannot apply overrides {overrides}: {e}") from e
    for key, old in replaced.items():
        _check_override_type(key, old, _current_value(cfg, key))
    from .data import DatasetError, fill_num_classes, register_config_datasets

    try:
        register_config_datasets(cfg)  # the ``datasets`` node: COCO-format files named by overrides
        fill_num_classes(cfg)  # model.num_classes: null -> from the json
    except DatasetError as e:
        raise ConfigError(str(e)) from e
    return cfg


_LOADED: dict = {}


def _load_once(config_file: str) -> DictConfig:
    """
    ``LazyConfig.load``, running a config file once per process (until it changes): a config of
    the user's that calls ``register_coco_instances`` registers its datasets once, even when
    ``train_net.py`` loads it again in the process that trains.
    """
    key = (os.path.realpath(config_file), os.stat(config_file).st_mtime_ns)
    if key not in _LOADED:
        _LOADED[key] = LazyConfig.load(config_file)
    return copy.deepcopy(_LOADED[key])


def _where(e: BaseException, config_file: str) -> str:
    """``file, line N: Error: message`` for an exception raised while loading a config."""
    cause = e.__cause__ if isinstance(e.__cause__, SyntaxError) else e
    if isinstance(cause, SyntaxError) and cause.lineno:
        # detectron2 re-raises ast.parse's error as "Config file X has syntax error!"
        m = re.match(r"Config file (.+) has syntax error!", str(e))
        where = m.group(1) if m else (cause.filename or config_file)
        text = f": {cause.text.strip()}" if cause.text else ""
        return f"{where}, line {cause.lineno}: SyntaxError: {cause.msg}{text}"
    frames = [
        f
        for f in traceback.extract_tb(e.__traceback__)
        if f.filename.endswith(".py") and not f.filename.startswith(_LIBRARY_PATHS)
    ]
    where = f"{frames[-1].filename}, line {frames[-1].lineno}" if frames else repr(config_file)
    return f"{where}: {type(e).__name__}: {e}"


_LIBRARY_PATHS = (
    sysconfig.get_paths()["stdlib"],
    sysconfig.get_paths()["purelib"],
    os.path.dirname(os.path.abspath(__file__)),  # lite_detr/
)


def _check_override_key(cfg: DictConfig, key: str) -> None:
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if OmegaConf.is_list(node) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if OmegaConf.is_dict(node) and part in node:
            node = node[part]
            continue
        parent = ".".join(parts[:i]) or "<root>"
        if i == len(parts) - 1 and OmegaConf.is_dict(node) and "_target_" in node:
            target = node["_target_"]
            try:
                sig = inspect.signature(target if callable(target) else locate(target))
            except (TypeError, ValueError, ImportError):
                return  # cannot introspect: let instantiate() report it
            params = sig.parameters.values()
            if part in sig.parameters or any(p.kind == p.VAR_KEYWORD for p in params):
                return
            options = list(sig.parameters)
        else:
            if OmegaConf.is_dict(node):
                options = list(node.keys())
            elif OmegaConf.is_list(node):
                options = [str(i) for i in range(len(node))]
            else:
                options = []
        close = difflib.get_close_matches(part, options, n=3)
        hint = f" Did you mean {', '.join(f'{parent}.{c}' for c in close)}?" if close else ""
        raise ConfigError(
            f"Unknown config key {key!r}: {parent!r} has no key {part!r}.{hint} "
            f"Valid keys there: {', '.join(map(str, options))}."
        )


def _current_value(cfg: DictConfig, key: str):
    """The value ``key`` has before an override: the config's, or the default of the LazyCall
    target's argument; ``_MISSING`` when neither is known."""
    try:
        value = OmegaConf.select(cfg, key, default=_MISSING)
    except Exception:  # an interpolation that does not resolve: nothing to compare with
        return _MISSING
    if value is not _MISSING:
        return value
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None)
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        return _MISSING
    target = node["_target_"]
    try:
        param = inspect.signature(target if callable(target) else locate(target)).parameters[name]
    except (TypeError, ValueError, ImportError, KeyError):
        return _MISSING
    return _MISSING if param.default is param.empty else param.default


def _check_override_type(key: str, old, new) -> None:
    """Refuse an override whose value is not of the type of the number or flag it replaces
    (None stays allowed: optional arguments take it)."""
    if new is None or new is _MISSING or old is _MISSING:
        return
    if isinstance(old, bool):
        ok, what = isinstance(new, bool), "True or False"
    elif isinstance(old, int):
        ok, what = isinstance(new, int) and not isinstance(new, bool), "an integer"
    elif isinstance(old, float):
        ok, what = isinstance(new, (int, float)) and not isinstance(new, bool), "a number"
    else:
        return
    if not ok:
        raise ConfigError(f"{key} must be {what} (the config has {old!r}), got {new!r}.")


def check_device(device) -> None:
    """Raise :class:`ConfigError` unless ``device`` (``train.device``) is "cpu", "cuda" or
    "cuda:N"."""
    name = str(device)
    try:
        ok = torch.device(name).type in ("cpu", "cuda")
    except (RuntimeError, ValueError):  # torch's parser: "Expected one of cpu, cuda, ..."
        ok = False
    if not ok:
        raise ConfigError(f"train.device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}.")


def check_config(cfg: DictConfig, eval_only: bool = False) -> None:
    """
    Fail fast, before ``default_setup`` writes into the output directory, on a config that
    cannot run: unknown device, CUDA requested without a GPU, unregistered dataset, missing
    checkpoint file, bad AMP dtype.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .data import DatasetError, dataset_names, prepare_datasets, unregistered_message

    for key in ("model", "train", "dataloader"):
        if key not in cfg:
            raise ConfigError(f"The config has no {key!r} node (see configs/common/train.py).")
    _check_values(cfg, eval_only)
    _check_datasets_root()
    _check_output_dir(cfg)
    device = str(cfg.train.get("device", "cuda"))
    check_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={device!r} but no CUDA GPU is available: add train.device=cpu."
        )
    amp = cfg.train.get("amp", {})
    if amp.get("enabled", False) and amp.get("dtype", "float16") not in ("float16", "bfloat16"):
        raise ConfigError(f"train.amp.dtype must be float16 or bfloat16, got {amp.dtype!r}.")
    loaders = ["test"] + ([] if eval_only else ["train"])
    registered = set(DatasetCatalog.list())
    for split in loaders:
        if split not in cfg.dataloader:
            raise ConfigError(f"The config has no dataloader.{split}.")
        for name in dataset_names(cfg.dataloader[split]):
            if name not in registered:
                raise ConfigError(unregistered_message(cfg, name, split))
            meta = MetadataCatalog.get(name)
            json_file = meta.get("json_file")
            lazy = meta.get("generate_on_first_use", False)
            if json_file and not lazy and not os.path.isfile(json_file):
                raise ConfigError(
                    f"Dataset {name!r} (dataloader.{split}.dataset.names) is registered but its "
                    f"annotations {json_file} do not exist: download the dataset (see detectron2's "
                    "datasets/README.md) or set $DETECTRON2_DATASETS to the folder that holds it."
                )
    try:  # annotations and images checked, model.num_classes reconciled with the json
        prepare_datasets(
            cfg, loaders, check_images=True, skip_bad_images=cfg.train.get("skip_bad_images", False)
        )
    except DatasetError as e:
        raise ConfigError(str(e)) from e
    ckpt = cfg.train.get("init_checkpoint", "")
    if ckpt and "://" not in ckpt and not os.path.isfile(ckpt):
        raise ConfigError(
            f"train.init_checkpoint={ckpt!r} does not exist: pass an existing .pth file "
            "(or train.init_checkpoint='' to start from scratch)."
        )
    if eval_only and not ckpt:
        logger.warning("--eval-only without train.init_checkpoint: evaluating random weights.")


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if not OmegaConf.is_dict(node) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _check_number(cfg, key: str, kind: type, low, high=None, *, low_open=False, optional=False):
    value = _get(cfg, key)
    if value is _MISSING or (optional and value is None):
        return
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = is_int if kind is int else (is_int or isinstance(value, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        what = "an integer" if kind is int else "a number"
        bound = f"> {low}" if low_open else f">= {low}"
        bound += f" and <= {high}" if high is not None else ""
        none = " (or None)" if optional else ""
        raise ConfigError(f"{key} must be {what} {bound}{none}, got {value!r}.")


def _check_values(cfg: DictConfig, eval_only: bool) -> None:
    """Types and ranges of the values that train_net.py reads (a bad override fails here)."""
    if not eval_only:
        epochs = _get(cfg, "train.epochs")
        if epochs is _MISSING or epochs is None:
            _check_number(cfg, "train.max_iter", int, 1)
        else:  # train_net.py derives max_iter from the dataset (engine.resolve_epochs)
            _check_number(cfg, "train.epochs", int, 1)
            max_iter = _get(cfg, "train.max_iter")
            if max_iter is not _MISSING and max_iter is not None:
                raise ConfigError(
                    f"train.epochs={epochs} and train.max_iter={max_iter} both set the run "
                    f"length: add train.max_iter=null to train {epochs} epochs, or "
                    f"train.epochs=null to train {max_iter} iterations."
                )
        _check_number(cfg, "train.log_period", int, 1)
        _check_number(cfg, "train.eval_period", int, 0)
        _check_number(cfg, "train.checkpointer.period", int, 1)
        _check_number(cfg, "train.checkpointer.max_to_keep", int, 1, optional=True)
        _check_number(cfg, "train.seed", int, -1, 2**32 - 1)
        _check_number(cfg, "dataloader.train.total_batch_size", int, 1)
        _check_number(cfg, "dataloader.train.num_workers", int, 0)
        for key in ("lr", "weight_decay", "momentum"):
            low_open = key == "lr"
            _check_number(cfg, f"optimizer.{key}", float, 0, low_open=low_open)
        if _get(cfg, "train.clip_grad.enabled") is True:
            _check_number(cfg, "train.clip_grad.params.max_norm", float, 0, low_open=True)
        if _get(cfg, "train.model_ema.enabled") is True:
            _check_number(cfg, "train.model_ema.decay", float, 0, 1, low_open=True)
        world = comm.get_world_size()
        batch = _get(cfg, "dataloader.train.total_batch_size")
        if isinstance(batch, int) and batch % world != 0:
            raise ConfigError(
                f"dataloader.train.total_batch_size={batch} is not divisible by the {world} "
                "processes: use a multiple of the number of GPUs/processes."
            )
    _check_number(cfg, "dataloader.test.num_workers", int, 0)
    _check_number(cfg, "model.num_classes", int, 1, optional=True)  # null: from the dataset


def _check_output_dir(cfg: DictConfig) -> None:
    """``train.output_dir`` (or a folder above it) must not be a file: it is created there."""
    out = str(cfg.train.get("output_dir", "") or ".")
    path = os.path.abspath(out)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        what = "is a file" if path == os.path.abspath(out) else f"is inside {path}, a file"
        raise ConfigError(
            f"train.output_dir={out!r} {what}, not a folder: choose another train.output_dir "
            "(the run's checkpoints and logs are written into that folder)."
        )


def _check_datasets_root() -> None:
    root = os.environ.get("DETECTRON2_DATASETS")
    if root is not None and not os.path.isdir(root):
        what = "a file" if os.path.exists(root) else "missing"
        raise ConfigError(
            f"$DETECTRON2_DATASETS={root!r} is {what}: point it at the folder that holds the "
            "datasets (create it for a generated dataset), or unset it to use ./datasets."
        )


@contextlib.contextmanager
def config_error_on_bad_checkpoint(path: str):
    """
    Turn what is wrong with the checkpoint file ``path`` into a :class:`ConfigError`: a file that
    is not a checkpoint, needs conversion or cannot be resumed (:class:`CheckpointError`, which
    names the file) and weights of another variant (:class:`VariantMismatchError`). Every other
    exception (out of memory, a bug) propagates as it is::

        with config_error_on_bad_checkpoint(path):
            checkpointer.load(path)
    """
    try:
        yield
    except VariantMismatchError as e:  # names the variants, not the file
        raise ConfigError(f"Cannot load checkpoint {path!r}: {e}") from e
    except CheckpointError as e:
        raise ConfigError(str(e)) from e
