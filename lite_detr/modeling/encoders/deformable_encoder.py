"""The baseline encoder of Deformable DETR and DINO: every token is a query in every layer."""

from typing import Sequence, Tuple

import torch
from torch import nn

from lite_detr.layers.attention_registry import check_attention_type

from ..level_shapes import level_shapes
from .encoder_layer import (
    DeformableEncoderLayer,
    check_encoder_inputs,
    get_reference_points,
)

__all__ = ["DeformableEncoder"]


class DeformableEncoder(nn.Module):
    """
    Deformable DETR's multi-scale encoder (Zhu et al., ICLR 2021, sec. 4.1), as used by DINO:
    ``num_layers`` post-norm layers of deformable self-attention over all tokens of all scales.
    The baseline of Lite DETR (docs/model.md, sections 1 and 4) and a drop-in replacement for
    :class:`InterleavedEncoder`.
    """

    def __init__(
        self,
        num_layers: int = 6,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        feedforward_dim: int = 2048,
        dropout: float = 0.0,
        attention: str = "deformable",
        attention_dropout: float = 0.0,
        separate_key_proj: bool = False,
    ):
        """
        Args:
            num_layers (int): encoder layers.
            embed_dim (int): token channels C.
            num_heads (int): attention heads.
            num_levels (int): feature levels L.
            num_points (int): sampling points per head and level.
            feedforward_dim (int): FFN hidden width (2048 in DINO, 1024 in Deformable DETR).
            dropout (float): dropout of the layers (0 in DINO).
            attention (str): "deformable" (multi-scale deformable attention) or "key_aware"
                (KDA), a key of :data:`lite_detr.layers.ATTENTION_TYPES`.
            attention_dropout (float): dropout inside each attention, before its output
                projection (0 in Deformable DETR, DINO and Lite DETR).
            separate_key_proj (bool): KDA's own key projection (``attention="key_aware"`` only).
        """
        super().__init__()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(
                f"DeformableEncoder: num_layers must be an int >= 1, got {num_layers!r}"
            )
        check_attention_type("DeformableEncoder", attention, separate_key_proj)
        self.embed_dim = embed_dim
        self.num_levels = num_levels
        self.attention = attention
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(
                embed_dim=embed_dim,
                num_heads=num_heads,
                num_levels=num_levels,
                num_points=num_points,
                feedforward_dim=feedforward_dim,
                dropout=dropout,
                attention=attention,
                attention_dropout=attention_dropout,
                separate_key_proj=separate_key_proj,
            )
            for _ in range(num_layers)
        )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def variant(self) -> str:
        """Architecture tag stored in checkpoints, e.g. "deformable6/deformable"."""
        return f"deformable{self.num_layers}/{self.attention}"

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        spatial_sizes: Sequence[Tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query (Tensor): (N, S, C) flattened multi-scale features, fine-to-coarse (stride 8
                first), S = sum_l H_l * W_l.
            query_pos (Tensor): (N, S, C) sine position embedding + level embedding.
            spatial_shapes (Tensor): (L, 2) int64 (H_l, W_l).
            level_start_index (Tensor): (L,) int64 offset of each level in S.
            valid_ratios (Tensor): (N, L, 2) valid (un-padded) fraction (w, h) of each level.
            key_padding_mask (Tensor or None): (N, S) bool, True marks padding.
            spatial_sizes (list or None): the (H_l, W_l) pairs of ``spatial_shapes`` as Python
                ints (the detectors pass them; see
                :func:`~lite_detr.modeling.level_shapes.level_shapes`), read from
                ``spatial_shapes`` when None.

        Returns:
            Tensor: (N, S, C) encoder memory, same token order.
        """
        if spatial_sizes is None:
            spatial_sizes = level_shapes(spatial_shapes)
        check_encoder_inputs(
            type(self).__name__,
            self.embed_dim,
            self.num_levels,
            query,
            query_pos,
            valid_ratios,
            spatial_sizes,
        )
        reference_points = get_reference_points(spatial_sizes, valid_ratios)
        x = query
        for layer in self.layers:
            x = layer(
                query=x,
                query_pos=query_pos,
                reference_points=reference_points,
                value=x,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
                key_padding_mask=key_padding_mask,
            )
        return x
