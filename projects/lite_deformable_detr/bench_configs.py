#!/usr/bin/env python
"""GFLOPs (total and encoder) and CPU latency of configs: the tables of this project's README and
of ``projects/lite_h_detr/README.md``.

    python projects/lite_deformable_detr/bench_configs.py                # every config of both
    python projects/lite_deformable_detr/bench_configs.py CONFIG ... --iters 5 --threads 2

FLOPs are fvcore's multiply-accumulates with the ``lite_detr`` op handles (the deformable /
key-aware attention kernels counted), on one random 800x1333 image, inference mode. Latency is
the median of ``--iters`` inference runs after one warm-up, with ``--threads`` CPU threads.
Configs that differ only in their schedule share a model: one row per model.
"""

import argparse
import glob
import os
import sys
import time

import numpy as np
import torch
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from lite_detr.evaluation import FlopCountAnalysis  # noqa: E402

PROJECTS = ("lite_deformable_detr", "lite_h_detr")


def measure(cfg, size, iters: int):
    """Returns (total GFLOPs, encoder GFLOPs, median latency in s) of ``cfg.model``."""
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
    inputs = [{"image": image, "height": size[0], "width": size[1]}]
    with torch.no_grad():
        flops = FlopCountAnalysis(model, inputs)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_module = flops.by_module()  # traced through an adapter: modules are "model.*"
        model(inputs)  # warm-up
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - t)
    return by_module["model"] / 1e9, by_module["model.encoder"] / 1e9, float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("configs", nargs="*", help="default: the configs of both projects")
    parser.add_argument("--size", nargs=2, type=int, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = args.configs or sorted(
        p
        for proj in PROJECTS
        for p in glob.glob(os.path.join(ROOT, "projects", proj, "configs", "*.py"))
    )
    print("| config | model | GFLOPs | encoder GFLOPs | CPU latency (s) |")
    print("|---|---|---|---|---|")
    seen = {}
    for path in configs:
        cfg = LazyConfig.load(path)
        key = str(OmegaConf.to_container(cfg.model, resolve=True))
        name = os.path.basename(path)[: -len(".py")]
        if key not in seen:
            seen[key] = measure(cfg, args.size, args.iters)
        total, encoder, latency = seen[key]
        target = cfg.model._target_
        target = getattr(target, "__name__", str(target))
        print(f"| {name} | {target} | {total:.1f} | {encoder:.1f} | {latency:.2f} |", flush=True)


if __name__ == "__main__":
    main()
