"""Opt-in bfloat16 inference on the CPU.

:func:`bf16_inference` returns the context to run a detector's forward in: ``torch.autocast``
with bfloat16 on a CPU with bfloat16 instructions (``avx512_bf16`` or ``amx_bf16``), so that the
backbone's convolutions and the transformer's linears run in bfloat16, while
:func:`keep_float32_heads` keeps in float32 what decides the detections: the class and box heads
(box decoding, the top-k query and detection selection), the sampling-offset and
attention-weight linears of the deformable attention (the sampling locations and their softmax);
the deformable sampling ops compute and accumulate in float32 under autocast themselves
(:mod:`lite_detr.ops.ms_deform_attn`). On a CPU without those instructions bfloat16 matmuls are
emulated and slower than float32: the model runs in float32 and one line says so.

Example::

    model = instantiate(cfg.model).eval()
    with torch.no_grad(), bf16_inference(model):
        outputs = model(inputs)
"""

import contextlib
import functools
import logging
from typing import Iterator, Set

import torch
from detectron2.structures import Boxes, pairwise_iou
from torch import nn

__all__ = [
    "match_detections",
    "BF16_CPU_FLAGS",
    "FLOAT32_MODULES",
    "PRECISIONS",
    "bf16_inference",
    "cpu_bf16_support",
    "cpu_flags",
    "keep_float32_heads",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
# /proc/cpuinfo flags of native bfloat16 arithmetic (AVX-512 BF16 dot products, AMX tiles)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# attribute names of the submodules that stay float32: class/box heads of the encoder proposals
# and of the decoder layers, the sampling offsets and attention weights of deformable attention
FLOAT32_MODULES = frozenset(
    {
        "enc_class_embed",
        "enc_bbox_embed",
        "class_embed",
        "bbox_embed",
        "sampling_offsets",
        "attention_weights",
    }
)


def cpu_flags(path: str = "/proc/cpuinfo") -> Set[str]:
    """The CPU's feature flags as ``lscpu`` shows them (Linux; an empty set elsewhere)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def cpu_bf16_support() -> str | None:
    """The CPU flag that gives native bfloat16 arithmetic (e.g. ``"amx_bf16"``), or None."""
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return None
    flags = cpu_flags()
    found = [f for f in BF16_CPU_FLAGS if f in flags]
    return found[-1] if found else None


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """
    The precision that inference will run in: ``precision`` ("fp32" or "bf16"), or "fp32" with
    one logged line when bfloat16 is asked for on a CPU without bfloat16 instructions.
    ``device`` other than the CPU: "bf16" is not offered there (ValueError).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return "fp32"
    if not device.startswith("cpu"):
        raise ValueError(f"bf16 inference is a CPU path; on {device} use fp32")
    if cpu_bf16_support() is None:
        logger.warning(
            f"This CPU has no bfloat16 instructions ({' or '.join(BF16_CPU_FLAGS)}): "
            "running in fp32 instead of bf16."
        )
        return "fp32"
    return "bf16"


def _float32_forward(forward, *args, **kwargs):
    args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    with torch.autocast("cpu", enabled=False):
        return forward(*args, **kwargs)


def keep_float32_heads(model: nn.Module) -> int:
    """Make the submodules named in :data:`FLOAT32_MODULES` (and all inside them) run in float32
    under autocast, their inputs cast to float32; returns how many were changed. Idempotent."""
    changed = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] not in FLOAT32_MODULES:
            continue
        heads = module if isinstance(module, nn.ModuleList) else [module]
        for head in heads:
            if getattr(head, "_lite_detr_float32", False):
                continue
            head.forward = functools.partial(_float32_forward, head.forward)
            head._lite_detr_float32 = True
            changed += 1
    return changed


@contextlib.contextmanager
def bf16_inference(model: nn.Module, precision: str = "bf16") -> Iterator[str]:
    """
    Run ``model``'s inference inside this context in ``precision`` (see the module docstring);
    yields the precision it runs in ("fp32" where the CPU has no bfloat16 instructions, said
    once in the log). The model keeps its float32 weights; outputs are float32.
    """
    precision = resolve_precision(precision, str(next(model.parameters()).device))
    if precision == "fp32":
        yield precision
        return
    keep_float32_heads(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield precision


def match_detections(expected, actual, iou: float = 0.9, score: float = 0.05):
    """
    Pair ``expected``'s detections with ``actual``'s: same label, box IoU >= ``iou``, score
    within ``score``; each paired once, greedily by descending expected score.

    Args:
        expected, actual: (boxes (N, 4) XYXY, scores (N,), labels (N,)) each.

    Returns:
        matched (Tensor): (N,) bool, per expected detection; worst (float): the largest score
        difference over the pairs.
    """
    boxes, scores, labels = (torch.as_tensor(t) for t in expected)
    o_boxes, o_scores, o_labels = (torch.as_tensor(t) for t in actual)
    ious = pairwise_iou(Boxes(boxes.float()), Boxes(o_boxes.float()))
    ok = (labels[:, None] == o_labels[None].to(labels.dtype)) & (ious >= iou)
    ok &= (scores[:, None] - o_scores[None]).abs() <= score
    free = torch.ones(len(o_scores), dtype=torch.bool)
    matched = torch.zeros(len(scores), dtype=torch.bool)
    worst = 0.0
    for i in scores.argsort(descending=True).tolist():
        candidates = (ok[i] & free).nonzero().flatten()
        if len(candidates):
            j = candidates[(o_scores[candidates] - scores[i]).abs().argmin()]
            free[j] = False
            matched[i] = True
            worst = max(worst, float((o_scores[j] - scores[i]).abs()))
    return matched, worst
