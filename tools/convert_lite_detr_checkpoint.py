#!/usr/bin/env python
"""
Convert one of the authors' released Lite-DINO R50 checkpoints to a detectron2 checkpoint of this
project.

    python tools/convert_lite_detr_checkpoint.py r50_s3ex3_50.4.pth out.pth
    python tools/convert_lite_detr_checkpoint.py renamed.pth out.pth --variant h2l2_a2b3

The variant comes from ``--variant`` or from ``s3ex3`` / ``s2ex3`` / ``s3ex1`` in the input name
(the files of two variants have identical keys, so it cannot be read from the weights). The output
carries the variant tag of ``projects/lite_dino/configs/lite_dino_r50_4scale_<variant>_*.py``
with ``model.num_ranking_only_classes=11`` (the release's 11 class rows of unused COCO ids, kept
so that the query selection and the detections are the release's): those configs load it with
``train.init_checkpoint=out.pth model.num_ranking_only_classes=11``, every other config refuses
it. See docs/released_weights.md.
"""

import argparse
import os
import pickle
import sys
import warnings

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import torch
from detectron2.config import instantiate

from lite_detr.model_zoo import get_config
from lite_detr.modeling.variant_tag import VariantTag
from lite_detr.released_weights import (
    RELEASED_VARIANTS,
    ConversionError,
    coco_category_ids,
    convert_released_state_dict,
    ranking_only_ids,
    variant_from_filename,
)
from lite_detr.utils import atomic_write


def load_release_checkpoint(path: str) -> dict:
    """The state dict of a release file: ``{"model": state_dict, ...}`` (other keys ignored) or a
    bare state dict."""
    if not os.path.isfile(path):
        raise ConversionError(f"input {path!r} does not exist")
    try:
        try:
            # the release also pickles its argparse options under "args"
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Unsupported global" not in str(e):
                raise
            warnings.warn(
                f"{path} holds Python objects besides tensors; unpickling it fully (convert only "
                "files you trust)",
                stacklevel=2,
            )
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConversionError(
            f"input {path!r} is not a PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})"
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ConversionError(
        f"input {path!r} holds no state dict (expected a dict with a 'model' state dict, as the "
        "released files have)"
    )


def build_target(variant: str, num_ranking_only_classes: int):
    """Our model of ``variant`` with the release's ranking-only class rows (random weights): its
    state dict is the conversion's target."""
    cfg = get_config(RELEASED_VARIANTS[variant].config)
    cfg.model.num_ranking_only_classes = num_ranking_only_classes
    return instantiate(cfg.model).eval()


def summary(variant: str, src: str, dst: str, state: dict, dropped: dict, class_ids) -> str:
    info = RELEASED_VARIANTS[variant]
    tag = state["variant_tag._extra_state"]
    extra = ranking_only_ids(class_ids)
    lines = [
        f"Converted {src} -> {dst}",
        f"  variant         {variant} (release {info.file_token}, COCO val AP {info.coco_ap})",
        f"  variant tag     {VariantTag.decode(tag)}",
        f"  config          {info.config} (and its other schedules)",
        f"  tensors written {len(state)} ({sum(v.numel() for v in state.values()):,} values)",
        f"  class rows      91 COCO ids -> {len(class_ids)} classes (ids "
        f"{', '.join(map(str, class_ids[:3]))}, ..., {class_ids[-1]}); label embedding 92 -> "
        f"{len(class_ids)}",
        f"  ranking-only    {len(extra)} class rows kept (unused ids "
        f"{', '.join(map(str, extra))}): "
        "they rank the top-900 query selection and the top-300 detections as in the release; "
        "their detections are dropped",
        "  backbone        torchvision ResNet-50 names -> detectron2 names",
    ]
    for reason, keys in dropped.items():
        if keys:
            lines.append(f"  dropped {len(keys):3d}     {reason} (e.g. {keys[0]})")
    lines.append(
        f"Evaluate: python train_net.py --config-file {info.config} --eval-only "
        f"train.init_checkpoint={dst} model.num_ranking_only_classes={len(extra)}"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert a released Lite-DINO R50 checkpoint to this project's format.",
    )
    parser.add_argument("input", metavar="INPUT.pth", help="released checkpoint")
    parser.add_argument("output", metavar="OUTPUT.pth", help="converted checkpoint to write")
    parser.add_argument(
        "--variant",
        choices=sorted(RELEASED_VARIANTS),
        help="our variant name; default: from s3ex3 / s2ex3 / s3ex1 in the input file name",
    )
    args = parser.parse_args(argv)
    prog = os.path.basename(__file__)
    try:
        variant = args.variant or variant_from_filename(args.input)
        if variant is None:
            tokens = ", ".join(
                f"{v.file_token} ({k})" for k, v in sorted(RELEASED_VARIANTS.items())
            )
            raise ConversionError(
                f"cannot tell the variant of {args.input!r}: its name holds none of {tokens}; "
                f"pass --variant {{{','.join(sorted(RELEASED_VARIANTS))}}}"
            )
        if os.path.exists(args.output):
            raise ConversionError(
                f"output {args.output!r} exists: remove it or choose another name"
            )
        state = load_release_checkpoint(args.input)
        class_ids = coco_category_ids()
        expected = build_target(variant, len(ranking_only_ids(class_ids))).state_dict()
        converted, dropped = convert_released_state_dict(state, expected, class_ids)
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        # a temporary file renamed at the end: the output is never a partial file
        with atomic_write(args.output, "wb") as f:
            torch.save({"model": converted}, f)
    except ConversionError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(summary(variant, args.input, args.output, converted, dropped, class_ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
