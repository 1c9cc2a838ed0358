"""
Multi-process and multi-machine runs through detectron2's ``launch`` (PyTorch DDP), checked first.

detectron2's current ``launch`` runs one process per GPU with NCCL, or, without CUDA, processes on
the CPU with gloo. The v0.6 release asserts CUDA; ``tools/install_detectron2.sh`` gives the
PyPI sdist the current behaviour. :func:`launch_checked` adds what a user needs around it: one
clear message when the requested processes cannot run (no CUDA for ``train.device=cuda``, fewer
GPUs than ``--num-gpus``, no gloo, a detectron2 whose ``launch`` needs CUDA), CPU processes with
gloo even on a machine with GPUs when ``train.device=cpu``, and a failure in one rank reported
as that rank's one-line message (the other local ranks are stopped).
"""

import importlib
import inspect
import os
import re
from datetime import timedelta

import torch
import torch.distributed as dist
from detectron2.engine import launch
from detectron2.utils import comm

from ..config import check_device

__all__ = ["DistributedLaunchError", "check_launch", "launch_checked"]


class DistributedLaunchError(RuntimeError):
    """The requested processes cannot run, or one of them failed: the message says which."""


def _launch_supports_cpu() -> bool:
    """Whether the installed detectron2's ``launch`` starts processes without CUDA (gloo)."""
    launch_module = importlib.import_module("detectron2.engine.launch")  # the module, not launch()
    source = inspect.getsource(launch_module._distributed_worker)
    return "gloo" in source.lower()


def check_launch(device: str, num_gpus: int, num_machines: int = 1) -> None:
    """
    Raise :class:`DistributedLaunchError` when ``num_gpus`` processes per machine on ``device``
    ("cpu" or "cuda") cannot be started; :class:`~lite_detr.config.ConfigError` for a device
    that is neither.
    """
    check_device(device)
    if num_gpus < 1 or num_machines < 1:
        raise DistributedLaunchError(
            f"--num-gpus ({num_gpus}) and --num-machines ({num_machines}) must be >= 1."
        )
    device_type = torch.device(device).type
    if device_type == "cuda":
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found == 0:
            raise DistributedLaunchError(
                "train.device is 'cuda' but PyTorch finds no CUDA GPU. Train on the CPU with "
                "train.device=cpu (--num-gpus N then starts N CPU processes with gloo)."
            )
        if num_gpus > found:
            raise DistributedLaunchError(
                f"--num-gpus {num_gpus} asks for more processes than the {found} GPU(s) of this "
                f"machine: pass --num-gpus {found} or fewer."
            )
    if num_gpus * num_machines == 1:
        return
    if not dist.is_available():
        raise DistributedLaunchError(
            "This PyTorch build has no torch.distributed: run one process (--num-gpus 1)."
        )
    if device_type == "cpu":
        if not dist.is_gloo_available():
            raise DistributedLaunchError(
                f"--num-gpus {num_gpus} with train.device=cpu needs PyTorch's gloo backend, which "
                "this PyTorch build lacks: run one process (--num-gpus 1) or use a GPU build."
            )
        if not _launch_supports_cpu():
            raise DistributedLaunchError(
                "The installed detectron2's launch() needs CUDA (detectron2 0.6 asserts it), so "
                "it cannot start CPU processes. Re-install it with tools/install_detectron2.sh "
                "(`make install`), which adds the gloo launch of detectron2's main branch, or "
                "install detectron2 from GitHub."
            )


def _run_rank(main_func, args):
    """One rank: ``main_func(args)``, then wait for every rank and close the process group, so
    that no rank exits while the process group's threads still run (gloo then aborts the
    process: "terminate called without an active exception")."""
    ret = main_func(args)
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
    return ret


def launch_checked(
    main_func,
    args,
    device: str,
    timeout: timedelta = timedelta(minutes=30),
):
    """
    ``detectron2.engine.launch(main_func, ...)`` with the arguments of detectron2's
    ``default_argument_parser`` (``num_gpus``, ``num_machines``, ``machine_rank``, ``dist_url``),
    after :func:`check_launch`.

    With ``device="cpu"`` the processes see no GPU (``CUDA_VISIBLE_DEVICES=""``), so that
    detectron2 picks gloo even on a machine with GPUs. An exception in a local rank stops the
    other local ranks (torch.multiprocessing) and is raised here as
    :class:`DistributedLaunchError` with that rank's message; ranks on other machines stop when
    their next collective times out (``timeout``).
    """
    check_launch(device, args.num_gpus, args.num_machines)
    world_size = args.num_gpus * args.num_machines
    if world_size > 1 and torch.device(device).type == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # inherited by the spawned ranks
    try:
        return launch(
            _run_rank,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(main_func, args),
            timeout=timeout,
        )
    except torch.multiprocessing.ProcessRaisedException as e:
        # its message is the rank's traceback: keep the exception line, name the rank
        rank = args.machine_rank * args.num_gpus + e.error_index
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        last = re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", lines[-1].strip())  # drop module paths
        raise DistributedLaunchError(f"rank {rank} failed: {last}") from None
    except torch.multiprocessing.ProcessExitedException as e:
        rank = args.machine_rank * args.num_gpus + e.error_index
        raise DistributedLaunchError(
            f"rank {rank} exited with code {e.exit_code}"
            + (f" (signal {e.signal_name})" if getattr(e, "signal_name", None) else "")
        ) from None
