#!/usr/bin/env python
"""Inference latency (CPU, or CUDA with ``--device cuda``) and GFLOPs of detectors at 800x1333:
by default DINO R50 vs the Lite-DINO R50 variants, or the models of any LazyConfig files
(``--configs``).

Latency is split into backbone (+ neck), encoder and decoder (query selection, decoder, heads and
post-processing: everything after the encoder) with forward hooks, median over ``--runs`` rounds
(models take turns) after ``--warmup``; GFLOPs (total and encoder) come from fvcore with the
compiled ops' FLOP handles. Weights are random: the cost does not depend on them (top-k
post-processing included). The ratio columns are relative to the first row.

    python benchmarks/bench_model.py                 # all Lite-DINO variants, 2 threads, ~10 min
    python benchmarks/bench_model.py --runs 1 --no-flops --variants dino h3l1_a2b3
    python benchmarks/bench_model.py --configs projects/lite_deformable_detr/configs/*.py

Configs whose models are the same (e.g. the 12- and 36-epoch schedules of one model) are built and
measured once, and share their numbers.

Goals (issue 4): Lite H3L1-(2+1)x3 encoder latency <= 0.45x DINO's, end-to-end <= 0.7x.
"""

import argparse
import os
import statistics
import time

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.utils.analysis import FlopCountAnalysis
from omegaconf import OmegaConf

from lite_detr.deploy import optimize_for_cpu_inference
from lite_detr.ops import compiled_ops_available
from lite_detr.ops.flop_count import FLOP_HANDLES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    """Forward hooks recording wall time of backbone+neck and of the encoder (on CUDA, each mark
    waits for the GPU, so the split is exact and the total includes that small overhead)."""

    def __init__(self, model):
        self.marks = {}
        self.cuda = model.device.type == "cuda"
        model.backbone.register_forward_pre_hook(lambda m, i: self._mark("backbone_start"))
        model.neck.register_forward_hook(lambda m, i, o: self._mark("neck_end"))
        model.encoder.register_forward_pre_hook(lambda m, i: self._mark("encoder_start"))
        model.encoder.register_forward_hook(lambda m, i, o: self._mark("encoder_end"))

    def _mark(self, name):
        if self.cuda:
            torch.cuda.synchronize()
        self.marks[name] = time.perf_counter()

    def run(self, model, inputs):
        self._mark("start")
        with torch.no_grad():
            model(inputs)
        self._mark("end")
        start, end = self.marks["start"], self.marks["end"]
        m = self.marks
        backbone = m["neck_end"] - start  # includes normalisation and padding of the image
        encoder = m["encoder_end"] - m["encoder_start"]
        return {
            "backbone": backbone,
            "encoder": encoder,
            "decoder": end - start - backbone - encoder,
            "total": end - start,
        }


def model_configs(args):
    """(label, model config) of each row: the ``--configs`` files, or the ``--variants``."""
    if args.configs:
        return [
            (os.path.basename(path)[: -len(".py")], LazyConfig.load(path).model)
            for path in args.configs
        ]
    rows = []
    for name in args.variants:
        path, overrides, label = VARIANTS[name]
        cfg = LazyConfig.apply_overrides(LazyConfig.load(os.path.join(MODELS, path)), overrides)
        rows.append((label, cfg.model))
    return rows


def measure_flops(model, inputs):
    """Total and encoder GFLOPs of one inference."""
    flops = FlopCountAnalysis(model, inputs).set_op_handle(**FLOP_HANDLES)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_module = flops.by_module()  # traced through an adapter: modules are "model.*"
    return {"gflops": flops.total() / 1e9, "enc_gflops": by_module["model.encoder"] / 1e9}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--configs", nargs="+", metavar="PATH", help="LazyConfig files (instead of --variants)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if not compiled_ops_available(args.device):
        print(
            f"WARNING: lite_detr._C has no {args.device} kernels; the attention runs the slow "
            "PyTorch path"
        )
    image = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8)
    inputs = [{"image": image}]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} threads"
    print(f"{args.height}x{args.width}, {where}, torch {torch.__version__}")

    # one model per distinct model config: configs that differ only in their schedule share it
    labels, keys, models = [], [], {}
    for label, cfg in model_configs(args):
        key = str(OmegaConf.to_container(cfg, resolve=True))
        if key not in models:
            torch.manual_seed(0)
            models[key] = instantiate(cfg).to(args.device).eval()
            if args.device == "cpu":  # as the tools run it
                optimize_for_cpu_inference(models[key])
        labels.append(label)
        keys.append(key)
    results = {key: {"variant": model.encoder.variant} for key, model in models.items()}
    if not args.no_flops:
        for key, model in models.items():
            results[key].update(measure_flops(model, inputs))
    if not args.no_latency:
        # models take turns in every round, so that a change of machine load hits all of them
        timers = {key: StageTimer(model) for key, model in models.items()}
        runs = {key: [] for key in models}
        for i in range(args.warmup + args.runs):
            for key, model in models.items():
                result = timers[key].run(model, inputs)
                if i >= args.warmup:
                    runs[key].append(result)
        for key, row in results.items():
            for k in ("backbone", "encoder", "decoder", "total"):
                row[k] = statistics.median(r[k] for r in runs[key])
    for label, key in zip(labels, keys):
        print(
            label, {k: round(v, 3) if isinstance(v, float) else v for k, v in results[key].items()}
        )

    base = results[keys[0]]
    unit, scale = ("ms", 1e3) if args.device == "cuda" else ("s", 1.0)  # GPU times are short
    header = (
        f"| model | encoder | GFLOPs | enc GFLOPs | backbone {unit} | encoder {unit} "
        f"| decoder {unit} | total {unit} |"
    )
    print("\n" + header + " enc ratio | total ratio |")
    print("|" + "---|" * 10)
    for label, key in zip(labels, keys):
        print(format_row(label, results[key], base, scale))


def format_row(label, row, base, scale=1.0):
    """One table row; times are multiplied by ``scale`` (1e3 for milliseconds)."""

    def cell(key, fmt):
        if key not in row:
            return "-"
        return fmt.format(
            row[key] * (scale if key in ("backbone", "encoder", "decoder", "total") else 1)
        )

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
