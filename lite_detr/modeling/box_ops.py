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
    "generalized_box_iou_loss",
    "inverse_sigmoid",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def generalized_box_iou_loss(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """
    Sum over the M pairs of ``1 - GIoU(boxes1[i], boxes2[i])`` (Rezatofighi et al. 2019): the
    value of torchvision's ``generalized_box_iou_loss(..., reduction="sum")``, operation for
    operation, with the intersection clamped at zero instead of computed under a boolean mask
    (a data-dependent shape, which synchronises with a GPU in every loss call).

    Args:
        boxes1, boxes2 (Tensor): (M, 4) xyxy, float32 or float64.

    Returns:
        Tensor: () the summed loss; 0 (in the graph) for M = 0.
    """
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    inter = (torch.min(x2, x2g) - torch.max(x1, x1g)).clamp(min=0) * (
        torch.min(y2, y2g) - torch.max(y1, y1g)
    ).clamp(min=0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    enclosing = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (
        torch.max(y2, y2g) - torch.min(y1, y1g)
    )
    return (1 - (iou - (enclosing - union) / (enclosing + eps))).sum()


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit of ``x`` clamped to [eps, 1 - eps] so that boxes at the border stay finite."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
