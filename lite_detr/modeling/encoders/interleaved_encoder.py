"""Lite DETR's efficient encoder: interleaved high-level and low-level feature updates."""

from typing import Sequence, Tuple

import torch
from torch import nn

from lite_detr.layers.attention_registry import check_attention_type

from ..level_shapes import level_shapes
from .encoder_layer import (
    DeformableEncoderLayer,
    JointEncoderLayer,
    check_encoder_inputs,
    get_reference_points,
)

__all__ = ["InterleavedEncoder"]


class InterleavedEncoder(nn.Module):
    """
    The efficient encoder of Lite DETR (Li et al., CVPR 2023, sec. 3.2), variant
    ``HxLy-(A+1)xB``, with the released code's semantics (docs/model.md, section 4).

    The tokens are split into low-level F_L (the y = L - x finest scales, the first tokens of the
    fine-to-coarse flattening) and high-level F_H (the x coarsest scales, the rest). Each of the
    B blocks has A layers:

    * A - 1 high-only layers: only F_H are queries; keys/values are all tokens [F_L0 ; F_H], with
      F_L0 the low-level tokens frozen at the start of the block; wide FFN.
    * one joint layer: all tokens are queries of one attention; then F_L goes through a light
      FFN with its own norm and F_H through the wide FFN.

    So F_H is updated A*B times, F_L B times, and there are A*B layers. Keys/values always cover
    all scales; the full memory [F_L ; F_H] is returned in the input order.
    """

    def __init__(
        self,
        num_blocks: int = 3,
        num_high_updates: int = 2,
        num_high_levels: int = 3,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        feedforward_dim: int = 2048,
        low_feedforward_dim: int = 256,
        dropout: float = 0.0,
        attention: str = "key_aware",
        attention_dropout: float = 0.0,
        separate_key_proj: bool = False,
    ):
        """
        Args:
            num_blocks (int): B, efficient encoder blocks.
            num_high_updates (int): A, updates of F_H per block (A - 1 high-only layers plus
                the joint layer).
            num_high_levels (int): x in HxLy, the number of coarsest scales forming F_H;
                1 <= x < num_levels.
            embed_dim (int): token channels C.
            num_heads (int): attention heads.
            num_levels (int): feature levels L.
            num_points (int): sampling points per head and level.
            feedforward_dim (int): hidden width of the wide FFN of F_H.
            low_feedforward_dim (int): hidden width of the light FFN of F_L.
            dropout (float): dropout of the layers (0 in DINO).
            attention (str): "key_aware" (KDA, the paper's) or "deformable", a key of
                :data:`lite_detr.layers.ATTENTION_TYPES`.
            attention_dropout (float): dropout inside each attention, before its output
                projection (0 in Deformable DETR, DINO and Lite DETR).
            separate_key_proj (bool): KDA's own key projection (``attention="key_aware"`` only).
        """
        super().__init__()
        for name, v in (("num_blocks", num_blocks), ("num_high_updates", num_high_updates)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"InterleavedEncoder: {name} must be an int >= 1, got {v!r}")
        if not isinstance(num_high_levels, int) or not 1 <= num_high_levels < num_levels:
            raise ValueError(
                f"InterleavedEncoder: num_high_levels must be an int with 1 <= num_high_levels < "
                f"num_levels={num_levels} (at least one low- and one high-level scale), got "
                f"{num_high_levels!r}"
            )
        check_attention_type("InterleavedEncoder", attention, separate_key_proj)
        self.num_blocks = num_blocks
        self.num_high_updates = num_high_updates
        self.num_high_levels = num_high_levels
        self.num_low_levels = num_levels - num_high_levels
        self.embed_dim = embed_dim
        self.num_levels = num_levels
        self.attention = attention

        layer_args = {
            "embed_dim": embed_dim,
            "num_heads": num_heads,
            "num_levels": num_levels,
            "num_points": num_points,
            "feedforward_dim": feedforward_dim,
            "dropout": dropout,
            "attention": attention,
            "attention_dropout": attention_dropout,
            "separate_key_proj": separate_key_proj,
        }
        layers = []
        for _ in range(num_blocks):
            layers += [DeformableEncoderLayer(**layer_args) for _ in range(num_high_updates - 1)]
            layers.append(JointEncoderLayer(low_feedforward_dim=low_feedforward_dim, **layer_args))
        # execution order: block b is layers[b * A : (b + 1) * A], its joint layer last
        self.layers = nn.ModuleList(layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def variant(self) -> str:
        """Architecture tag stored in checkpoints, e.g. "H3L1-(2+1)x3/key_aware"."""
        return (
            f"H{self.num_high_levels}L{self.num_low_levels}-"
            f"({self.num_high_updates}+1)x{self.num_blocks}/{self.attention}"
        )

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
            Tensor: (N, S, C) encoder memory [F_L ; F_H], same token order as ``query``.
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
        # fine-to-coarse flattening: F_L is a prefix of the tokens, F_H the rest
        num_low = sum(h * w for h, w in spatial_sizes[: self.num_low_levels])
        pos_high, ref_high = query_pos[:, num_low:], reference_points[:, num_low:]
        common = {
            "spatial_shapes": spatial_shapes,
            "level_start_index": level_start_index,
            "key_padding_mask": key_padding_mask,
        }

        x = query
        for layer in self.layers:
            if isinstance(layer, JointEncoderLayer):
                # joint layer: all tokens are queries, F_L updated once per block
                x = layer(
                    query=x,
                    query_pos=query_pos,
                    reference_points=reference_points,
                    value=x,
                    num_low_tokens=num_low,
                    **common,
                )
            else:
                # high-only layer: F_H queries, keys/values [F_L0 ; F_H] (all scales)
                low, high = x[:, :num_low], x[:, num_low:]
                high = layer(
                    query=high, query_pos=pos_high, reference_points=ref_high, value=x, **common
                )
                x = torch.cat((low, high), dim=1)
        return x
