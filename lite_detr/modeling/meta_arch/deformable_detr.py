"""Two-stage Deformable DETR (Zhu et al., ICLR 2021), and with Lite DETR's encoder
Lite-Deformable-DETR."""

from torch import Tensor

from ..query_selection import ProposalEmbedding
from .two_stage import TwoStageDeformableDETR

__all__ = ["DeformableDETR"]


class DeformableDETR(TwoStageDeformableDETR):
    """Deformable DETR: Deformable Transformers for End-to-End Object Detection (Zhu et al.,
    arXiv 2010.04159), two-stage with iterative box refinement ("++ two-stage", table 1).

    A :class:`TwoStageDeformableDETR` whose proposals are foreground proposals
    (``binary_proposals=True``: a K-way classifier ranked by channel 0, trained over all tokens
    with every target on channel 0, as the release) and whose queries both come
    from the selected proposals: :class:`~lite_detr.modeling.query_selection.ProposalEmbedding`
    (a linear layer + LayerNorm on their sine embedding, 2C -> 2C) split into the positional
    query (first C), the same in every decoder layer, and the content query (last C). The
    configuration (FFN 1024, dropout 0.1, 300 queries, class loss weight 2, top-100 detections,
    lr x0.1 on the sampling offsets) is in
    ``projects/lite_deformable_detr/configs/models/deformable_detr_r50.py``; Lite-Deformable-DETR
    is this class with the interleaved encoder (``lite_deformable_detr_r50.py`` there).
    """

    positional_queries = "input"
    xavier_query_modules = ("proposal_embed",)

    def __init__(self, *, binary_proposals: bool = True, **kwargs):
        """
        Args:
            binary_proposals: Deformable DETR's foreground-only proposals (True).
            kwargs: the arguments of :class:`TwoStageDeformableDETR`.
        """
        super().__init__(binary_proposals=binary_proposals, **kwargs)
        self.proposal_embed = ProposalEmbedding(self.embed_dim)

    def content_queries(self, ref_unsig: Tensor, memory: Tensor) -> Tensor:
        """The last C channels of the proposals' projection (:class:`ProposalEmbedding`).

        Args:
            ref_unsig: (N, Q, 4) selected proposal boxes, inverse-sigmoid, detached (the
                proposal heads learn from the encoder loss alone).
            memory: (N, S, C) encoder output (its dtype is the queries').

        Returns:
            (N, Q, C)
        """
        return self.proposal_embed(ref_unsig, memory.dtype)[1]

    def position_queries(self, ref_unsig: Tensor, memory: Tensor) -> Tensor:
        """The first C channels of the proposals' projection, for every decoder layer.

        Returns:
            (N, Q, C)
        """
        return self.proposal_embed(ref_unsig, memory.dtype)[0]
