"""Bipartite (Hungarian) matching between predictions and ground truth, as in DETR / DINO."""

from typing import Dict, List, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets minimising a weighted matching cost.

    The cost is ``cost_class * C_focal + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU)``, where
    ``C_focal`` is the focal-loss-style classification cost of Deformable DETR / DINO (positive
    minus negative focal term of the target class). The assignment is solved per image with
    ``scipy.optimize.linear_sum_assignment``; unmatched predictions are "no object".

    Issue-7-style one-to-many matching (H-DETR) reuses this class on targets repeated k times.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        """
        Args:
            cost_class, cost_bbox, cost_giou: weights of the three cost terms (DINO: 2, 5, 2).
            alpha, gamma: focal parameters of the classification cost.
        """
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0; at least one must be non-zero.")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.alpha = alpha
        self.gamma = gamma

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor):
        """Matching cost of one image.

        Args:
            logits (Tensor): (Q, K) classification logits.
            boxes (Tensor): (Q, 4) predicted boxes, normalised cxcywh.
            tgt_labels (Tensor): (T,) int64 class ids in [0, K).
            tgt_boxes (Tensor): (T, 4) target boxes, normalised cxcywh.

        Returns:
            Tensor: (Q, T) cost, float32.
        """
        prob = logits.float().sigmoid()
        boxes = boxes.float()
        tgt_boxes = tgt_boxes.float()
        neg = (1 - self.alpha) * prob.pow(self.gamma) * (-(1 - prob + 1e-8).log())
        pos = self.alpha * (1 - prob).pow(self.gamma) * (-(prob + 1e-8).log())
        cost_class = pos[:, tgt_labels] - neg[:, tgt_labels]
        cost_bbox = torch.cdist(boxes, tgt_boxes, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
        return (
            self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        )

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]
    ) -> List[Tuple[Tensor, Tensor]]:
        """
        Args:
            outputs: dict with "pred_logits" (N, Q, K) and "pred_boxes" (N, Q, 4) normalised cxcywh.
            targets: N dicts with "labels" (T_i,) int64 and "boxes" (T_i, 4) normalised cxcywh.

        Returns:
            N tuples ``(pred_idx, tgt_idx)`` of int64 CPU tensors of equal length min(Q, T_i).
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if logits.dim() != 3 or boxes.shape[:2] != logits.shape[:2] or boxes.shape[-1] != 4:
            raise ValueError(
                "HungarianMatcher expects pred_logits (N, Q, K) and pred_boxes (N, Q, 4), got "
                f"{tuple(logits.shape)} and {tuple(boxes.shape)}"
            )
        if len(targets) != logits.shape[0]:
            raise ValueError(
                f"HungarianMatcher: {len(targets)} targets for a batch of {logits.shape[0]}"
            )
        indices = []
        for i, tgt in enumerate(targets):
            if len(tgt["labels"]) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost = self.cost_matrix(logits[i], boxes[i], tgt["labels"], tgt["boxes"])
            row, col = _assign(cost)
            indices.append(
                (torch.as_tensor(row, dtype=torch.int64), torch.as_tensor(col, dtype=torch.int64))
            )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, "
            f"alpha={self.alpha}, gamma={self.gamma}"
        )


def _assign(cost: Tensor):
    """The optimal assignment of a (Q, T) cost matrix, solved by scipy on the host: the one copy
    of device data to the host in a training step (checked there, not on the device, where a
    check would be a second synchronisation)."""
    cost = cost.cpu()
    if not torch.isfinite(cost).all():
        raise FloatingPointError("HungarianMatcher: the matching cost has NaN/inf entries")
    return linear_sum_assignment(cost.numpy())
