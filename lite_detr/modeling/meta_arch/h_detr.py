"""H-DETR (Jia et al., CVPR 2023) and Lite-H-DETR: Deformable DETR with hybrid matching."""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor

from .deformable_detr import DeformableDETR

__all__ = ["HDETR", "LiteHDETR", "build_hybrid_attn_mask", "repeat_targets"]


def build_hybrid_attn_mask(num_one2one: int, num_one2many: int, device=None) -> Tensor:
    """Decoder self-attention mask that keeps the two query groups apart.

    Returns:
        Tensor: (Q1 + Q2, Q1 + Q2) bool, True = blocked; queries attend only within their group,
        so the one-to-one predictions do not depend on the one-to-many queries (which are dropped
        at inference).
    """
    total = num_one2one + num_one2many
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[num_one2one:, :num_one2one] = True
    mask[:num_one2one, num_one2one:] = True
    return mask


def repeat_targets(targets: List[Dict[str, Tensor]], k: int) -> List[Dict[str, Tensor]]:
    """Ground truth repeated ``k`` times, the targets of the one-to-many matching.

    Args:
        targets: N dicts with "labels" (T_i,) and "boxes" (T_i, 4).

    Returns:
        N dicts with "labels" (k * T_i,) and "boxes" (k * T_i, 4).
    """
    return [{"labels": t["labels"].repeat(k), "boxes": t["boxes"].repeat(k, 1)} for t in targets]


@META_ARCH_REGISTRY.register()
class HDETR(DeformableDETR):
    """DETRs with Hybrid Matching (Jia et al., arXiv 2207.13080) on two-stage Deformable DETR.

    In training the top ``Q1 + Q2`` encoder proposals become decoder queries: the first ``Q1``
    (the one-to-one group, exactly the queries of inference) are matched one-to-one to the ground
    truth; the other ``Q2`` (the one-to-many group) are matched one-to-one to the ground truth
    repeated ``k`` times, i.e. each object gets up to ``k`` positive queries, which trains the
    shared encoder/decoder with denser supervision. Decoder self-attention is masked between the
    groups. At inference only the ``Q1`` one-to-one queries are selected and decoded: the model is
    then exactly a :class:`DeformableDETR` (H-DETR, section 3.2.1).

    ``num_queries`` is the number of queries that run: ``Q1 + Q2`` in training, ``Q1`` otherwise;
    assigning it (as the config's ``num_queries``) sets ``Q1``.
    """

    @configurable
    def __init__(
        self,
        *,
        num_queries_one2many: int = 1500,
        one2many_repeats: int = 6,
        one2many_loss_weight: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            num_queries_one2many: Q2, extra queries of the one-to-many group (1500).
            one2many_repeats: k, times the ground truth is repeated for their matching (6).
            one2many_loss_weight: lambda, weight of the one-to-many losses (1).
            kwargs: arguments of :class:`DeformableDETR`; ``num_queries`` is Q1 (300).
        """
        if kwargs.get("denoising") is not None:
            raise ValueError("HDETR: denoising queries are not supported; set model.denoising=None")
        if not isinstance(num_queries_one2many, int) or num_queries_one2many < 0:
            raise ValueError(
                f"HDETR: num_queries_one2many must be an int >= 0, got {num_queries_one2many!r}"
            )
        if not isinstance(one2many_repeats, int) or one2many_repeats < 1:
            raise ValueError(
                f"HDETR: one2many_repeats must be an int >= 1, got {one2many_repeats!r}"
            )
        super().__init__(**kwargs)
        self.num_queries_one2many = num_queries_one2many
        self.one2many_repeats = one2many_repeats
        self.one2many_loss_weight = one2many_loss_weight

    @property
    def num_queries(self) -> int:
        """Queries selected and decoded: Q1 + Q2 in training, Q1 at inference."""
        return self.num_queries_one2one + (self.num_queries_one2many if self.training else 0)

    @num_queries.setter
    def num_queries(self, value: int) -> None:
        self.num_queries_one2one = value

    def forward_training(
        self,
        enc: Dict[str, Tensor],
        content: Tensor,
        ref_unsig: Tensor,
        interm: Dict[str, Tensor],
        targets: List[Dict],
    ) -> Dict[str, Tensor]:
        """:meth:`DINO.forward_training` with hybrid matching: the losses of the one-to-many
        group are added with the suffix ``_one2many`` (e.g. ``loss_class_one2many``,
        ``loss_bbox_0_one2many``).

        Args:
            content, ref_unsig, interm: the top-(Q1 + Q2) proposals in score order, so the first
                Q1 are the queries of inference; other arguments as :meth:`DINO.forward_training`.
        """
        if self.num_queries_one2many == 0:
            return super().forward_training(enc, content, ref_unsig, interm, targets)
        q1 = self.num_queries_one2one
        attn_mask = build_hybrid_attn_mask(q1, self.num_queries_one2many, self.device)
        logits, boxes = self.decode(enc, content, ref_unsig, attn_mask)
        one2one = self.to_outputs(logits[:, :, :q1], boxes[:, :, :q1])
        # the encoder loss sees the same top-Q1 proposals as without hybrid matching
        one2one["interm_outputs"] = {k: v[:, :q1] for k, v in interm.items()}
        losses = self.criterion(one2one, targets)

        one2many = self.to_outputs(logits[:, :, q1:], boxes[:, :, q1:])
        many = self.criterion(one2many, repeat_targets(targets, self.one2many_repeats))
        losses.update({k + "_one2many": v * self.one2many_loss_weight for k, v in many.items()})
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_queries_one2one={self.num_queries_one2one}, "
            f"num_queries_one2many={self.num_queries_one2many}, "
            f"one2many_repeats={self.one2many_repeats}, "
            f"one2many_loss_weight={self.one2many_loss_weight}"
        )


@META_ARCH_REGISTRY.register()
class LiteHDETR(HDETR):
    """Lite-H-DETR: H-DETR whose encoder is Lite DETR's interleaved encoder with key-aware
    deformable attention. Same code as :class:`HDETR`; the encoder comes from the config."""
