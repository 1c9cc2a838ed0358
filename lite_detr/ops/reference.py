"""Pure-PyTorch references of the multi-scale deformable sampling ops.

Written for clarity: they materialise the sampled values (and keys), which is what the compiled
kernels avoid. They define the semantics the kernels are tested against, run when ``lite_detr._C``
is missing, and are what export paths see (plain aten ops: ``grid_sample``, ``softmax``, ...).
"""

import math
from typing import List

import torch
import torch.nn.functional as F

__all__ = ["ms_deform_attn_reference", "ms_deform_attn_key_aware_reference", "sanitize_locations"]


def sanitize_locations(sampling_locations: torch.Tensor) -> torch.Tensor:
    """
    Give non-finite and far-away sampling points a defined, harmless location.

    A point whose coordinates are NaN/Inf, or lie outside [-1, 2], has no corner inside the map
    under ``grid_sample(align_corners=False)`` semantics (or no defined one): it contributes zero.
    Moving it to (-2, -2) keeps that meaning while keeping ``grid_sample`` away from undefined
    float->int casts; ``torch.where`` gives such points a zero gradient, as the kernels do.

    Args:
        sampling_locations (Tensor): (..., 2) normalised (x, y).

    Returns:
        Tensor: same shape, invalid points replaced by (-2, -2).
    """
    inside = ((sampling_locations - 0.5).abs() <= 1.5).all(dim=-1, keepdim=True)  # False for NaN
    return torch.where(inside, sampling_locations, sampling_locations.new_full((), -2.0))


def _sample_levels(
    value: torch.Tensor, spatial_shapes: List[List[int]], sampling_locations: torch.Tensor
) -> torch.Tensor:
    """
    Bilinearly sample every level of ``value`` at its points.

    Args:
        value (Tensor): (N, S, M, D).
        spatial_shapes (list[list[int]]): L pairs (H_l, W_l).
        sampling_locations (Tensor): (N, Lq, M, L, P, 2), already sanitized.

    Returns:
        Tensor: (N * M, D, Lq, L * P) sampled values.
    """
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] convention
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(N * M, D, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(
                value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )  # (N*M, D, Lq, P)
    return torch.stack(sampled, dim=-2).flatten(-2)  # (N*M, D, Lq, L*P)


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """
    Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, eq. 3), reference.

    Args:
        value (Tensor): (N, S, M, D), S = sum_l H_l * W_l, levels flattened in order.
        spatial_shapes (Tensor): (L, 2) int64, (H_l, W_l).
        level_start_index (Tensor): (L,) int64, unused (levels are contiguous in ``value``).
        sampling_locations (Tensor): (N, Lq, M, L, P, 2) normalised (x, y).
        attention_weights (Tensor): (N, Lq, M, L, P).

    Returns:
        Tensor: (N, Lq, M * D).
    """
    del level_start_index
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    sampled = _sample_levels(value, spatial_shapes.tolist(), sanitize_locations(sampling_locations))
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    out = (sampled * weights).sum(-1)  # (N*M, D, Lq)
    return out.view(N, M * D, Lq).transpose(1, 2).contiguous()


def ms_deform_attn_key_aware_reference(
    query: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    key: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Key-aware deformable attention (Lite DETR, Li et al. 2023, sec. 3.3), reference.

    Keys and values are sampled at the same points; the weights are a softmax over all L * P
    points of (q . k) / sqrt(D), per query and head.

    Args:
        query (Tensor): (N, Lq, M, D), already projected per head.
        value (Tensor): (N, S, M, D).
        spatial_shapes (Tensor): (L, 2) int64, (H_l, W_l).
        level_start_index (Tensor): (L,) int64, unused (levels are contiguous in ``value``).
        sampling_locations (Tensor): (N, Lq, M, L, P, 2) normalised (x, y).
        key (Tensor or None): (N, S, M, D); None means the keys are the values.

    Returns:
        Tensor: (N, Lq, M * D).
    """
    del level_start_index
    N, S, M, D = value.shape
    Lq = query.shape[1]
    shapes = spatial_shapes.tolist()
    locations = sanitize_locations(sampling_locations)
    v = _sample_levels(value, shapes, locations)  # (N*M, D, Lq, L*P)
    k = v if key is None else _sample_levels(key, shapes, locations)
    q = query.transpose(1, 2).reshape(N * M, Lq, D)
    logits = torch.einsum("bqd,bdqj->bqj", q, k) / math.sqrt(D)
    attn = logits.softmax(dim=-1)  # (N*M, Lq, L*P)
    out = torch.einsum("bqj,bdqj->bqd", attn, v)  # (N*M, Lq, D)
    return out.view(N, M, Lq, D).transpose(1, 2).reshape(N, Lq, M * D)
