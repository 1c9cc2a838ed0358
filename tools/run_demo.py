#!/usr/bin/env python
"""
The ``make demo`` pipeline: synthetic data -> train -> COCO evaluation -> pictures.

    python tools/run_demo.py                   # the full demo (a CPU is enough)
    python tools/run_demo.py --max-iter 30 --num-train 32 --num-val 8 --image-size 128

1. generates the shapes dataset under ``$DETECTRON2_DATASETS/shapes`` unless a valid one is there;
2. trains ``projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py`` with ``train_net.py`` (in this
   process, ``--resume``: an interrupted demo continues from its last checkpoint, a finished one
   is not trained again);
3. evaluates on the val split with ``COCOEvaluator`` (part of training's last step);
4. writes ``<output>/vis/*.png`` (ground truth | predictions on val images) and
   ``<output>/curves.png`` (training loss and AP), then prints the AP table.
"""

import argparse
import json
import logging
import os
import time
from typing import Dict, List

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import create_small_table

from lite_detr.config import load_config
from lite_detr.data import register_shapes, shapes_dataset_dir
from lite_detr.engine import (
    Predictor,
    default_argument_parser,
    read_rgb,
    train_or_evaluate,
)
from lite_detr.engine.cli import machine_is_busy, read_load, run_tool

logger = logging.getLogger("lite_detr.run_demo")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py")
DEFAULT_SPLIT = {"num_train": 2000, "num_val": 200, "image_size": 320}


def prepare_data(num_train: int, num_val: int, image_size: int, root: str | None = None) -> str:
    """Register (non-default sizes or root) and generate/validate the dataset; return its name."""
    import lite_detr.data  # noqa: F401  (registers the default shapes_train / shapes_val)

    custom = (num_train, num_val, image_size) != tuple(DEFAULT_SPLIT.values()) or root is not None
    name = f"shapes_{num_train}_{num_val}_{image_size}" if custom else "shapes"
    if custom and f"{name}_train" not in DatasetCatalog.list():
        register_shapes(name, root, num_train, num_val, image_size)
    t = time.perf_counter()
    for split in ("train", "val"):
        DatasetCatalog.get(f"{name}_{split}")  # generates on first use, validates otherwise
    logger.info(
        f"Data: {name}_train / {name}_val in {shapes_dataset_dir(name, root)} "
        f"(ready in {time.perf_counter() - t:.0f} s)"
    )
    return name


def _overrides(args, dataset: str) -> List[str]:
    opts = [
        f"train.output_dir={args.output_dir}",
        "train.device=cpu",
        f"dataloader.train.dataset.names={dataset}_train",
        f"dataloader.test.dataset.names={dataset}_val",
        f"dataloader.input_size={args.image_size}",
    ]
    if args.max_iter is not None:  # one evaluation at the end, as the config's schedule has
        opts += [f"train.max_iter={args.max_iter}", f"train.eval_period={args.max_iter}"]
    return opts + list(args.opts)


def _read_metrics(output_dir: str) -> List[Dict]:
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut off by a killed run
                continue
    return records


def plot_curves(metrics: List[Dict], path: str) -> str:
    """Training loss and bbox AP against the iteration, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    losses = [(m["iteration"], m["total_loss"]) for m in metrics if "total_loss" in m]
    if losses:
        it, val = zip(*losses)
        ax_loss.plot(it, val, label="total_loss")
    ax_loss.set(xlabel="iteration", ylabel="loss", title="training loss")
    ax_loss.legend()
    for key in ("AP", "AP50", "APs", "APm", "APl"):
        pts = [(m["iteration"], m[f"bbox/{key}"]) for m in metrics if f"bbox/{key}" in m]
        if pts:
            it, val = zip(*pts)
            ax_ap.plot(it, val, marker="o", label=key)
    ax_ap.set(xlabel="iteration", ylabel="AP (%)", title="bbox AP on val")
    ax_ap.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw_predictions(cfg, weights: str, dataset: str, out_dir: str, num: int, threshold: float):
    """For ``num`` val images, save ground truth | predictions side by side as PNGs."""
    from detectron2.utils.visualizer import Visualizer

    predictor = Predictor(cfg, weights)
    meta = MetadataCatalog.get(f"{dataset}_val")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for d in DatasetCatalog.get(f"{dataset}_val")[:num]:
        rgb = read_rgb(d["file_name"])
        gt = Visualizer(rgb, meta).draw_dataset_dict(d).get_image()
        inst = predictor(rgb)
        inst = inst[inst.scores >= threshold]
        pred = Visualizer(rgb, meta).draw_instance_predictions(inst).get_image()
        sep = np.full((rgb.shape[0], 4, 3), 255, dtype=np.uint8)
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(d["file_name"]))[0] + ".png")
        from PIL import Image

        Image.fromarray(np.concatenate([gt, sep, pred], axis=1)).save(path)
        paths.append(path)
    return paths


def run(args) -> Dict:
    os.makedirs(args.output_dir, exist_ok=True)
    torch.set_num_threads(args.num_threads)
    load, cores = read_load()
    if machine_is_busy(load, cores):
        logger.warning(
            f"The machine is busy (load average {load:.1f} on {cores} cores): the demo will take "
            f"longer than the README's timing, and threads that wait for a busy core slow every "
            f"step; on a shared machine --num-threads 1 can be faster."
        )
    dataset = prepare_data(args.num_train, args.num_val, args.image_size, args.datasets_root)
    opts = _overrides(args, dataset)
    cfg = load_config(args.config_file, opts)
    max_iter = cfg.train.max_iter

    final = os.path.join(args.output_dir, "model_final.pth")
    results_file = os.path.join(args.output_dir, "inference", "eval_results.json")
    done = False
    if os.path.isfile(final) and os.path.isfile(results_file):
        try:
            saved = torch.load(final, map_location="cpu", weights_only=False).get("iteration")
        except Exception:  # damaged: --resume writes it again from the last checkpoint
            saved = None
        done = saved == max_iter - 1
    train_time = None
    if done:
        logger.info(f"{final} is trained to {max_iter} iterations: reusing it and its evaluation.")
    else:
        targs = default_argument_parser().parse_args(
            ["--config-file", args.config_file, "--resume"] + opts
        )
        t = time.perf_counter()
        train_or_evaluate(targs)  # as train_net.py does, in this process
        train_time = time.perf_counter() - t
    with open(results_file) as f:
        results = json.load(f)

    curves = plot_curves(
        _read_metrics(args.output_dir), os.path.join(args.output_dir, "curves.png")
    )
    vis = draw_predictions(
        cfg,
        final,
        dataset,
        os.path.join(args.output_dir, "vis"),
        args.num_vis,
        args.score_threshold,
    )
    bbox = results.get("bbox", {})
    table = create_small_table(
        {k: bbox[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl") if k in bbox}
    )
    print(f"\nLite-DINO R18 on {dataset}_val after {max_iter} iterations (bbox, COCO metrics):")
    print(table)
    if train_time is not None:
        print(f"training + evaluation time: {train_time / 60:.1f} min")
    print(f"predictions next to ground truth: {os.path.dirname(vis[0]) if vis else '-'}/*.png")
    print(f"loss and AP curves: {curves}")
    return {"results": results, "train_time_s": train_time, "vis": vis, "curves": curves}


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--max-iter", type=int, default=None, help="default: the config's")
    parser.add_argument("--num-train", type=int, default=DEFAULT_SPLIT["num_train"])
    parser.add_argument("--num-val", type=int, default=DEFAULT_SPLIT["num_val"])
    parser.add_argument("--image-size", type=int, default=DEFAULT_SPLIT["image_size"])
    parser.add_argument("--datasets-root", default=None, help="default: $DETECTRON2_DATASETS")
    parser.add_argument("--num-vis", type=int, default=8, help="val images to draw")
    parser.add_argument("--score-threshold", type=float, default=0.3)
    # every core (on an idle 2-core machine a step takes 0.56x the time of one thread; the
    # data-loader worker is ~2% of a step). Fixed, not chosen from the load, so that a machine
    # always computes the same demo; run() warns when the machine is busy.
    parser.add_argument("--num-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    return run_tool("run_demo.py", lambda: run(args), errors=(FloatingPointError,))


if __name__ == "__main__":
    main()
