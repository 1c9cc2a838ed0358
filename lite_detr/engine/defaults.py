"""
Training and evaluation entry points shared by ``train_net.py``, ``tools/`` and the tests.

``do_train`` follows detectron2's ``tools/lazyconfig_train_net.py`` (same ``train`` keys, same
hooks) and adds AMP on any device, gradient clipping, EMA and checks that turn bad input into one
clear :class:`ConfigError` before anything is written to ``train.output_dir``.
"""

import copy
import difflib
import inspect
import json
import logging
import os
from typing import List

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import LiteDetrCheckpointer
from .ema import EMAHook, apply_ema_weights
from .train_loop import LiteDetrTrainer
from .writers import EarlyPeriodicWriter, build_writers

__all__ = [
    "ConfigError",
    "load_config",
    "check_config",
    "build_checkpointer",
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
    except (SyntaxError, ValueError, ImportError, NameError) as e:
        raise ConfigError(f"Cannot load config {config_file!r}: {type(e).__name__}: {e}") from e
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
    except Exception as e:  # e.g. the checkpointer refusing another encoder variant
        raise ConfigError(f"Cannot load checkpoint {path!r}: {e}") from e


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
        with open(os.path.join(out, "eval_results.json"), "w") as f:
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
    train_loader = instantiate(cfg.dataloader.train)

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
        if ema_hook is not None:
            with ema_hook.apply():
                return do_test(cfg, model)
        return do_test(cfg, model)

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            ema_hook,  # before the checkpointer and eval, so both see this step's average
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if comm.is_main_process()
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, _eval),
            (
                EarlyPeriodicWriter(
                    build_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if comm.is_main_process()
                else None
            ),
        ]
    )

    init = cfg.train.init_checkpoint
    _load_checkpoint(lambda: checkpointer.resume_or_load(init, resume=args.resume), init)
    if ema_hook is not None and ema_hook.ema.num_updates == 0:
        ema_hook.ema = type(ema_hook.ema)(model, ema_hook.ema.decay)  # start from loaded weights
    if args.resume and checkpointer.has_checkpoint():
        # the checkpoint stores the iteration that just finished: start at the next one
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer
