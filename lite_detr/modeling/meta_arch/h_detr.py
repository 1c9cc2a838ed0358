"""H-DETR (Jia et al., CVPR 2023): two-stage Deformable DETR with hybrid matching, and with Lite
DETR's encoder Lite-H-DETR."""

from typing import Dict, List

import torch
from torch import Tensor, nn

from ..query_selection import ProposalEmbedding
from .two_stage import TwoStageDeformableDETR

__all__ = ["HDETR", "build_hybrid_attn_mask", "repeat_targets"]


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


class HDETR(TwoStageDeformableDETR):
    """DETRs with Hybrid Matching (Jia et al., arXiv 2207.13080) on two-stage Deformable DETR,
    as its R50 36-epoch results: mixed query selection and look-forward-twice included.

    A :class:`TwoStageDeformableDETR` with Deformable DETR's foreground proposals
    (``binary_proposals``) and proposal positional queries
    (:class:`~lite_detr.modeling.query_selection.ProposalEmbedding`, its first C channels),
    learned content queries (mixed query selection, ``tgt_embed``, N(0, 1) init), and what H-DETR
    adds, the one-to-many branch: in training the top ``Q1 + Q2`` proposals become queries; the
    first ``Q1`` (the one-to-one group, exactly the queries of inference) are matched one-to-one
    to the ground truth, the other ``Q2`` (the one-to-many group) one-to-one to the ground truth
    repeated ``k`` times, i.e. each object gets up to ``k`` positive queries. Decoder
    self-attention is masked between the groups. At inference only the ``Q1`` one-to-one queries
    are selected and decoded (section 3.2.1).

    Lite-H-DETR is this class with the interleaved encoder, a config choice
    (``projects/lite_h_detr/configs/models/lite_h_detr_r50.py``).
    """

    positional_queries = "input"
    # tgt_embed is not one of them: see __init__
    xavier_query_modules = ("proposal_embed",)

    def __init__(
        self,
        *,
        num_queries_one2many: int = 1500,
        one2many_repeats: int = 6,
        one2many_loss_weight: float = 1.0,
        binary_proposals: bool = True,
        **kwargs,
    ):
        """
        Args:
            num_queries_one2many: Q2, extra queries of the one-to-many group (1500).
            one2many_repeats: k, times the ground truth is repeated for their matching (6).
            one2many_loss_weight: lambda, weight of the one-to-many losses (1).
            binary_proposals: Deformable DETR's foreground-only proposals (True).
            kwargs: arguments of :class:`TwoStageDeformableDETR`; ``num_queries`` is Q1 (300).
        """
        if not isinstance(num_queries_one2many, int) or num_queries_one2many < 0:
            raise ValueError(
                f"HDETR: num_queries_one2many must be an int >= 0, got {num_queries_one2many!r}"
            )
        if not isinstance(one2many_repeats, int) or one2many_repeats < 1:
            raise ValueError(
                f"HDETR: one2many_repeats must be an int >= 1, got {one2many_repeats!r}"
            )
        super().__init__(binary_proposals=binary_proposals, **kwargs)
        self.num_queries_one2many = num_queries_one2many
        self.one2many_repeats = one2many_repeats
        self.one2many_loss_weight = one2many_loss_weight
        self.proposal_embed = ProposalEmbedding(self.embed_dim)
        # one learned content query per query of both groups; inference uses the first Q1. The
        # release keeps them outside its transformer, so they keep nn.Embedding's N(0, 1) init:
        # not in xavier_query_modules (Xavier would make 1800 x 256 of them ~30x smaller)
        self.tgt_embed = nn.Embedding(self.num_queries + num_queries_one2many, self.embed_dim)

    def content_queries(self, ref_unsig: Tensor, memory: Tensor) -> Tensor:
        """Learned content queries: the first Q rows of ``tgt_embed`` (Q1 at inference, Q1 + Q2
        in training).

        Args:
            ref_unsig: (N, Q, 4) selected proposal boxes, inverse-sigmoid, detached.
            memory: (N, S, C) encoder output.

        Returns:
            (N, Q, C)
        """
        content = self.tgt_embed.weight[: ref_unsig.shape[1]]
        return content[None].expand(memory.shape[0], -1, -1)

    def position_queries(self, ref_unsig: Tensor, memory: Tensor) -> Tensor:
        """Deformable DETR's positional queries: the first C channels of the proposals'
        projection (:class:`ProposalEmbedding`), for every decoder layer.

        Returns:
            (N, Q, C)
        """
        return self.proposal_embed(ref_unsig, memory.dtype)[0]

    def forward_training(self, enc: Dict[str, Tensor], targets: List[Dict]) -> Dict[str, Tensor]:
        """Hybrid matching: the losses of the one-to-one group as
        :meth:`TwoStageDeformableDETR.forward_training`, plus those of the one-to-many group
        with the suffix ``_one2many`` (e.g. ``loss_class_one2many``, ``loss_bbox_0_one2many``).
        """
        if self.num_queries_one2many == 0:
            return super().forward_training(enc, targets)
        q1 = self.num_queries
        # the top-(Q1 + Q2) proposals in score order: the first Q1 are the queries of inference
        content, ref_unsig, interm = self.select_queries(enc, q1 + self.num_queries_one2many)
        attn_mask = build_hybrid_attn_mask(q1, self.num_queries_one2many, self.device)
        logits, boxes = self.decode(enc, content, ref_unsig, attn_mask)
        one2one = self.to_outputs(logits[:, :, :q1], boxes[:, :, :q1])
        one2one["interm_outputs"] = interm  # every token's proposal (binary_proposals)
        if not self.binary_proposals:
            one2one["interm_outputs"] = {k: v[:, :q1] for k, v in interm.items()}
        losses = self.criterion(one2one, targets, interm_targets=self.proposal_targets(targets))

        one2many = self.to_outputs(logits[:, :, q1:], boxes[:, :, q1:])
        many = self.criterion(one2many, repeat_targets(targets, self.one2many_repeats))
        losses.update({k + "_one2many": v * self.one2many_loss_weight for k, v in many.items()})
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_queries_one2one={self.num_queries}, "
            f"num_queries_one2many={self.num_queries_one2many}, "
            f"one2many_repeats={self.one2many_repeats}, "
            f"one2many_loss_weight={self.one2many_loss_weight}"
        )
