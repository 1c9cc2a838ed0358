"""
Training and evaluation entry points shared by ``train_net.py``, ``tools/`` and the tests.

``do_train`` follows detectron2's ``tools/lazyconfig_train_net.py`` (same ``train`` keys, same
hooks) and adds AMP on any device, gradient clipping and EMA; :func:`train_or_evaluate` is one
process of ``train_net.py``, which checks the config (:mod:`lite_detr.config`) and the output
directory before anything is written to ``train.output_dir``.
"""

import fcntl
import json
import logging
import os
import re
import shutil
from typing import List

import torch
from detectron2.config import instantiate
from detectron2.engine import default_argument_parser as _detectron2_argument_parser
from detectron2.engine import default_setup, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import LiteDetrCheckpointer
from ..config import ConfigError, check_config, config_error_on_bad_checkpoint, load_config
from ..data import DatasetError
from ..data.resumable_loader import ResumableTrainLoader
from ..evaluation import results_table
from ..solver import iterations_per_epoch
from ..utils import atomic_write, pid_alive, preserved_rng_states
from ..utils.malloc import reuse_freed_memory
from .ema import EMAHook, apply_ema_weights
from .hooks import PeriodicCheckpointer
from .train_loop import LiteDetrTrainer
from .writers import MetricsWriter, plain_log_files

__all__ = [
    "ConfigError",  # re-exported from lite_detr.config, their home
    "load_config",
    "check_config",
    "build_checkpointer",
    "build_train_loader",
    "check_output_dir",
    "claim_output_dir",
    "default_argument_parser",
    "do_test",
    "do_train",
    "do_eval_only",
    "resolve_epochs",
    "train_or_evaluate",
]

logger = logging.getLogger("detectron2")


def build_checkpointer(model, save_dir: str = "", **checkpointables):
    """
    ``LiteDetrCheckpointer`` (refuses checkpoints of another encoder variant). The save directory
    is created, since fvcore's ``save()`` does not create it.
    """
    if save_dir and comm.is_main_process():
        os.makedirs(save_dir, exist_ok=True)
    return LiteDetrCheckpointer(model, save_dir, **checkpointables)


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
    with config_error_on_bad_checkpoint(path):
        extra = checkpointer.load(path) or {}
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
    resolve_epochs(cfg, train_loader)

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

    writer = None
    if comm.is_main_process():
        writer = MetricsWriter(
            cfg.train.output_dir,
            cfg.train.max_iter,
            period=cfg.train.log_period,
            checkpoint_period=cfg.train.checkpointer.period,
        )
    # a step's evaluation is logged with its metrics, and they are on disk before its
    # checkpoint is saved: a run resumed from that checkpoint logs from the next step on
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            ema_hook,  # before eval and the checkpointer, so both see this step's average
            hooks.EvalHook(cfg.train.eval_period, _eval),
            writer,  # main process only
            PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer),  # on every rank
        ]
    )

    init = cfg.train.init_checkpoint
    with config_error_on_bad_checkpoint(init):
        checkpointer.resume_or_load(init, resume=args.resume)
    if ema_hook is not None and ema_hook.ema.num_updates == 0:
        ema_hook.ema = type(ema_hook.ema)(model, ema_hook.ema.decay)  # start from loaded weights
    # the checkpoint stores the iteration that just finished: start at the next one
    start_iter = trainer.iter + 1 if checkpointer.resumed_from else 0
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    except DatasetError as e:  # an image that became unreadable during training
        raise ConfigError(str(e)) from e
    return trainer


def build_train_loader(cfg: DictConfig):
    """
    ``cfg.dataloader.train``, as a :class:`ResumableTrainLoader` (whose position the
    checkpoints hold) when it is detectron2's ``build_detection_train_loader`` with the default
    sampler; other loaders are instantiated as they are, and resume restarts their order.
    ``train.skip_bad_images`` also applies to images that become unreadable during training.
    """
    from detectron2.data import build_detection_train_loader

    node = cfg.dataloader.train
    target = node.get("_target_")
    if isinstance(target, str):
        target = locate(target)
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
        skip_bad_images=cfg.train.get("skip_bad_images", False),
    )


def resolve_epochs(cfg: DictConfig, train_loader=None) -> None:
    """
    With ``train.epochs`` set, set ``train.max_iter`` to ``train.epochs`` passes over the
    training set: ``epochs * iterations_per_epoch(images, dataloader.train.total_batch_size)``
    (:func:`lite_detr.solver.iterations_per_epoch`), the images counted in ``train_loader`` (a
    :class:`ResumableTrainLoader`) or else in ``dataloader.train.dataset``. Without it, nothing
    changes (``train.max_iter`` is the run length).
    """
    epochs = cfg.train.get("epochs", None)
    if epochs is None:
        return
    node = cfg.dataloader.train
    if isinstance(train_loader, ResumableTrainLoader):
        num_images = train_loader.num_images
    elif node.get("dataset", None) is not None:
        num_images = len(instantiate(node.dataset))
    else:
        raise ConfigError(
            f"train.epochs={epochs} needs dataloader.train.dataset to count the training images; "
            "this loader has none: set train.epochs=null and train.max_iter instead."
        )
    batch = node.get("total_batch_size", None)
    if batch is None:
        raise ConfigError(
            f"train.epochs={epochs} needs dataloader.train.total_batch_size; set it, or set "
            "train.epochs=null and train.max_iter instead."
        )
    per_epoch = iterations_per_epoch(num_images, batch)
    cfg.train.max_iter = epochs * per_epoch
    logger.info(
        f"train.epochs={epochs}: {num_images} training images at batch {batch} are "
        f"{per_epoch} iterations per epoch, train.max_iter={cfg.train.max_iter}."
    )


def default_argument_parser():
    """``train_net.py``'s arguments: detectron2's ``default_argument_parser``, ``--overwrite``."""
    parser = _detectron2_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a train.output_dir that holds one (its checkpoints, metrics and "
        "results are deleted); without it such a directory needs --resume",
    )
    return parser


def train_or_evaluate(args):
    """
    One process of ``train_net.py``: load and check the config, claim ``train.output_dir``
    (main process), set up logging, then train, or with ``--eval-only`` evaluate and print the
    results table.

    Args:
        args: parsed :func:`default_argument_parser` arguments.

    Returns:
        the evaluation results (``--eval-only``) or the trainer.
    """
    cfg = load_config(args.config_file, args.opts)
    check_config(cfg, eval_only=args.eval_only)  # before default_setup writes to output_dir
    lock = None
    if not args.eval_only and comm.is_main_process():
        overwrite = getattr(args, "overwrite", False)
        check_output_dir(cfg.train.output_dir, resume=args.resume, overwrite=overwrite)
        lock = claim_output_dir(cfg.train.output_dir, overwrite=overwrite)
    try:
        plain_log_files(cfg.train.output_dir)  # no colour codes in output_dir/log.txt
        default_setup(cfg, args)
        if torch.device(cfg.train.device).type == "cpu":
            if comm.get_local_size() > 1:  # CPU ranks of one machine share its cores
                torch.set_num_threads(max(1, torch.get_num_threads() // comm.get_local_size()))
            # a CPU run allocates and frees tensors of tens of MiB in every layer (the backward's
            # gradient of value: 45 MiB at 800x1333); keep freed blocks for the next one instead
            # of having the system page fresh ones in each time
            if reuse_freed_memory():
                logger.info("CPU run: freed memory is kept for reuse (lite_detr/utils/malloc.py)")
        if args.eval_only:
            ret = do_eval_only(cfg)
            if comm.is_main_process() and ret:
                names = cfg.dataloader.test.dataset.names
                print(f"Evaluation of {cfg.train.init_checkpoint or 'random weights'} on {names}:")
                print(results_table(ret))
            return ret
        return do_train(args, cfg)
    finally:
        if lock is not None:
            lock.close()
