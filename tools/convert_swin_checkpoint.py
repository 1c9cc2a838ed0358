#!/usr/bin/env python
"""
Convert the official ImageNet Swin-T checkpoint to backbone weights of this project's Swin configs.

    python tools/convert_swin_checkpoint.py swin_tiny_patch4_window7_224.pth swin_tiny_d2.pth
    python train_net.py --num-gpus 8 train.init_checkpoint=swin_tiny_d2.pth \
        --config-file projects/lite_dino/configs/lite_dino_swin_t_4scale_h3l1_a2b3_36ep.py

The input is the file of the official Swin release (``{"model": state_dict}`` of the classifier;
the ImageNet-22k and 22k->1k Swin-T files have the same backbone keys). Every backbone key gets
the ``backbone.`` prefix; the classification head, the final ``norm`` and the stored attention
masks / relative position indices are dropped. A missing, unknown or misshapen key is an error
naming it, and nothing is written.
"""

import argparse
import os
import sys

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import torch
from detectron2.config import instantiate

from lite_detr.imagenet_weights import convert_swin_state_dict
from lite_detr.model_zoo import get_config
from lite_detr.utils import atomic_write

# the Swin-T backbone that the configs use (its state dict is the conversion's target)
CONFIG = "projects/lite_dino/configs/lite_dino_swin_t_4scale_h3l1_a2b3_36ep.py"


class ConversionError(ValueError):
    """Bad input; the message names the file or key and the fix."""


def load_state_dict(path: str) -> dict:
    """The ``"model"`` state dict of an official Swin file (or a bare state dict)."""
    if not os.path.isfile(path):
        raise ConversionError(f"input {path!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load / pickle raise many types for a non-checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConversionError(
            f"input {path!r} is not a PyTorch checkpoint of tensors ({type(e).__name__}: {first})"
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ConversionError(
        f"input {path!r} holds no state dict (expected {{'model': state_dict}}, as the official "
        "Swin files have)"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert the official ImageNet Swin-T checkpoint to this project's backbone."
    )
    parser.add_argument("input", metavar="INPUT.pth", help="swin_tiny_patch4_window7_224.pth")
    parser.add_argument("output", metavar="OUTPUT.pth", help="converted checkpoint to write")
    args = parser.parse_args(argv)
    prog = os.path.basename(__file__)
    try:
        if os.path.exists(args.output):
            raise ConversionError(
                f"output {args.output!r} exists: remove it or choose another name"
            )
        state = load_state_dict(args.input)
        backbone = instantiate(get_config(CONFIG).model.backbone)
        expected = {"backbone." + k: v for k, v in backbone.state_dict().items()}
        try:
            converted, dropped = convert_swin_state_dict(state, expected)
        except ValueError as e:
            raise ConversionError(f"{args.input}: {e}") from e
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        # a temporary file renamed at the end: the output is never a partial file
        with atomic_write(args.output, "wb") as f:
            torch.save({"model": converted, "__author__": "official Swin release"}, f)
    except ConversionError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    lines = [
        f"Converted {args.input} -> {args.output}",
        f"  tensors written {len(converted)} "
        f"({sum(v.numel() for v in converted.values()):,} values, all under backbone.)",
    ]
    for reason, keys in dropped.items():
        if keys:
            lines.append(f"  dropped {len(keys):3d}     {reason} (e.g. {keys[0]})")
    lines.append(
        "  new             backbone.norm1..norm3 (one LayerNorm per output, trained from scratch)"
    )
    lines.append(
        f"Train: python train_net.py --config-file {CONFIG} train.init_checkpoint={args.output}"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
