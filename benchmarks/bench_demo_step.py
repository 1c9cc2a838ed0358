#!/usr/bin/env python
"""
Time per training iteration of the ``make demo`` model: the previous and the current demo setup.

    python benchmarks/bench_demo_step.py                # 3 rounds x 15 iterations, ~5 min
    python benchmarks/bench_demo_step.py --rounds 1 --iters 6

The configurations take turns in every round (a change of machine speed hits all of them), each
running the same pre-loaded batches of ``shapes_train`` (batch 4, the demo's augmentation): a
full forward, backward and AdamW step, median over the iterations after the first three.

* ``previous``: full-width ResNet-18 (64-512 channels), 1 intra-op thread (the demo until 2026-12)
* ``2 threads``: the same model on 2 threads
* ``half width``: ResNet-18 with 32-256 channels, 1 thread
* ``current``: half width, 2 threads (``tools/run_demo.py``'s default on a 2-core machine)
"""

import argparse
import os
import statistics
import time

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import torch
from detectron2.config import instantiate

import lite_detr.data  # noqa: F401  (registers shapes_train)
from lite_detr.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py")
FULL_WIDTH = [
    "model.backbone.stages.width=64",
    "model.backbone.stem.out_channels=64",
    "model.neck.input_shapes.res3.channels=128",
    "model.neck.input_shapes.res4.channels=256",
    "model.neck.input_shapes.res5.channels=512",
]
SETUPS = {  # name: (overrides, threads)
    "previous": (FULL_WIDTH, 1),
    "2 threads": (FULL_WIDTH, 2),
    "half width": ([], 1),
    "current": ([], 2),
}


def build(overrides):
    cfg = load_config(CONFIG, ["train.device=cpu"] + overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    return model, instantiate(cfg.optimizer), cfg


def step_times(model, optimizer, batches, threads):
    torch.set_num_threads(threads)
    times = []
    for batch in batches:
        start = time.perf_counter()
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[3:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=15, help="per configuration and round")
    args = parser.parse_args()
    if args.iters < 4 or args.rounds < 1:
        parser.error("--iters must be >= 4 (the first three are warm-up) and --rounds >= 1")

    built = {name: build(overrides) for name, (overrides, _) in SETUPS.items()}
    loader = iter(instantiate(built["current"][2].dataloader.train))
    batches = [next(loader) for _ in range(args.iters)]
    params = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, (m, _, _) in built.items()}
    results = {name: [] for name in SETUPS}
    load = os.getloadavg()[0]
    for r in range(args.rounds):
        for name, (_, threads) in SETUPS.items():
            model, optimizer, _ = built[name]
            results[name].append(statistics.median(step_times(model, optimizer, batches, threads)))
            print(f"round {r + 1}: {name:<10} {results[name][-1]:.3f} s/iter", flush=True)
    print(
        f"\ntorch {torch.__version__}, {os.cpu_count()} cores, load average {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after; median s/iter per round"
    )
    base = statistics.median(results["previous"])
    print(f"{'setup':<11} {'threads':>7} {'params M':>8} | {'s/iter (rounds)':<24} | ratio")
    for name, (_, threads) in SETUPS.items():
        rounds = " ".join(f"{t:.3f}" for t in results[name])
        ratio = statistics.median(results[name]) / base
        print(f"{name:<11} {threads:>7} {params[name]:>8.2f} | {rounds:<24} | {ratio:.2f}")


if __name__ == "__main__":
    main()
