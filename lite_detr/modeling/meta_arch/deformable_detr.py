"""Two-stage Deformable DETR (Zhu et al., ICLR 2021) and Lite-Deformable-DETR as detectron2 models.

Both are :class:`~lite_detr.modeling.meta_arch.dino.DINO` with two differences: no denoising
queries (a config choice) and content queries derived from the selected encoder proposals
instead of learned ones (Deformable DETR, section 4.2 "two-stage"), which this module overrides
(:meth:`DeformableDETR.content_queries`).
"""

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor, nn

from ..decoders import box_sine_embedding
from .dino import DINO

__all__ = ["DeformableDETR", "LiteDeformableDETR"]


@META_ARCH_REGISTRY.register()
class DeformableDETR(DINO):
    """Deformable DETR: Deformable Transformers for End-to-End Object Detection (Zhu et al.,
    arXiv 2010.04159), two-stage with iterative box refinement.

    backbone -> multi-scale neck -> encoder (the 6-layer deformable baseline, or Lite DETR's
    interleaved encoder) -> the top-``num_queries`` encoder proposals give both the reference
    boxes and, through a linear layer on their sine embedding, the content queries -> deformable
    decoder with iterative box refinement (no look-forward-twice) -> focal loss, Hungarian
    matching, auxiliary losses on every decoder layer and on the proposals.

    The decoder builds its positional queries from the current reference boxes (DAB/DINO style,
    shared with :class:`DINO`) where the original splits them off the proposal embedding; the
    configuration (FFN 1024, 300 queries, no denoising, class loss weight 2) is in
    ``projects/lite_deformable_detr/configs/models/deformable_detr_r50.py``.
    """

    # content queries come from the proposals: the model (and its checkpoints) has no tgt_embed
    learned_content_queries = False

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_queries: int = 300,
        select_box_nums_for_evaluation: int = 100,
        **kwargs,
    ):
        """
        Args:
            embed_dim: C, width of the neck, encoder and decoder.
            num_queries: Q, encoder proposals selected as decoder queries (300).
            select_box_nums_for_evaluation: detections kept per image at test time (100).
            kwargs: the other arguments of :class:`DINO` (backbone, neck, position_embedding,
                encoder, decoder, criterion, num_classes, num_feature_levels, denoising,
                pixel_mean, pixel_std, size_divisibility); ``denoising`` is normally None.
        """
        super().__init__(
            embed_dim=embed_dim,
            num_queries=num_queries,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation,
            **kwargs,
        )
        # content queries from the proposals' box embedding (Deformable DETR's pos_trans)
        self.content_proj = nn.Linear(2 * embed_dim, embed_dim)
        self.content_norm = nn.LayerNorm(embed_dim)
        nn.init.xavier_uniform_(self.content_proj.weight)
        nn.init.zeros_(self.content_proj.bias)

    def content_queries(self, ref_unsig: Tensor, memory: Tensor) -> Tensor:
        """Two-stage content queries: a linear layer + LayerNorm on the sine embedding of each
        selected proposal box.

        Args:
            ref_unsig: (N, Q, 4) reference boxes of the queries, inverse-sigmoid, detached (the
                proposal heads learn from the encoder loss alone).
            memory: (N, S, C) encoder output (its dtype is the queries').

        Returns:
            (N, Q, C)
        """
        emb = box_sine_embedding(ref_unsig.sigmoid(), self.content_proj.out_features // 2)
        return self.content_norm(self.content_proj(emb.to(memory.dtype)))


@META_ARCH_REGISTRY.register()
class LiteDeformableDETR(DeformableDETR):
    """Lite-Deformable-DETR (Li et al., "Lite DETR", CVPR 2023): Deformable DETR whose encoder is
    the interleaved encoder with key-aware deformable attention. Same code as
    :class:`DeformableDETR`; the encoder and the attention type come from the config."""
