"""Box helpers shared by the DETR-family detectors.

Boxes are normalised to [0, 1] of the (unpadded) image unless stated otherwise; ``cxcywh`` is the
format the heads predict, ``xyxy`` the one detectron2 and the IoU functions use.
"""

import torch
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "inverse_sigmoid",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit of ``x`` clamped to [eps, 1 - eps] so that boxes at the border stay finite."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
