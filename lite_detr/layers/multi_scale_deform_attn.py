"""Multi-scale deformable attention (Deformable DETR, Zhu et al., ICLR 2021, sec. 4.1)."""

import math

import torch
from torch import nn

from lite_detr.ops import ms_deform_attn

from .deformable_sampling import (
    check_deformable_attention_inputs,
    compute_sampling_locations,
    project_heads,
)

__all__ = ["MultiScaleDeformableAttention", "init_sampling_offsets"]


def init_sampling_offsets(
    linear: nn.Linear, num_heads: int, num_levels: int, num_points: int
) -> None:
    """
    Deformable DETR's offset initialisation: zero weights, and biases that start head m on a ray
    at angle 2*pi*m/M with its P points at distances 1..P, identically on every level.
    """
    nn.init.constant_(linear.weight, 0.0)
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(num_heads, 1, 1, 2)
    grid = grid.repeat(1, num_levels, num_points, 1)
    grid *= torch.arange(1, num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
    with torch.no_grad():
        linear.bias.copy_(grid.view(-1))


def check_head_arguments(
    module_name: str, embed_dim: int, num_heads: int, num_levels: int, num_points: int
) -> None:
    for name, v in (
        ("embed_dim", embed_dim),
        ("num_heads", num_heads),
        ("num_levels", num_levels),
        ("num_points", num_points),
    ):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{module_name}: {name} must be a positive int, got {v!r}")
    if embed_dim % num_heads != 0:
        raise ValueError(
            f"{module_name}: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
        )


class MultiScaleDeformableAttention(nn.Module):
    """
    Multi-scale deformable attention: each query predicts, from itself alone, P sampling offsets
    and P attention weights per head and level, samples the values bilinearly and returns their
    weighted sum (softmax over the L*P points of a head), followed by the output projection.

    Residual connection, output dropout and normalisation are the caller's.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.0,
    ):
        """
        Args:
            embed_dim (int): channels C of queries and values; must be divisible by num_heads.
            num_heads (int): attention heads M.
            num_levels (int): feature levels L.
            num_points (int): sampling points P per head and level.
            dropout (float): dropout on the aggregated head outputs, before ``output_proj``.
        """
        super().__init__()
        check_head_arguments(type(self).__name__, embed_dim, num_heads, num_levels, num_points)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points

        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    def init_weights(self) -> None:
        """Deformable DETR's initialisation (uniform attention over the initial points)."""
        init_sampling_offsets(
            self.sampling_offsets, self.num_heads, self.num_levels, self.num_points
        )
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for proj in (self.value_proj, self.output_proj):
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
            value (Tensor): (N, S, C) flattened multi-scale features, S = sum_l H_l * W_l.
            reference_points (Tensor): (N, Lq, L, 2) normalised (x, y) in [0, 1], or
                (N, Lq, L, 4) normalised (cx, cy, w, h) boxes.
            spatial_shapes (Tensor): (L, 2) int64 (H_l, W_l).
            level_start_index (Tensor): (L,) int64 offset of each level in S.
            key_padding_mask (Tensor or None): (N, S) bool, True marks padding (zeroed values).
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
        z_q = query if query_pos is None else query + query_pos

        value = project_heads(self.value_proj, value, key_padding_mask, m)

        offsets = self.sampling_offsets(z_q).view(n, lq, m, lvl, p, 2)
        weights = self.attention_weights(z_q).view(n, lq, m, lvl * p).softmax(-1)
        weights = weights.view(n, lq, m, lvl, p)
        locations = compute_sampling_locations(reference_points, offsets, spatial_shapes)

        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(self.dropout(out))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"num_levels={self.num_levels}, num_points={self.num_points}"
        )
