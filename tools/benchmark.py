#!/usr/bin/env python
"""
Speed of a LazyConfig model: inference latency, training iteration time, data-loader throughput.

    python tools/benchmark.py --config-file CONFIG --tasks inference --input-size 800 1333
    python tools/benchmark.py --config-file CONFIG --device cuda --tasks inference train data

Latency is measured after ``--warmup`` runs over ``--iters`` runs: median and spread (p10-p90,
min-max), FPS = 1 / median, and the peak memory (CUDA: max allocated; CPU: peak resident set size
of the process). Training uses batches of ``dataloader.train.total_batch_size`` images.

Times on a busy machine can be several times the idle ones, so the tool warns when the load
average before a task exceeds half the cores, or when its runs spread by more than 20% of their
median; the warnings are also returned with the task's statistics.
"""

import argparse
import itertools
import logging
import resource
import time
import warnings
from typing import Dict, Sequence

# fvcore (imported by detectron2) calls torch.jit.script on import, which this torch deprecates:
# a warning on every run that no user can act on
warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lite_detr.config import ConfigError, check_config, load_config  # noqa: E402
from lite_detr.data import positive_int, sample_inputs  # noqa: E402
from lite_detr.engine.cli import (  # noqa: E402
    add_tasks_argument,
    machine_is_busy,
    read_load,
    run_tool,
)
from lite_detr.utils.malloc import reuse_freed_memory  # noqa: E402

logger = logging.getLogger("lite_detr.benchmark")


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# a task's numbers are flagged when the machine was busy before it (LOAD_PER_CORE, shared with
# tools/run_demo.py), or its runs this uneven
MAX_SPREAD = 0.2  # (max - min) / median of the timed runs


def load_warnings(load: float, cores: int, stats: Dict[str, float]) -> list[str]:
    """Why the timings in ``stats`` may not be the machine's own: a busy machine, uneven runs."""
    found = []
    if machine_is_busy(load, cores):
        found.append(
            f"the machine was busy: load average {load:.2f} on {cores} cores before the runs; "
            "times may be several times the idle ones, rerun on an idle machine"
        )
    if stats["spread"] > MAX_SPREAD:
        found.append(
            f"the runs spread by {100 * stats['spread']:.0f}% of their median "
            f"(min {stats['min_s'] * 1e3:.1f} ms, max {stats['max_s'] * 1e3:.1f} ms): "
            "something else ran meanwhile; rerun, or raise --iters"
        )
    return found


def _timeit(fn, warmup: int, iters: int, device: str, desc: str, clock=time.perf_counter) -> Dict:
    load, cores = read_load()
    for _ in range(warmup):
        fn()
    times = []
    for _ in tqdm(range(iters), desc=desc, leave=False):
        _sync(device)
        t = clock()
        fn()
        _sync(device)
        times.append(clock() - t)
    t = np.array(times)
    median = float(np.median(t))
    stats = {
        "median_s": median,
        "p10_s": float(np.percentile(t, 10)),
        "p90_s": float(np.percentile(t, 90)),
        "min_s": float(t.min()),
        "max_s": float(t.max()),
        "spread": float((t.max() - t.min()) / median) if median > 0 else 0.0,
        "runs": len(t),
        "load_average": load,
        "cores": cores,
    }
    stats["warnings"] = load_warnings(load, cores, stats)
    for w in stats["warnings"]:
        logger.warning(f"{desc}: {w}")
    return stats


def _fake_instances(h: int, w: int, num: int = 5) -> Instances:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(num, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = (torch.rand(num, 2, generator=g) * 0.25 + 0.05) * torch.tensor([w, h])
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
    inst.gt_classes = torch.zeros(num, dtype=torch.long)
    return inst


def benchmark(
    cfg,
    tasks: Sequence[str] = ("inference",),
    input_size: Sequence[int] | None = None,
    device: str = "cpu",
    warmup: int = 3,
    iters: int = 10,
) -> Dict[str, Dict[str, float]]:
    """Run the benchmark tasks; return their statistics (seconds, FPS, MB)."""
    ret = {}
    if "inference" in tasks or "train" in tasks:
        model = instantiate(cfg.model).to(device)
        inputs = sample_inputs(cfg, 1, input_size)
    if "inference" in tasks:
        model.eval()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            stats = _timeit(lambda: model(inputs), warmup, iters, device, "inference")
        stats["fps"] = 1.0 / stats["median_s"]
        stats["peak_memory_mb"] = _peak_memory_mb(device)
        ret["inference"] = stats
        h, w = inputs[0]["image"].shape[-2:]
        logger.info(
            f"inference {h}x{w} on {device}: median {stats['median_s'] * 1e3:.1f} ms "
            f"(p10 {stats['p10_s'] * 1e3:.1f}, p90 {stats['p90_s'] * 1e3:.1f}, "
            f"min {stats['min_s'] * 1e3:.1f}, max {stats['max_s'] * 1e3:.1f}, "
            f"spread {100 * stats['spread']:.0f}%), "
            f"{stats['fps']:.2f} FPS, peak memory {stats['peak_memory_mb']:.0f} MB"
        )
    if "train" in tasks:
        model.train()
        batch_size = int(cfg.dataloader.train.get("total_batch_size", 2))
        batch = []
        for i in range(batch_size):
            x = dict(inputs[i % len(inputs)])
            h, w = x["image"].shape[-2:]
            x["instances"] = _fake_instances(h, w)
            batch.append(x)
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)

        def step():
            losses = sum(model(batch).values())
            optimizer.zero_grad()
            losses.backward()
            optimizer.step()

        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        stats = _timeit(step, warmup, iters, device, "train")
        stats["peak_memory_mb"] = _peak_memory_mb(device)
        stats["batch_size"] = batch_size
        ret["train"] = stats
        logger.info(
            f"training iteration (batch {batch_size}) on {device}: median "
            f"{stats['median_s'] * 1e3:.1f} ms (p10 {stats['p10_s'] * 1e3:.1f}, "
            f"p90 {stats['p90_s'] * 1e3:.1f}, min {stats['min_s'] * 1e3:.1f}, "
            f"max {stats['max_s'] * 1e3:.1f}, spread {100 * stats['spread']:.0f}%), "
            f"peak memory {stats['peak_memory_mb']:.0f} MB"
        )
    if "data" in tasks:
        loader = iter(instantiate(cfg.dataloader.train))
        for _ in range(warmup):
            next(loader)
        t = time.perf_counter()
        images = sum(
            len(b) for b in tqdm(itertools.islice(loader, iters), desc="data", total=iters)
        )
        dt = time.perf_counter() - t
        ret["data"] = {"images_per_s": images / dt, "batches": iters}
        logger.info(f"data loader: {images / dt:.1f} images/s over {iters} batches")
    return ret


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    add_tasks_argument(parser, ["inference", "train", "data"], default=["inference"])
    parser.add_argument(
        "--input-size", nargs=2, type=positive_int, metavar=("H", "W"), default=None
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    args.opts = args.task_overrides + args.opts  # overrides right after --tasks a b
    # ValueError: e.g. an input too small for the model
    return run_tool("benchmark.py", lambda: _main(args), errors=(ValueError,))


def _main(args):
    reuse_freed_memory()  # large CPU tensors: reuse freed blocks (lite_detr/utils/malloc.py)
    cfg = load_config(args.config_file, args.opts + [f"train.device={args.device}"])
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is available: use --device cpu.")
    if "data" in args.tasks:  # the others fall back to random images without the dataset
        check_config(cfg)
    return benchmark(cfg, args.tasks, args.input_size, args.device, args.warmup, args.iters)


if __name__ == "__main__":
    main()
