#!/usr/bin/env python
"""CPU inference latency and GFLOPs of DINO R50 vs the Lite-DINO R50 variants at 800x1333.

Latency is split into backbone (+ neck), encoder and decoder (query selection, decoder, heads and
post-processing: everything after the encoder) with forward hooks, median over ``--runs`` rounds
(variants take turns) after ``--warmup``; GFLOPs (total and encoder) come from fvcore with the
compiled ops' FLOP handles. Weights are random: the cost does not depend on them (top-k
post-processing included).

    python benchmarks/bench_model.py                 # all variants, 2 threads, ~10 min
    python benchmarks/bench_model.py --runs 1 --no-flops --variants dino h3l1_a2b3

Goals (issue 4): Lite H3L1-(2+1)x3 encoder latency <= 0.45x DINO's, end-to-end <= 0.7x.
"""

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.utils.analysis import FlopCountAnalysis  # noqa: E402

from lite_detr.ops import compiled_ops_available  # noqa: E402
from lite_detr.ops.flop_count import FLOP_HANDLES  # noqa: E402

MODELS = os.path.join(ROOT, "projects", "lite_dino", "configs", "models")
# name -> (model config, overrides, label)
VARIANTS = {
    "dino": ("dino_r50.py", [], "DINO R50 (deformable encoder x6)"),
    "h3l1_a2b3": ("lite_dino_r50.py", [], "Lite-DINO R50 H3L1-(2+1)x3"),
    "h3l1_a3b2": (
        "lite_dino_r50.py",
        ["model.encoder.num_high_updates=3", "model.encoder.num_blocks=2"],
        "Lite-DINO R50 H3L1-(3+1)x2",
    ),
    "h3l1_a6b1": (
        "lite_dino_r50.py",
        ["model.encoder.num_high_updates=6", "model.encoder.num_blocks=1"],
        "Lite-DINO R50 H3L1-(6+1)x1",
    ),
    "h2l2_a2b3": (
        "lite_dino_r50.py",
        ["model.encoder.num_high_levels=2"],
        "Lite-DINO R50 H2L2-(2+1)x3",
    ),
}


class StageTimer:
    """Forward hooks recording wall time of backbone+neck and of the encoder."""

    def __init__(self, model):
        self.marks = {}
        model.backbone.register_forward_pre_hook(lambda m, i: self._mark("backbone_start"))
        model.neck.register_forward_hook(lambda m, i, o: self._mark("neck_end"))
        model.encoder.register_forward_pre_hook(lambda m, i: self._mark("encoder_start"))
        model.encoder.register_forward_hook(lambda m, i, o: self._mark("encoder_end"))

    def _mark(self, name):
        self.marks[name] = time.perf_counter()

    def run(self, model, inputs):
        start = time.perf_counter()
        with torch.no_grad():
            model(inputs)
        end = time.perf_counter()
        m = self.marks
        backbone = m["neck_end"] - start  # includes normalisation and padding of the image
        encoder = m["encoder_end"] - m["encoder_start"]
        return {
            "backbone": backbone,
            "encoder": encoder,
            "decoder": end - start - backbone - encoder,
            "total": end - start,
        }


def build(name):
    path, overrides, _ = VARIANTS[name]
    cfg = LazyConfig.load(os.path.join(MODELS, path))
    LazyConfig.apply_overrides(cfg, overrides)
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if not compiled_ops_available():
        print("WARNING: lite_detr._C is not built; the attention runs the slow PyTorch path")
    image = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8)
    inputs = [{"image": image}]
    print(f"{args.height}x{args.width}, {args.threads} threads, torch {torch.__version__}")

    rows, models = {}, {}
    for name in args.variants:
        model = build(name)
        row = {"variant": model.encoder.variant}
        if not args.no_flops:
            flops = FlopCountAnalysis(model, inputs).set_op_handle(**FLOP_HANDLES)
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            row["gflops"] = flops.total() / 1e9
            row["enc_gflops"] = flops.by_module()["model.encoder"] / 1e9  # TracingAdapter prefix
        rows[name], models[name] = row, model
    if not args.no_latency:
        # variants take turns in every round, so that a change of machine load hits all of them
        timers = {name: StageTimer(model) for name, model in models.items()}
        runs = {name: [] for name in models}
        for i in range(args.warmup + args.runs):
            for name, model in models.items():
                result = timers[name].run(model, inputs)
                if i >= args.warmup:
                    runs[name].append(result)
        for name, row in rows.items():
            for k in ("backbone", "encoder", "decoder", "total"):
                row[k] = statistics.median(r[k] for r in runs[name])
    for name, row in rows.items():
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})

    base = rows.get("dino")
    header = (
        "| model | encoder | GFLOPs | enc GFLOPs | backbone s | encoder s | decoder s | total s |"
    )
    print("\n" + header + " enc ratio | total ratio |")
    print("|" + "---|" * 10)
    for name, row in rows.items():
        print(format_row(VARIANTS[name][2], row, base))


def format_row(label, row, base):
    def cell(key, fmt):
        return fmt.format(row[key]) if key in row else "-"

    def ratio(key):
        return f"{row[key] / base[key]:.2f}" if base and key in row and key in base else "-"

    return (
        f"| {label} | {row['variant']} | {cell('gflops', '{:.1f}')} "
        f"| {cell('enc_gflops', '{:.1f}')} | {cell('backbone', '{:.2f}')} "
        f"| {cell('encoder', '{:.2f}')} | {cell('decoder', '{:.2f}')} | {cell('total', '{:.2f}')} "
        f"| {ratio('encoder')} | {ratio('total')} |"
    )


if __name__ == "__main__":
    main()
