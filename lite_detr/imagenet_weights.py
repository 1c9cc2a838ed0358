"""ImageNet classification checkpoints as backbone weights of our detectors.

The official Swin Transformer release (``swin_tiny_patch4_window7_224.pth`` and the other sizes)
stores ``{"model": state_dict}`` of the classification network. Our
:class:`~lite_detr.modeling.SwinTransformer` keeps its parameter names, so the backbone weights
map by the ``backbone.`` prefix; what the detector does not have is dropped: the classification
head, the final ``norm`` (the detector has one LayerNorm per output, ``norm1``..``norm3``, trained
from scratch) and the buffers that the model recomputes (the shifted-window ``attn_mask`` of the
classification resolution, ``relative_position_index``).
"""

import re
from typing import Dict, List, Mapping, Tuple

from torch import Tensor

__all__ = ["SWIN_DROPPED", "convert_swin_state_dict"]

# official key (full match) -> why the detector does not load it
SWIN_DROPPED: List[Tuple[re.Pattern, str]] = [
    (re.compile(r"head\.(weight|bias)"), "classification head"),
    (re.compile(r"norm\.(weight|bias)"), "final LayerNorm of the classifier"),
    (re.compile(r"layers\.\d+\.blocks\.\d+\.attn_mask"), "shifted-window mask (recomputed)"),
    (
        re.compile(r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_index"),
        "relative position index (recomputed)",
    ),
]


def convert_swin_state_dict(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor], prefix: str = "backbone."
) -> Tuple[Dict[str, Tensor], Dict[str, List[str]]]:
    """
    Map an official Swin classification state dict onto the backbone of one of our detectors.

    Args:
        state: the official state dict (``checkpoint["model"]``).
        expected: our detector's (or backbone's) state dict: the keys under ``prefix`` are the
            target; those that the file cannot have (``prefix + "norm{i}.*"``, the per-output
            LayerNorms) are left to the detector's initialisation.
        prefix: where the backbone sits in the detector.

    Returns:
        (converted state dict, ``{reason: [dropped official keys]}``).

    Raises:
        ValueError: naming the first missing, unknown or misshapen key (and how many there are).
    """
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    target = {
        k: v
        for k, v in expected.items()
        if k.startswith(prefix) and not re.fullmatch(re.escape(prefix) + r"norm\d+\..*", k)
    }
    converted: Dict[str, Tensor] = {}
    dropped: Dict[str, List[str]] = {reason: [] for _, reason in SWIN_DROPPED}
    unknown, misshapen = [], []
    for key, value in state.items():
        reason = next((r for pattern, r in SWIN_DROPPED if pattern.fullmatch(key)), None)
        if reason is not None:
            dropped[reason].append(key)
            continue
        ours = prefix + key
        if ours not in target:
            unknown.append(key)
        elif tuple(value.shape) != tuple(target[ours].shape):
            misshapen.append(
                f"{key} has shape {tuple(value.shape)}, the backbone's {ours} "
                f"{tuple(target[ours].shape)}"
            )
        else:
            converted[ours] = value
    missing = [
        k[len(prefix) :] for k in target if k not in converted and k[len(prefix) :] not in state
    ]
    for problems, what in [
        (missing, "is missing from the file"),
        (unknown, "is not a parameter of the config's Swin backbone"),
        (misshapen, ""),
    ]:
        if problems:
            more = f" ({len(problems) - 1} more such keys)" if len(problems) > 1 else ""
            first = problems[0] if not what else f"key {problems[0]!r} {what}"
            raise ValueError(
                f"{first}{more}: not a checkpoint of this Swin architecture (the configs use "
                "Swin-T: swin_tiny_patch4_window7_224.pth of the official Swin release)"
            )
    return converted, dropped
