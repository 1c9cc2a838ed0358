"""
Training and evaluation entry points shared by ``train_net.py``, ``tools/`` and the tests.

``do_train`` follows detectron2's ``tools/lazyconfig_train_net.py`` (same ``train`` keys, same
hooks) and adds AMP on any device, gradient clipping, EMA and checks that turn bad input into one
clear :class:`ConfigError` before anything is written to ``train.output_dir``.
"""

import copy
import difflib
import fcntl
import inspect
import json
import logging
import math
import os
import re
import shutil
import sysconfig
import traceback
from typing import List

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import CheckpointError, LiteDetrCheckpointer
from ..data.resumable_loader import ResumableTrainLoader
from ..utils import atomic_write, pid_alive, preserved_rng_states
from .ema import EMAHook, apply_ema_weights
from .hooks import PeriodicCheckpointer
from .train_loop import LiteDetrTrainer
from .writers import EarlyPeriodicWriter, build_writers

__all__ = [
    "ConfigError",
    "load_config",
    "check_config",
    "build_checkpointer",
    "build_train_loader",
    "check_output_dir",
    "claim_output_dir",
    "do_test",
    "do_train",
    "do_eval_only",
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
    try:
        cfg = LazyConfig.apply_overrides(cfg, overrides or [])
    except Exception as e:  # hydra's parser errors have no common base class
        raise ConfigError(f"Cannot apply overrides {overrides}: {e}") from e
    from ..data import DatasetError, fill_num_classes, register_config_datasets

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
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # lite_detr/
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
                sig = inspect.signature(target if callable(target) else _locate(target))
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


def _locate(name: str):
    from detectron2.utils.registry import locate

    return locate(name)


def check_config(cfg: DictConfig, eval_only: bool = False) -> None:
    """
    Fail fast, before ``default_setup`` writes into the output directory, on a config that
    cannot run: unknown device, CUDA requested without a GPU, unregistered dataset, missing
    checkpoint file, bad AMP dtype.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..data import DatasetError, dataset_names, prepare_datasets, unregistered_message

    for key in ("model", "train", "dataloader"):
        if key not in cfg:
            raise ConfigError(f"The config has no {key!r} node (see configs/common/train.py).")
    _check_values(cfg, eval_only)
    _check_datasets_root()
    device = str(cfg.train.get("device", "cuda"))
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"train.device must be 'cpu' or 'cuda', got {device!r}.")
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
        _check_number(cfg, "train.max_iter", int, 1)
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


def _check_datasets_root() -> None:
    root = os.environ.get("DETECTRON2_DATASETS")
    if root is not None and not os.path.isdir(root):
        what = "a file" if os.path.exists(root) else "missing"
        raise ConfigError(
            f"$DETECTRON2_DATASETS={root!r} is {what}: point it at the folder that holds the "
            "datasets (create it for a generated dataset), or unset it to use ./datasets."
        )


def build_checkpointer(model, save_dir: str = "", **checkpointables):
    """
    ``LiteDetrCheckpointer`` (refuses checkpoints of another encoder variant). The save directory
    is created, since fvcore's ``save()`` does not create it.
    """
    if save_dir and comm.is_main_process():
        os.makedirs(save_dir, exist_ok=True)
    return LiteDetrCheckpointer(model, save_dir, **checkpointables)


def _load_checkpoint(fn, path: str):
    try:
        return fn()
    except (FileNotFoundError, ConfigError):
        raise
    except CheckpointError as e:  # names the file it read
        raise ConfigError(str(e)) from e
    except Exception as e:  # e.g. the checkpointer refusing another encoder variant
        raise ConfigError(f"Cannot load checkpoint {path!r}: {e}") from e


_RUN_LOCK = ".train_net.lock"


def _lock_holder(output_dir: str):
    """The pid of the process that holds ``output_dir``'s run lock, or None."""
    path = os.path.join(output_dir, _RUN_LOCK)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pid = f.read().strip()
            # a run killed with kill -9 can leave its data-loader workers holding the lock for a
            # few seconds: the run itself is over
            return pid if not pid.isdigit() or pid_alive(int(pid)) else None
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def _previous_run_files(output_dir: str) -> List[str]:
    if not os.path.isdir(output_dir):
        return []
    names = sorted(
        n
        for n in os.listdir(output_dir)
        if n == "last_checkpoint" or re.match(r"^model_(\d+|final)\.pth$", n)
    )
    if os.path.isfile(os.path.join(output_dir, "inference", "eval_results.json")):
        names.append(os.path.join("inference", "eval_results.json"))
    return names


def check_output_dir(output_dir: str, *, resume: bool, overwrite: bool = False) -> None:
    """
    Refuse (``ConfigError``) an output directory in use by a running ``train_net.py``, and, for a
    fresh run (neither ``resume`` nor ``overwrite``), one that holds an earlier run's
    checkpoints or results. Reads only.
    """
    holder = _lock_holder(output_dir)
    if holder is not None:
        raise ConfigError(
            f"train.output_dir={output_dir!r} is in use by a running train_net.py (pid {holder}): "
            "wait for it to finish, stop it, or choose another train.output_dir."
        )
    found = _previous_run_files(output_dir)
    if found and not resume and not overwrite:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise ConfigError(
            f"train.output_dir={output_dir!r} already holds a run ({shown}): pass --resume to "
            "continue it, --overwrite to replace it, or choose another train.output_dir."
        )


def claim_output_dir(output_dir: str, *, overwrite: bool = False):
    """
    Take ``output_dir``'s run lock (held until the returned file is closed or the process
    ends) and, with ``overwrite``, delete the previous run's checkpoints, metrics and results.
    Call on the main process only, after :func:`check_output_dir`.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, _RUN_LOCK)
    lock = open(path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        if _lock_holder(output_dir) is not None:
            raise ConfigError(
                f"train.output_dir={output_dir!r} is in use by another train_net.py: "
                "choose another train.output_dir."
            ) from None
        os.remove(path)  # held by orphans of a killed run: lock a new file
        lock = open(path, "a+")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    if overwrite:
        old = _previous_run_files(output_dir) + [
            n
            for n in os.listdir(output_dir)
            if n == "metrics.json" or n.startswith("events.out.tfevents")
        ]
        for name in old:
            path = os.path.join(output_dir, name)
            if os.path.isfile(path):
                os.remove(path)
        shutil.rmtree(os.path.join(output_dir, "inference"), ignore_errors=True)
        if old:
            logger.warning(f"--overwrite: removed the previous run's {', '.join(old)}.")
    return lock


def _trim_metrics(output_dir: str, iteration: int) -> None:
    """On resume, drop the ``metrics.json`` lines of training steps after the resumed checkpoint
    (the interrupted run logged them; they are trained again) and a line cut off by a kill. The
    evaluation line of a finished run (logged at ``max_iter``, without losses) stays."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("iteration", -1) <= iteration or "total_loss" not in record:
            keep.append(line if line.endswith("\n") else line + "\n")
    if len(keep) != len(lines):
        with atomic_write(path) as f:
            f.writelines(keep)


def do_test(cfg: DictConfig, model: torch.nn.Module):
    """Run ``cfg.dataloader.evaluator`` on ``cfg.dataloader.test``; print and save the results."""
    if "evaluator" not in cfg.dataloader:
        return {}
    evaluator_cfg = cfg.dataloader.evaluator
    if OmegaConf.is_dict(evaluator_cfg) and evaluator_cfg.get("output_dir", None) is None:
        evaluator_cfg = OmegaConf.merge(  # keep evaluator dumps next to the run's other outputs
            evaluator_cfg, {"output_dir": os.path.join(cfg.train.output_dir, "inference")}
        )
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(evaluator_cfg))
    if comm.is_main_process() and ret:
        print_csv_format(ret)
        out = os.path.join(cfg.train.output_dir, "inference")
        os.makedirs(out, exist_ok=True)
        with atomic_write(os.path.join(out, "eval_results.json")) as f:
            json.dump(ret, f, indent=2)
    return ret


def do_eval_only(cfg: DictConfig):
    """Load ``train.init_checkpoint`` (its EMA weights if ``train.model_ema.enabled``) and test."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    model = create_ddp_model(model, **ddp_kwargs(cfg))
    checkpointer = build_checkpointer(model)
    path = cfg.train.init_checkpoint
    extra = _load_checkpoint(lambda: checkpointer.load(path), path) or {}
    if cfg.train.get("model_ema", {}).get("enabled", False):
        ema = extra.get("trainer", {}).get("hooks", {}).get("EMAHook")
        if ema is None:
            logger.warning(f"{path} has no EMA state: evaluating its raw weights.")
        else:
            logger.info("Evaluating the EMA weights.")
            with apply_ema_weights(model, ema["state"]):
                return do_test(cfg, model)
    return do_test(cfg, model)


def ddp_kwargs(cfg: DictConfig) -> dict:
    """``create_ddp_model`` arguments: ``train.ddp``, and no ``device_ids`` on the CPU (detectron2
    passes the local GPU index, which DistributedDataParallel refuses for a CPU model)."""
    kwargs = dict(cfg.train.ddp)
    if torch.device(cfg.train.device).type == "cpu":
        kwargs.setdefault("device_ids", None)
    return kwargs


def do_train(args, cfg: DictConfig):
    """
    Train as detectron2's ``lazyconfig_train_net.do_train`` does, with :class:`LiteDetrTrainer`
    (AMP on CPU/GPU, clipping, NaN stop) and an optional :class:`EMAHook`.

    Returns:
        the trainer, after training (its ``storage`` holds the last metrics).
    """
    model = instantiate(cfg.model)
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = build_train_loader(cfg)

    model = create_ddp_model(model, **ddp_kwargs(cfg))
    clip = cfg.train.get("clip_grad", {})
    amp = cfg.train.get("amp", {})
    trainer = LiteDetrTrainer(
        model,
        train_loader,
        optim,
        amp_enabled=amp.get("enabled", False),
        amp_dtype=amp.get("dtype", "float16"),
        clip_grad_params=dict(clip.params) if clip.get("enabled", False) else None,
        device_type=torch.device(cfg.train.device).type,
    )
    ema_cfg = cfg.train.get("model_ema", {})
    ema_hook = EMAHook(model, ema_cfg.get("decay", 0.9998)) if ema_cfg.get("enabled") else None
    checkpointer = build_checkpointer(model, cfg.train.output_dir, optimizer=optim, trainer=trainer)

    def _eval():
        # evaluation must not move the training RNGs, or a run resumed after it would differ
        with preserved_rng_states():
            if ema_hook is not None:
                with ema_hook.apply():
                    return do_test(cfg, model)
            return do_test(cfg, model)

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            ema_hook,  # before the checkpointer and eval, so both see this step's average
            PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer),  # on every rank
            hooks.EvalHook(cfg.train.eval_period, _eval),
        ]
    )

    init = cfg.train.init_checkpoint
    _load_checkpoint(lambda: checkpointer.resume_or_load(init, resume=args.resume), init)
    if ema_hook is not None and ema_hook.ema.num_updates == 0:
        ema_hook.ema = type(ema_hook.ema)(model, ema_hook.ema.decay)  # start from loaded weights
    if checkpointer.resumed_from:
        # the checkpoint stores the iteration that just finished: start at the next one
        start_iter = trainer.iter + 1
        if comm.is_main_process():
            _trim_metrics(cfg.train.output_dir, trainer.iter)
    else:
        start_iter = 0
    if comm.is_main_process():  # last, and after the trim: the JSON writer opens metrics.json
        writers = build_writers(cfg.train.output_dir, cfg.train.max_iter)
        trainer.register_hooks([EarlyPeriodicWriter(writers, period=cfg.train.log_period)])
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def build_train_loader(cfg: DictConfig):
    """
    ``cfg.dataloader.train``, as a :class:`ResumableTrainLoader` (whose position the
    checkpoints hold) when it is detectron2's ``build_detection_train_loader`` with the default
    sampler; other loaders are instantiated as they are, and resume restarts their order.
    """
    from detectron2.data import build_detection_train_loader

    node = cfg.dataloader.train
    target = node.get("_target_")
    if isinstance(target, str):
        target = _locate(target)
    if target is not build_detection_train_loader or node.get("sampler") is not None:
        logger.warning(
            "dataloader.train is not build_detection_train_loader with its default sampler: "
            "--resume restarts its data order instead of continuing it."
        )
        return instantiate(node)
    seed = cfg.train.get("seed", -1)
    return ResumableTrainLoader(
        instantiate(node.dataset),
        instantiate(node.mapper),
        node.total_batch_size,
        seed=seed if seed >= 0 else None,
        aspect_ratio_grouping=node.get("aspect_ratio_grouping", True),
        num_workers=node.get("num_workers", 0),
        collate_fn=instantiate(node.get("collate_fn", None)),
    )
