#!/usr/bin/env python
"""
FLOPs (fvcore, with the lite_detr op handles) and parameters of a LazyConfig model.

    python tools/analyze_model.py --config-file CONFIG --tasks flop parameter
    python tools/analyze_model.py --config-file CONFIG --tasks flop --input-size 800 1333

FLOPs are counted on real test images when the config's test dataset is there, on random images
of ``--input-size`` otherwise (DETR FLOPs depend on the image size only); without either, on
800x1066 and 800x1199, COCO val's two commonest shapes (640x480, 640x427) at the test resize.
They are reported in total and per top-level module (backbone, neck, encoder, decoder, ...), as
multiply-accumulates.
"""

import argparse
import logging
from collections import defaultdict
from typing import Dict, Sequence

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import torch
from detectron2.config import instantiate
from fvcore.nn import parameter_count
from tabulate import tabulate

from lite_detr.config import load_config
from lite_detr.data import positive_int, sample_inputs
from lite_detr.engine.cli import add_tasks_argument, run_tool
from lite_detr.evaluation import FlopCountAnalysis

logger = logging.getLogger("lite_detr.analyze_model")


def count_flops(
    model: torch.nn.Module,
    inputs,
    with_lite_detr_ops: bool = True,
) -> Dict[str, float]:
    """
    Mean FLOPs over ``inputs`` per top-level module; key ``""`` is the total.

    Args:
        model: an eval-mode detectron2-style model.
        inputs (list[dict]): single-image inputs.
        with_lite_detr_ops (bool): count the compiled deformable / key-aware attention ops.
    """
    totals = defaultdict(float)
    for inp in inputs:
        flops = FlopCountAnalysis(model, [inp], with_lite_detr_ops=with_lite_detr_ops)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        for name, value in flops.by_module().items():
            # detectron2 traces through a TracingAdapter: the model is its submodule "model"
            if name == "model":
                totals[""] += value / len(inputs)
            elif name.startswith("model.") and "." not in name[len("model.") :]:
                totals[name[len("model.") :]] += value / len(inputs)
    return dict(totals)


def flop_table(model: torch.nn.Module, flops: Dict[str, float]) -> str:
    params = parameter_count(model)
    total = flops.get("", 0.0)
    rows = []
    for name, value in sorted(flops.items(), key=lambda kv: -kv[1]):
        if name == "":
            continue
        share = 100.0 * value / total if total else 0.0
        rows.append(
            [name, f"{value / 1e9:.3f}", f"{share:.1f}%", f"{params.get(name, 0) / 1e6:.2f}"]
        )
    rows.append(["total", f"{total / 1e9:.3f}", "100.0%", f"{params[''] / 1e6:.2f}"])
    return tabulate(rows, headers=["module", "GFLOPs", "share", "params (M)"], tablefmt="pipe")


# COCO val's two commonest image shapes, 640x480 and 640x427, resized to a short side of 800: the
# sizes at which the project's and the paper's GFLOPs are compared when COCO is not there
TYPICAL_COCO_SIZES = ((800, 1066), (800, 1199))


def analyze(
    cfg,
    tasks: Sequence[str] = ("flop", "parameter"),
    input_size: Sequence[int] | None = None,
    num_inputs: int = 1,
) -> Dict:
    """Run the tasks; return ``{"flops": {module: flops}, "params": {module: count}}``."""
    model = instantiate(cfg.model)
    model.eval()
    ret = {}
    if "flop" in tasks:
        inputs = sample_inputs(cfg, num_inputs, input_size, fallback_sizes=TYPICAL_COCO_SIZES)
        sizes = sorted({tuple(x["image"].shape[-2:]) for x in inputs})
        with torch.no_grad():
            ret["flops"] = count_flops(model, inputs)
        logger.info(
            f"FLOPs (multiply-accumulates), mean over {len(inputs)} input(s) of "
            + ", ".join(f"{h}x{w}" for h, w in sizes[:4])
            + (" ..." if len(sizes) > 4 else "")
            + ":\n"
            + flop_table(model, ret["flops"])
        )
    if "parameter" in tasks:
        from fvcore.nn import parameter_count_table

        ret["params"] = dict(parameter_count(model))
        logger.info("Parameters:\n" + parameter_count_table(model, max_depth=2))
    if "structure" in tasks:
        logger.info("Model structure:\n" + str(model))
    return ret


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    add_tasks_argument(parser, ["flop", "parameter", "structure"], default=["flop", "parameter"])
    parser.add_argument(
        "--input-size", nargs=2, type=positive_int, metavar=("H", "W"), default=None
    )
    parser.add_argument(
        "--num-inputs", type=positive_int, default=1, help="images to average FLOPs over"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    args.opts = args.task_overrides + args.opts  # overrides right after --tasks a b
    return run_tool(
        "analyze_model.py",
        lambda: analyze(
            load_config(args.config_file, args.opts), args.tasks, args.input_size, args.num_inputs
        ),
        errors=(ValueError,),  # e.g. an input too small for the model
        loggers=("lite_detr", "fvcore"),
    )


if __name__ == "__main__":
    main()
