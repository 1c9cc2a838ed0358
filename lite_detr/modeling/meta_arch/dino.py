"""DINO (Zhang et al., ICLR 2023), and with Lite DETR's encoder Lite-DINO (Li et al., CVPR 2023)."""

from typing import Dict, List

import torch
from torch import Tensor, nn

from ..variant_tag import VariantTag  # re-exported: its import path before modeling/variant_tag.py
from .two_stage import TwoStageDeformableDETR

__all__ = ["DINO", "VariantTag"]


class DINO(TwoStageDeformableDETR):
    """DINO: DETR with Improved DeNoising Anchor Boxes (Zhang et al., arXiv 2203.03605).

    A :class:`TwoStageDeformableDETR` with what DINO adds: mixed query selection (the top-k
    class-aware proposals give the reference boxes, the content queries are learned,
    ``tgt_embed``; section 3.4), contrastive denoising queries in training (CDN, section 3.3)
    and look-forward-twice (section 3.5, the decoder's ``look_forward_twice``). The decoder makes
    the positional queries from each layer's reference boxes.

    Lite-DINO is this class with the interleaved encoder and key-aware attention in encoder and
    decoder: a config choice (``projects/lite_dino/configs/models/lite_dino_r50.py``).
    """

    positional_queries = "reference_boxes"
    # the release draws tgt_embed from a normal first; its Xavier pass overrides that
    xavier_query_modules = ("tgt_embed",)

    def __init__(self, *, denoising: nn.Module | None = None, num_queries: int = 900, **kwargs):
        """
        Args:
            denoising: :class:`~lite_detr.modeling.denoising.ContrastiveDenoising`, or None for
                no denoising queries.
            num_queries: matching queries, i.e. encoder proposals selected (900).
            kwargs: the arguments of :class:`TwoStageDeformableDETR` (backbone, neck,
                position_embedding, encoder, decoder, criterion, num_classes, embed_dim,
                num_feature_levels, binary_proposals (False: DINO's class-aware proposals),
                select_box_nums_for_evaluation, pixel_mean, pixel_std, size_divisibility).
        """
        super().__init__(num_queries=num_queries, **kwargs)
        num_classes = kwargs["num_classes"]
        if getattr(denoising, "num_classes", num_classes) != num_classes:
            raise ValueError(
                f"{type(self).__name__}: num_classes={num_classes} but "
                f"denoising.num_classes={denoising.num_classes}"
            )
        self.denoising = denoising
        # mixed query selection: one learned content query per selected proposal
        self.tgt_embed = nn.Embedding(num_queries, self.embed_dim)

    def content_queries(self, ref_unsig: Tensor, memory: Tensor) -> Tensor:
        """Learned content queries, the same for every image (the decoder makes the positional
        ones from the reference boxes).

        Args:
            ref_unsig: (N, Q, 4) reference boxes of the queries, inverse-sigmoid, detached.
            memory: (N, S, C) encoder output.

        Returns:
            (N, Q, C)
        """
        return self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)

    def forward_training(self, enc: Dict[str, Tensor], targets: List[Dict]) -> Dict[str, Tensor]:
        """:meth:`TwoStageDeformableDETR.forward_training` with the denoising queries prepended
        to the matching ones (losses suffixed "_dn", "_dn_{i}")."""
        content, ref_unsig, interm = self.select_queries(enc)
        dn = None
        attn_mask = None
        if self.denoising is not None:
            dn = self.denoising(targets, self.num_queries)
            if dn is not None:
                dn_content, dn_ref, attn_mask, dn_meta = dn
                content = torch.cat([dn_content.to(content.dtype), content], 1)
                ref_unsig = torch.cat([dn_ref.to(ref_unsig.dtype), ref_unsig], 1)

        logits, boxes = self.decode(enc, content, ref_unsig, attn_mask=attn_mask)
        pad = dn[3]["pad_size"] if dn is not None else 0
        outputs = self.to_outputs(logits[:, :, pad:], boxes[:, :, pad:])
        outputs["interm_outputs"] = interm
        if dn is not None:
            outputs["dn_outputs"] = self.to_outputs(logits[:, :, :pad], boxes[:, :, :pad])
        losses = self.criterion(
            outputs,
            targets,
            dn[3] if dn is not None else None,
            interm_targets=self.proposal_targets(targets),
        )
        if self.denoising is not None and dn is None:
            # no ground truth in the batch: same loss keys, and every parameter still gets a
            # gradient (DDP without find_unused_parameters)
            zero = sum(p.sum() for p in self.denoising.parameters()) * 0.0
            suffixes = ["_dn"] + [f"_dn_{i}" for i in range(logits.shape[0] - 1)]
            for base in self.criterion.weight_dict:
                losses.update({base + s: zero for s in suffixes})
        return losses
