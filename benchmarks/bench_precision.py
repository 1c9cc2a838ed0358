#!/usr/bin/env python
"""COCO AP of a trained model in fp32 and in bf16 on its val set, and how many detections agree.

By default the demo's model (``output/demo/model_final.pth``, written by ``make demo``) on the
demo's val set (the synthetic shapes, ``shapes_val``), with the config saved next to the weights.
Every val image runs through the model twice, in fp32 and inside
``lite_detr.precision.bf16_inference`` (the path of ``--precision bf16`` in the tools and the
Predictor), and each output goes to its own detectron2 ``COCOEvaluator``. The script prints both
APs, their difference (the goal: bf16 within 0.5 AP of fp32), and the detection agreement: how many
of fp32's detections bf16 reproduces with the same label, a box IoU of at least 0.9 and a score
within 0.05 (each paired once), over all detections and over the confident ones. On a CPU without
bfloat16 instructions it says so in one line and stops: bf16 would run as fp32 there.

    python benchmarks/bench_precision.py               # the demo's model; ~2-3 min on 2 cores
    python benchmarks/bench_precision.py --weights run/model_final.pth --config-file run/config.yaml
"""

import argparse
import os
import sys
import time

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import torch
from detectron2.config import instantiate

from lite_detr.checkpoint import LiteDetrCheckpointer
from lite_detr.config import load_config
from lite_detr.precision import (
    BF16_CPU_FLAGS,
    bf16_inference,
    cpu_bf16_support,
    match_detections,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_WEIGHTS = os.path.join("output", "demo", "model_final.pth")


def _instances(output):
    inst = output["instances"].to("cpu")
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def compare_precisions(cfg, weights: str, max_images: int | None = None, confident: float = 0.3):
    """
    Evaluate ``cfg.model`` with ``weights`` on ``cfg.dataloader.test`` in fp32 and in bf16 with
    ``cfg.dataloader.evaluator``; print the progress and return the lines of the report.
    """
    model = instantiate(cfg.model).to("cpu").eval()
    LiteDetrCheckpointer(model).load(weights)
    loader = instantiate(cfg.dataloader.test)
    evaluators = {}
    for prec in ("fp32", "bf16"):
        evaluators[prec] = instantiate(cfg.dataloader.evaluator)
        evaluators[prec]._output_dir = None  # nothing written next to the weights
        evaluators[prec]._distributed = False
        evaluators[prec].reset()
    total = min(len(loader), max_images) if max_images else len(loader)
    n_all = n_all_ok = n_conf = n_conf_ok = n_top = n_top_ok = 0
    worst = 0.0
    seconds = {"fp32": 0.0, "bf16": 0.0}
    image_ids = []
    start = time.perf_counter()
    with torch.no_grad():
        for k, inputs in enumerate(loader):
            if k == total:
                break
            t = time.perf_counter()
            out32 = model(inputs)
            seconds["fp32"] += time.perf_counter() - t
            t = time.perf_counter()
            with bf16_inference(model):
                out16 = model(inputs)
            seconds["bf16"] += time.perf_counter() - t
            image_ids += [x["image_id"] for x in inputs]
            evaluators["fp32"].process(inputs, out32)
            evaluators["bf16"].process(inputs, out16)
            for a, b in zip(out32, out16):
                expected, actual = _instances(a), _instances(b)
                matched, w = match_detections(expected, actual)
                worst = max(worst, w)
                conf = expected[1] >= confident
                n_all, n_all_ok = n_all + len(matched), n_all_ok + int(matched.sum())
                n_conf, n_conf_ok = n_conf + int(conf.sum()), n_conf_ok + int(matched[conf].sum())
                if len(expected[2]) and len(actual[2]):  # the top-scoring detection's label
                    n_top += 1
                    n_top_ok += int(expected[2][0] == actual[2][0])
            if (k + 1) % 20 == 0 or k + 1 == total:
                print(
                    f"  {k + 1}/{total} images, {time.perf_counter() - start:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    results = {}
    for prec, evaluator in evaluators.items():
        # the processed images only (COCO's AP over all would count the others as misses)
        results[prec] = evaluator.evaluate(img_ids=image_ids)["bbox"]
    ap32, ap16 = results["fp32"]["AP"], results["bf16"]["AP"]
    names = cfg.dataloader.test.dataset.names
    lines = [
        f"{type(model).__name__} {os.path.basename(weights)} on {names} ({total} images), "
        f"{torch.get_num_threads()} threads",
        "| precision | AP | AP50 | AP75 |",
        "|---|---|---|---|",
    ]
    for prec, r in results.items():
        lines.append(f"| {prec} | {r['AP']:.2f} | {r['AP50']:.2f} | {r['AP75']:.2f} |")
    verdict = "within" if abs(ap16 - ap32) <= 0.5 else "NOT within"
    lines += [
        f"bf16 - fp32: {ap16 - ap32:+.2f} AP ({verdict} 0.5 AP)",
        f"detections of fp32 that bf16 reproduces (same label, IoU >= 0.9, score within 0.05): "
        f"{n_all_ok}/{n_all} ({100 * n_all_ok / max(n_all, 1):.1f}%); with fp32 score >= "
        f"{confident}: {n_conf_ok}/{n_conf} ({100 * n_conf_ok / max(n_conf, 1):.1f}%); "
        f"max score diff {worst:.3f}; top detection's label equal: {n_top_ok}/{n_top}",
        f"model time (a side note, not a benchmark): fp32 {seconds['fp32']:.1f} s, "
        f"bf16 {seconds['bf16']:.1f} s",
    ]
    return lines


def demo_config(weights: str, config_file: str | None, opts):
    """The config saved next to ``weights`` unless ``config_file`` is given; None (after one
    printed line) when there are no weights or no config."""
    if not os.path.isfile(weights):
        hint = "run `make demo` first" if weights == DEMO_WEIGHTS else "pass --weights FILE.pth"
        print(f"No trained model at {weights}: {hint} (it trains the demo's model there).")
        return None
    config_file = config_file or os.path.join(os.path.dirname(weights), "config.yaml")
    if not os.path.isfile(config_file):
        print(
            f"No config at {config_file}: pass --config-file (the one {weights} was trained with)."
        )
        return None
    return load_config(config_file, opts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--weights", default=DEMO_WEIGHTS, help=f"default: {DEMO_WEIGHTS}")
    parser.add_argument("--config-file", help="default: config.yaml next to the weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-images", type=int, help="the first N val images (default: all)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    if cpu_bf16_support() is None:
        print(f"This CPU has no bfloat16 instructions ({' or '.join(BF16_CPU_FLAGS)}): no bf16 AP.")
        return 1
    cfg = demo_config(args.weights, args.config_file, args.opts)
    if cfg is None:
        return 2
    torch.set_num_threads(args.threads)
    print("\n".join(compare_precisions(cfg, args.weights, args.max_images)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
