"""The contracts between a two-stage deformable DETR and its encoder and decoder, as code.

:class:`~lite_detr.modeling.meta_arch.TwoStageDeformableDETR` checks both when it is built
(:func:`check_encoder`, :func:`check_decoder`), so a new encoder or decoder that misses a piece
fails at construction with a message naming it, not deep inside a forward. The protocols are
structural: an encoder need not inherit from anything, it needs the attributes and the call below.
"""

import inspect
from typing import Protocol, Tuple

from torch import Tensor, nn

__all__ = ["MultiScaleEncoder", "QueryDecoder", "check_decoder", "check_encoder"]


class MultiScaleEncoder(Protocol):
    """A transformer encoder over flattened multi-scale features (``DeformableEncoder``,
    ``InterleavedEncoder``).

    Attributes:
        embed_dim (int): C, channels of its input and output tokens; must equal the detector's.
        num_levels (int): L, feature levels it expects; must equal ``num_feature_levels``.
        attention (str): its attention type, a key of :data:`lite_detr.layers.ATTENTION_TYPES`.
        variant (str): architecture tag stored in checkpoints (e.g. "H3L1-(2+1)x3/key_aware"), so
            that weights of another variant with the same parameter shapes are refused.
    """

    embed_dim: int
    num_levels: int
    attention: str
    variant: str

    def __call__(
        self,
        query: Tensor,
        query_pos: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        key_padding_mask: Tensor | None = None,
        spatial_sizes=None,
    ) -> Tensor:
        """Called positionally by the detector, ``spatial_sizes`` by keyword.

        Args:
            query (Tensor): (N, S, C) flattened features, levels fine-to-coarse.
            query_pos (Tensor): (N, S, C) position + level embedding.
            spatial_shapes (Tensor): (L, 2) int64 (H_l, W_l).
            level_start_index (Tensor): (L,) int64.
            valid_ratios (Tensor): (N, L, 2) valid (w, h) fraction of each level.
            key_padding_mask (Tensor or None): (N, S) bool, True = padding.
            spatial_sizes: the L (H_l, W_l) pairs as Python ints.

        Returns:
            Tensor: (N, S, C) memory, tokens in the input order.
        """


class QueryDecoder(Protocol):
    """A DETR decoder with iterative box refinement and its prediction heads
    (``DeformableDecoder``).

    Attributes:
        embed_dim (int): C, must equal the detector's.
        num_classes (int): K logits per query; must equal the detector's.
        num_ranking_only_classes (int, optional): U more logits after the K (ranking-only class
            rows, see ``TwoStageDeformableDETR``); must equal the detector's; absent means 0.
        cross_attention (str): its attention type (a key of
            :data:`lite_detr.layers.ATTENTION_TYPES`), stored in checkpoints' variant tag.
        positional_queries (str): "reference_boxes" (the decoder makes its positional queries
            from each layer's boxes) or "input" (the detector passes ``query_pos``).
        class_embed, bbox_embed (nn.ModuleList): the per-layer heads; the detector leaves them
            out of its Xavier initialisation of the transformer.
    """

    embed_dim: int
    num_classes: int
    cross_attention: str
    positional_queries: str
    class_embed: nn.ModuleList
    bbox_embed: nn.ModuleList

    def __call__(
        self,
        query: Tensor,
        reference_boxes_unsig: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        memory_padding_mask: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> Tuple[Tensor, Tensor]:
        """Called positionally by the detector, ``query_pos`` by keyword.

        Args:
            query (Tensor): (N, Q, C) content queries.
            reference_boxes_unsig (Tensor): (N, Q, 4) inverse-sigmoid cxcywh boxes (constants).
            memory (Tensor): (N, S, C) encoder output; the rest as the encoder's arguments.
            self_attn_mask (Tensor or None): (Q, Q) bool, True = blocked.
            query_pos (Tensor or None): (N, Q, C), with ``positional_queries="input"``.

        Returns:
            logits (num_layers, N, Q, K + U) and boxes (num_layers, N, Q, 4) normalised cxcywh.
        """


_ENCODER_PIECES = {
    "embed_dim": (int, "the token width C"),
    "num_levels": (int, "the number of feature levels L"),
    "attention": (str, "its attention type, a key of lite_detr.layers.ATTENTION_TYPES"),
    "variant": (str, "the architecture tag stored in checkpoints"),
}
_ENCODER_ARGS = ("query", "query_pos", "spatial_shapes", "level_start_index", "valid_ratios")
_DECODER_PIECES = {
    "embed_dim": (int, "the query width C"),
    "num_classes": (int, "the number of logits K"),
    "cross_attention": (str, "its attention type, a key of lite_detr.layers.ATTENTION_TYPES"),
    "positional_queries": (str, '"reference_boxes" or "input"'),
    "class_embed": (nn.ModuleList, "the per-layer classification heads"),
    "bbox_embed": (nn.ModuleList, "the per-layer box heads"),
}
_DECODER_ARGS = (
    "query",
    "reference_boxes_unsig",
    "memory",
    "spatial_shapes",
    "level_start_index",
    "valid_ratios",
    "memory_padding_mask",
    "self_attn_mask",
)


def _check(owner: str, role: str, module, protocol, pieces, positional, keywords) -> None:
    name = type(module).__name__
    where = f"{owner}: the {role} {name} does not follow {protocol.__module__}.{protocol.__name__}"
    if not isinstance(module, nn.Module):
        raise TypeError(f"{where}: it must be an nn.Module")
    for attr, (kind, what) in pieces.items():
        if not hasattr(module, attr):
            raise TypeError(f"{where}: it has no `{attr}` ({what})")
        value = getattr(module, attr)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"{where}: `{attr}` ({what}) must be a {kind.__name__}, got {value!r}")
    try:
        inspect.signature(module.forward).bind(*positional, **dict.fromkeys(keywords))
    except TypeError as e:
        raise TypeError(
            f"{where}: `forward` must accept ({', '.join(positional)}"
            + "".join(f", {k}=..." for k in keywords)
            + f"): {e}"
        ) from None


def check_encoder(owner: str, encoder) -> None:
    """Raise TypeError naming the first piece of :class:`MultiScaleEncoder` that ``encoder``
    misses (attribute, its type, or an argument of ``forward``)."""
    _check(
        owner,
        "encoder",
        encoder,
        MultiScaleEncoder,
        _ENCODER_PIECES,
        _ENCODER_ARGS + ("key_padding_mask",),
        ("spatial_sizes",),
    )


def check_decoder(owner: str, decoder) -> None:
    """Raise TypeError naming the first piece of :class:`QueryDecoder` that ``decoder`` misses."""
    _check(owner, "decoder", decoder, QueryDecoder, _DECODER_PIECES, _DECODER_ARGS, ("query_pos",))
