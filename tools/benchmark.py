#!/usr/bin/env python
"""
Speed of a LazyConfig model: inference latency, training iteration time, data-loader throughput.

    python tools/benchmark.py --config-file CONFIG --tasks inference --input-size 800 1333
    python tools/benchmark.py --config-file CONFIG --device cuda --tasks inference train data
    python tools/benchmark.py --config-file CONFIG --input-size 640 640 --runtime onnxruntime
    python tools/benchmark.py --config-file CONFIG --input-size 640 640 --precision bf16

Inference runs one of three paths, so that a user can pick the fastest: ``--runtime eager``
(PyTorch, ``--precision bf16``: bfloat16 autocast on a CPU with bfloat16 instructions, see
:mod:`lite_detr.precision`), ``compile`` (``torch.compile``, inductor; its first run, the
compilation, is among the warm-up runs) or ``onnxruntime`` (the model exported to ONNX in a
temporary folder, or ``--onnx FILE`` from tools/export_model.py, whose optimised graph is then
written next to it as ``FILE.optimized.onnx`` and timed; graph optimisation level "all"). Each
path times the same thing: the tensor-only inference path (:class:`lite_detr.export.
InferenceDetector`: image in, boxes/scores/labels out) on the image padded to the model's size
divisibility. ONNX Runtime uses as many threads as PyTorch (``torch.get_num_threads()``, set
with ``--threads``). On the CPU the eager and compiled paths time the model deployed with
:func:`lite_detr.deploy.optimize_for_cpu_inference`; training times the plain model.

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
import os
import resource
import tempfile
import time
from typing import Dict, Sequence

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances
from tqdm import tqdm

from lite_detr.config import ConfigError, check_config, load_config
from lite_detr.data import positive_int, sample_inputs
from lite_detr.deploy import optimize_for_cpu_inference
from lite_detr.engine.cli import (
    add_tasks_argument,
    machine_is_busy,
    read_load,
    run_tool,
)
from lite_detr.export import (
    ExportError,
    InferenceDetector,
    check_input_size,
    export_onnx,
    onnx_session,
    optimized_onnx_path,
    write_optimized_onnx,
)
from lite_detr.precision import PRECISIONS, bf16_inference, resolve_precision
from lite_detr.utils.malloc import reuse_freed_memory

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


RUNTIMES = ("eager", "compile", "onnxruntime")


def padded_image(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) image -> float32, zero-padded at the bottom and right to multiples of the
    model's size divisibility (the input of the tensor-only inference path)."""
    d = max(int(getattr(model, "size_divisibility", 0) or 0), 1)
    h, w = image.shape[-2:]
    image = image.float()
    return torch.nn.functional.pad(image, (0, -w % d, 0, -h % d))


def inference_runner(
    model: torch.nn.Module,
    image: torch.Tensor,
    runtime: str = "eager",
    precision: str = "fp32",
    onnx_file: str | None = None,
    workdir: str | None = None,
):
    """
    A function that runs ``model``'s tensor-only inference path on ``image`` (3, H, W float32,
    padded: :func:`padded_image`) through ``runtime`` in ``precision`` (already resolved:
    :func:`lite_detr.precision.resolve_precision`), and what it runs: "file" (ONNX Runtime's
    graph file) or None. ``onnxruntime`` runs fp32 only; it exports the model into
    ``workdir`` unless ``onnx_file`` is given; either way the optimised graph is written next to
    the file and timed.
    """
    detector = InferenceDetector(model).eval()
    if runtime == "onnxruntime":
        h, w = image.shape[-2:]
        if onnx_file is None:
            check_input_size(model, h, w)
            onnx_file = os.path.join(workdir, "model.onnx")
            logger.info(f"exporting the model to ONNX at {h}x{w} (a few minutes) ...")
            export_onnx(model.to("cpu"), onnx_file, h, w, threads=torch.get_num_threads())
            optimized = write_optimized_onnx(onnx_file)
        else:
            optimized = optimized_onnx_path(onnx_file)
            if not os.path.isfile(optimized) or os.path.getmtime(optimized) < os.path.getmtime(
                onnx_file
            ):
                write_optimized_onnx(onnx_file, optimized)
                logger.info(f"wrote ONNX Runtime's optimised graph of {onnx_file} to {optimized}")
        session = onnx_session(optimized, threads=torch.get_num_threads())
        feeds = {"image": image.cpu().numpy()}
        return (lambda: session.run(None, feeds)), optimized
    fn = torch.compile(detector) if runtime == "compile" else detector

    def run():
        with torch.no_grad(), bf16_inference(model, precision):
            return fn(image)

    return run, None


def benchmark(
    cfg,
    tasks: Sequence[str] = ("inference",),
    input_size: Sequence[int] | None = None,
    device: str = "cpu",
    warmup: int = 3,
    iters: int = 10,
    runtime: str = "eager",
    precision: str = "fp32",
    onnx_file: str | None = None,
) -> Dict[str, Dict[str, float]]:
    """Run the benchmark tasks; return their statistics (seconds, FPS, MB). Inference runs
    through ``runtime`` in ``precision`` (see the module docstring)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime != "eager" and set(tasks) != {"inference"}:
        raise ConfigError(f"--runtime {runtime} times inference only: pass --tasks inference.")
    if runtime == "onnxruntime" and precision != "fp32":
        raise ConfigError(
            "--runtime onnxruntime runs the fp32 ONNX file: use --precision fp32, or "
            "--runtime eager/compile for bf16."
        )
    if runtime == "onnxruntime" and device != "cpu":
        raise ConfigError("--runtime onnxruntime runs on the CPU: pass --device cpu.")
    precision = resolve_precision(precision, device)
    ret = {}
    if "inference" in tasks or "train" in tasks:
        inputs = sample_inputs(cfg, 1, input_size)
    if "inference" in tasks:
        model = instantiate(cfg.model).to(device).eval()
        if device == "cpu" and runtime != "onnxruntime":  # ONNX Runtime optimises its own graph
            optimize_for_cpu_inference(model)
        image = padded_image(model, inputs[0]["image"]).to(device)
        with tempfile.TemporaryDirectory() as workdir:
            try:
                fn, graph_file = inference_runner(
                    model, image, runtime, precision, onnx_file, workdir
                )
            except ExportError as e:
                raise ConfigError(f"Cannot run --runtime {runtime}: {e}") from e
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            stats = _timeit(fn, warmup, iters, device, "inference")
        stats["fps"] = 1.0 / stats["median_s"]
        stats["peak_memory_mb"] = _peak_memory_mb(device)
        stats.update(runtime=runtime, precision=precision, threads=torch.get_num_threads())
        if onnx_file:
            stats["optimized_onnx_file"] = graph_file
        ret["inference"] = stats
        h, w = image.shape[-2:]
        logger.info(
            f"inference {h}x{w} on {device} ({runtime}, {precision}, "
            f"{torch.get_num_threads()} threads): median {stats['median_s'] * 1e3:.1f} ms "
            f"(p10 {stats['p10_s'] * 1e3:.1f}, p90 {stats['p90_s'] * 1e3:.1f}, "
            f"min {stats['min_s'] * 1e3:.1f}, max {stats['max_s'] * 1e3:.1f}, "
            f"spread {100 * stats['spread']:.0f}%), "
            f"{stats['fps']:.2f} FPS, peak memory {stats['peak_memory_mb']:.0f} MB"
        )
    if "train" in tasks:
        model = instantiate(cfg.model).to(device).train()  # plain: not the deployed one
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
    parser.add_argument("--runtime", choices=RUNTIMES, default="eager", help="inference path")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument(
        "--onnx", metavar="FILE", default=None, help="--runtime onnxruntime: this exported file"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads (default: torch's)"
    )
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
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.onnx and args.runtime != "onnxruntime":
        raise ConfigError("--onnx FILE is for --runtime onnxruntime.")
    if args.onnx and not os.path.isfile(args.onnx):
        raise ConfigError(f"--onnx {args.onnx!r} does not exist: pass a file of export_model.py.")
    return benchmark(
        cfg,
        args.tasks,
        args.input_size,
        args.device,
        args.warmup,
        args.iters,
        args.runtime,
        args.precision,
        args.onnx,
    )


if __name__ == "__main__":
    main()
