"""Key-aware deformable attention (Lite DETR, Li et al., CVPR 2023, sec. 3.3)."""

import torch
from torch import nn

from lite_detr.ops import ms_deform_attn_key_aware

from .deformable_sampling import (
    check_deformable_attention_inputs,
    compute_sampling_locations,
    project_heads,
)
from .multi_scale_deform_attn import check_head_arguments, init_sampling_offsets

__all__ = ["KeyAwareDeformableAttention"]


class KeyAwareDeformableAttention(nn.Module):
    """
    Key-aware deformable attention (KDA): like multi-scale deformable attention, each query
    predicts its sampling offsets, but keys are sampled at the same points as the values and the
    weights are ``softmax(q . k / sqrt(d))`` over the L*P points of a head, so they depend on what
    was sampled. There is no ``attention_weights`` layer; a ``query_proj`` takes its place.

    With ``separate_key_proj=False`` (the paper's default) the keys are the projected values
    (W_K = W_V) and one gather serves both. Residual, output dropout and norm are the caller's.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.0,
        separate_key_proj: bool = False,
    ):
        """
        Args:
            embed_dim (int): channels C of queries and values; must be divisible by num_heads.
            num_heads (int): attention heads M.
            num_levels (int): feature levels L.
            num_points (int): sampling points P per head and level.
            dropout (float): dropout on the aggregated head outputs, before ``output_proj``.
            separate_key_proj (bool): project keys with their own ``key_proj`` instead of
                reusing the values.
        """
        super().__init__()
        check_head_arguments(type(self).__name__, embed_dim, num_heads, num_levels, num_points)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.separate_key_proj = separate_key_proj

        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.query_proj = nn.Linear(embed_dim, embed_dim)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.key_proj = nn.Linear(embed_dim, embed_dim) if separate_key_proj else None
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    def init_weights(self) -> None:
        """Deformable DETR's offset initialisation; Xavier for the projections."""
        init_sampling_offsets(
            self.sampling_offsets, self.num_heads, self.num_levels, self.num_points
        )
        for proj in (self.query_proj, self.value_proj, self.key_proj, self.output_proj):
            if proj is not None:
                nn.init.xavier_uniform_(proj.weight)
                nn.init.constant_(proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query (Tensor): (N, Lq, C).
            value (Tensor): (N, S, C) flattened multi-scale features, S = sum_l H_l * W_l; the
                keys are computed from it too (they carry no positional embedding).
            reference_points (Tensor): (N, Lq, L, 2) normalised (x, y) in [0, 1], or
                (N, Lq, L, 4) normalised (cx, cy, w, h) boxes.
            spatial_shapes (Tensor): (L, 2) int64 (H_l, W_l).
            level_start_index (Tensor): (L,) int64 offset of each level in S.
            key_padding_mask (Tensor or None): (N, S) bool, True marks padding (zeroed keys and
                values).
            query_pos (Tensor or None): (N, Lq, C) positional embedding added to the query.

        Returns:
            Tensor: (N, Lq, C).
        """
        check_deformable_attention_inputs(
            type(self).__name__,
            self.embed_dim,
            self.num_levels,
            query,
            value,
            reference_points,
            spatial_shapes,
            key_padding_mask,
            query_pos,
        )
        n, lq, _ = query.shape
        m, lvl, p = self.num_heads, self.num_levels, self.num_points
        d = self.embed_dim // m
        z_q = query if query_pos is None else query + query_pos

        key = None
        if self.key_proj is not None:
            key = project_heads(self.key_proj, value, key_padding_mask, m)
        value = project_heads(self.value_proj, value, key_padding_mask, m)

        q = self.query_proj(z_q).view(n, lq, m, d)
        offsets = self.sampling_offsets(z_q).view(n, lq, m, lvl, p, 2)
        locations = compute_sampling_locations(reference_points, offsets, spatial_shapes)

        out = ms_deform_attn_key_aware(q, value, spatial_shapes, level_start_index, locations, key)
        return self.output_proj(self.dropout(out))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"num_levels={self.num_levels}, num_points={self.num_points}, "
            f"separate_key_proj={self.separate_key_proj}"
        )
