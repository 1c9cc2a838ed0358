#!/usr/bin/env python
"""
Export a trained detector to ONNX that ONNX Runtime runs at any input size, checked against PyTorch.

    python tools/export_model.py --config-file CONFIG --weights model_final.pth \\
        --format onnx --output model.onnx [--input-size H W] [--check-size H W] [key=value ...]

The file has one input ``image``: a float32 (3, H, W) tensor, 0-255, in the model's input format
(RGB), H and W multiples of the model's size divisibility; and the outputs ``boxes`` (K, 4, XYXY
in input pixels), ``scores`` (K,) and ``labels`` (K,): the detections that the PyTorch model
returns for ``height=H, width=W``. H and W are dynamic: one file serves every size (from the
smallest that gives the model enough encoder tokens, printed at the end). All operators are
standard ONNX (opset 18), the deformable attention included.

Right after writing, the file is run with ONNX Runtime at the export size and at a second size
(``--check-size``, default H + 3d x W + 5d for a size divisibility d, 32 without one) and its
detections are compared with PyTorch's (scores within 1e-4, boxes within 0.05 px); the file is
only kept when they agree. A detection may differ only through a near-tie of the encoder's query
selection: ONNX Runtime's own proposal scores (read from the file) within 1e-4 of PyTorch's, and
its detections strictly equal to PyTorch's decoding of ONNX Runtime's selection (it says so).
"""

import argparse
import logging
import os
import time

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import torch
from detectron2.config import instantiate

from lite_detr.checkpoint import LiteDetrCheckpointer
from lite_detr.config import ConfigError, config_error_on_bad_checkpoint, load_config
from lite_detr.engine.cli import run_tool
from lite_detr.export import (
    ExportError,
    InferenceDetector,
    check_input_size,
    describe_comparison,
    export_onnx,
    min_input_side,
)

logger = logging.getLogger("lite_detr.export_model")


def _load_model(cfg, weights: str) -> torch.nn.Module:
    try:
        model = instantiate(cfg.model)
    except Exception as e:
        raise ConfigError(f"Cannot build the config's model: {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"the config's model is a {type(model).__name__}, not a torch module")
    InferenceDetector(model)  # raises ExportError for a model that cannot be exported
    model = model.to("cpu").eval()
    if not os.path.isfile(weights):
        raise ConfigError(f"Weights {weights!r} do not exist: pass --weights FILE.pth.")
    with config_error_on_bad_checkpoint(weights):
        LiteDetrCheckpointer(model).load(weights)
    return model


def default_check_size(model, height: int, width: int):
    """A second size, different from the export size in both sides and in aspect ratio."""
    d = getattr(model, "size_divisibility", 0) or 32
    return height + 3 * d, width + 5 * d


def run(args) -> list:
    cfg = load_config(args.config_file, args.opts)
    model = _load_model(cfg, args.weights)
    height, width = args.input_size
    check_input_size(model, height, width)
    check = tuple(args.check_size) if args.check_size else default_check_size(model, height, width)
    check_input_size(model, *check)
    if os.path.isdir(args.output):
        raise ConfigError(f"--output {args.output!r} is a folder; pass a file name like model.onnx")
    logger.info(
        "Exporting %s at %dx%d (H, W dynamic) to %s ...",
        type(model).__name__,
        height,
        width,
        args.output,
    )
    start = time.perf_counter()
    report = export_onnx(model, args.output, height, width, check_sizes=[check])
    logger.info("Exported and checked in %.0f s.", time.perf_counter() - start)
    for r in report:
        logger.info(
            "ONNX Runtime matches PyTorch at %dx%d: %s",
            *r["size"],
            describe_comparison(r, model.num_queries),
        )
    d = max(getattr(model, "size_divisibility", 0) or 1, 1)
    image_format = (
        cfg.dataloader.test.mapper.get("image_format", "RGB") if "dataloader" in cfg else "RGB"
    )
    logger.info(
        "Wrote %s: input 'image' float32 (3, H, W) 0-255 %s, H and W >= %d%s; outputs 'boxes' "
        "(K, 4) XYXY pixels, 'scores' (K,), 'labels' (K,).",
        args.output,
        image_format,
        min_input_side(model),
        f" and multiples of {d}" if d > 1 else "",
    )
    return report


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", required=True, metavar="FILE", help="checkpoint (.pth)")
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        default=[512, 640],
        metavar=("H", "W"),
        help="size to trace and check at (default 512 640); the file accepts other sizes",
    )
    parser.add_argument(
        "--check-size",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help="second size for the ONNX Runtime check (default H+3d W+5d)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    return run_tool("export_model.py", lambda: run(args), errors=(ExportError,))


if __name__ == "__main__":
    main()
