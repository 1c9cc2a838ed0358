"""Set-prediction losses of Deformable DETR / DINO: focal classification, L1 and GIoU box losses."""

from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou_loss

__all__ = ["SetCriterion", "dn_match_indices"]

_BASE_LOSSES = ("loss_class", "loss_bbox", "loss_giou")


def dn_match_indices(
    targets: List[Dict[str, Tensor]], num_groups: int, group_size: int
) -> List[Tuple[Tensor, Tensor]]:
    """Fixed assignment of the positive denoising queries to the ground truth they were made from.

    Layout (see :mod:`lite_detr.modeling.denoising`): group ``g`` occupies dn queries
    ``[g * group_size, (g + 1) * group_size)``, its first half the positives in target order.

    Returns:
        N tuples ``(query_idx, tgt_idx)``, each of length ``num_groups * T_i``.
    """
    indices = []
    for tgt in targets:
        num = len(tgt["labels"])
        t = torch.arange(num, dtype=torch.int64)
        query_idx = (
            torch.arange(num_groups, dtype=torch.int64)[:, None] * group_size + t
        ).flatten()
        indices.append((query_idx, t.repeat(num_groups)))
    return indices


class SetCriterion(nn.Module):
    """Losses of a DETR-style detector given its raw outputs and the ground truth.

    Predictions are matched one-to-one to the targets (``matcher``), then a sigmoid focal loss is
    computed over all queries and classes (unmatched queries have an all-zero target) and L1 and
    GIoU losses over matched pairs, each divided by the number of target boxes in the global batch.
    The same losses are computed for every auxiliary decoder layer (suffix ``_{i}``), for the
    encoder proposals of two-stage detectors (``_enc``) and for DINO's denoising queries
    (``_dn``, ``_dn_{i}``; fixed assignment, no matching).

    Returned losses are already multiplied by ``weight_dict[base_name]``, so a trainer sums them.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        """
        Args:
            num_classes: number of foreground classes K (no background logit).
            matcher: callable ``(outputs, targets) -> [(pred_idx, tgt_idx)] * N``,
                e.g. :class:`HungarianMatcher`.
            weight_dict: weights of the base losses "loss_class", "loss_bbox", "loss_giou";
                default DINO's 1 / 5 / 2. Suffixed losses use the weight of their base loss.
            focal_alpha, focal_gamma: sigmoid focal loss parameters.
        """
        super().__init__()
        weight_dict = dict(weight_dict or {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})
        unknown = set(weight_dict) - set(_BASE_LOSSES)
        missing = set(_BASE_LOSSES) - set(weight_dict)
        if unknown or missing:
            raise ValueError(
                f"SetCriterion.weight_dict must have exactly the keys {list(_BASE_LOSSES)}; "
                f"unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def loss_labels(self, outputs, targets, indices, num_boxes) -> Dict[str, Tensor]:
        logits = outputs["pred_logits"]  # (N, Q, K)
        batch_idx, src_idx = _permutation_idx(indices, logits.device)
        target = torch.zeros_like(logits)
        if len(batch_idx):
            tgt_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
            target[batch_idx, src_idx, tgt_labels.to(logits.device)] = 1.0
        loss = sigmoid_focal_loss(
            logits.float(), target.float(), self.focal_alpha, self.focal_gamma, reduction="sum"
        )
        return {"loss_class": loss / num_boxes}

    def loss_boxes(self, outputs, targets, indices, num_boxes) -> Dict[str, Tensor]:
        batch_idx, src_idx = _permutation_idx(indices, outputs["pred_boxes"].device)
        src = outputs["pred_boxes"][batch_idx, src_idx].float()  # (M, 4); M = 0 keeps the graph
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)
        loss_bbox = torch.nn.functional.l1_loss(src, tgt, reduction="sum")
        loss_giou = generalized_box_iou_loss(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
        return {"loss_bbox": loss_bbox / num_boxes, "loss_giou": loss_giou / num_boxes}

    def get_losses(self, outputs, targets, indices, num_boxes) -> Dict[str, Tensor]:
        """Unweighted base losses of one set of predictions for a given assignment."""
        losses = self.loss_labels(outputs, targets, indices, num_boxes)
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return losses

    def _weighted(self, losses: Dict[str, Tensor], suffix: str) -> Dict[str, Tensor]:
        return {k + suffix: v * self.weight_dict[k] for k, v in losses.items()}

    def num_boxes(self, targets: Sequence[Dict[str, Tensor]], device) -> float:
        """Average number of target boxes per worker (all-reduced), at least 1."""
        num = float(sum(len(t["labels"]) for t in targets))
        world_size = comm.get_world_size()
        if world_size > 1:  # the all-reduce needs a device tensor and reads it back: one sync
            total = torch.as_tensor([num], device=device)
            dist.all_reduce(total)
            num = total.item()
        return max(num / world_size, 1.0)

    def forward(
        self,
        outputs: Dict,
        targets: List[Dict[str, Tensor]],
        dn_meta: Dict[str, int] | None = None,
        interm_targets: List[Dict[str, Tensor]] | None = None,
    ) -> Dict[str, Tensor]:
        """
        Args:
            outputs: "pred_logits" (N, Q, K), "pred_boxes" (N, Q, 4) normalised cxcywh of the last
                decoder layer; optional "aux_outputs" (list of such dicts, earlier layers),
                "interm_outputs" (dict, encoder proposals) and "dn_outputs" (dict with its own
                "aux_outputs", the denoising queries; requires ``dn_meta``).
            targets: N dicts with "labels" (T_i,) int64 and "boxes" (T_i, 4) normalised cxcywh.
            dn_meta: "num_groups" and "group_size" of the denoising queries.
            interm_targets: targets of the "interm_outputs" (default ``targets``); Deformable
                DETR's binary proposals get the targets with every label 0 (foreground).

        Returns:
            dict of weighted scalar losses.
        """
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        losses = {}
        indices = self.matcher(outputs, targets)
        losses.update(self._weighted(self.get_losses(outputs, targets, indices, num_boxes), ""))
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            indices = self.matcher(aux, targets)
            losses.update(
                self._weighted(self.get_losses(aux, targets, indices, num_boxes), f"_{i}")
            )
        if "interm_outputs" in outputs:
            interm = outputs["interm_outputs"]
            interm_targets = targets if interm_targets is None else interm_targets
            indices = self.matcher(interm, interm_targets)
            losses.update(
                self._weighted(self.get_losses(interm, interm_targets, indices, num_boxes), "_enc")
            )
        if "dn_outputs" in outputs:
            if dn_meta is None:
                raise ValueError("SetCriterion: outputs have 'dn_outputs' but no dn_meta was given")
            dn = outputs["dn_outputs"]
            indices = dn_match_indices(targets, dn_meta["num_groups"], dn_meta["group_size"])
            dn_boxes = num_boxes * dn_meta["num_groups"]
            losses.update(self._weighted(self.get_losses(dn, targets, indices, dn_boxes), "_dn"))
            for i, aux in enumerate(dn.get("aux_outputs", [])):
                aux_losses = self.get_losses(aux, targets, indices, dn_boxes)
                losses.update(self._weighted(aux_losses, f"_dn_{i}"))
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, weight_dict={self.weight_dict}, "
            f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}"
        )


def _permutation_idx(indices, device) -> Tuple[Tensor, Tensor]:
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx.to(device), src_idx.to(device)
