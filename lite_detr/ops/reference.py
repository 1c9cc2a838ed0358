"""Pure-PyTorch references of the multi-scale deformable sampling ops.

Written for clarity: they materialise the sampled values (and keys), which is what the compiled
kernels avoid. They define the semantics the kernels are tested against, run when ``lite_detr._C``
is missing, and are what export paths see (plain aten ops: ``grid_sample``, ``softmax``, ...).
They check their inputs themselves, with the messages of the compiled ops' C++ boundary.
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


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_inputs(
    op: str,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor | None = None,
    query: torch.Tensor | None = None,
    key: torch.Tensor | None = None,
) -> List[List[int]] | None:
    """
    The references' own guard, with the messages of the compiled ops' C++ boundary
    (``check_inputs`` / ``check_levels_host`` in ``ops/ms_deform_attn.cpp``): the references run
    where the compiled ops do not (no ``lite_detr._C``, or no kernels for the device), and
    ``grid_sample`` / ``split`` would otherwise fail with messages that name none of the inputs,
    or sample a wrong level silently.

    Returns the (H, W) pairs of ``spatial_shapes`` read on the host (the references need them
    anyway), or None while tracing or compiling: then the level values are left unchecked so the
    graph stays free of data-dependent branches, and the shapes are read by the caller.
    """
    layouts = [("value", value, ("N", "S", "M", "D"))]
    if key is not None:
        layouts.append(("key", key, ("N", "S", "M", "D")))
    if query is not None:
        layouts.append(("query", query, ("N", "Lq", "M", "D")))
    layouts.append(("sampling_locations", sampling_locations, ("N", "Lq", "M", "L", "P", 2)))
    if attention_weights is not None:
        layouts.append(("attention_weights", attention_weights, ("N", "Lq", "M", "L", "P")))
    layouts += [
        ("spatial_shapes", spatial_shapes, ("L", 2)),
        ("level_start_index", level_start_index, ("L",)),
    ]
    for name, t, _ in layouts:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if value.dim() != 4:
        raise ValueError(f"{op}: value must be (N, S, M, D), got shape {tuple(value.shape)}")
    if value.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: value must be float16/bfloat16/float32/float64, got {value.dtype}")
    seen = {}  # named size -> (size, input, axis) of its first appearance
    for name, t, dims in layouts:
        if t.dim() != len(dims):
            layout = "(" + ", ".join(map(str, dims)) + (",)" if len(dims) == 1 else ")")
            raise ValueError(f"{op}: {name} must be {layout}, got shape {tuple(t.shape)}")
        for axis, (dim, size) in enumerate(zip(dims, t.shape)):
            if isinstance(dim, int):
                if size != dim:
                    raise ValueError(
                        f"{op}: {name} must have size {dim} at dim {axis}, got {tuple(t.shape)}"
                    )
                continue
            other_size, other, other_axis = seen.setdefault(dim, (size, name, axis))
            if size != other_size:
                raise ValueError(
                    f"{op}: {name} has {dim}={size} at dim {axis} but {other} has {dim}="
                    f"{other_size} at dim {other_axis} ({name} shape {tuple(t.shape)})"
                )
    if spatial_shapes.shape[0] == 0:
        raise ValueError(f"{op}: spatial_shapes must hold at least one level, got shape (0, 2)")
    for name, t, _ in layouts:
        dtype = torch.int64 if name in ("spatial_shapes", "level_start_index") else value.dtype
        if t.dtype != dtype:
            raise TypeError(f"{op}: {name} must have dtype {dtype}, got {t.dtype}")
        if t.device != value.device:
            raise ValueError(f"{op}: {name} is on {t.device} but value is on {value.device}")

    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None
    shapes = spatial_shapes.tolist()
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f"{op}: spatial_shapes must be positive (H, W) pairs, got {shapes}")
    areas = [h * w for h, w in shapes]
    fix = "pass the (H, W) of the levels flattened into value"
    if sum(areas) > torch.iinfo(torch.int64).max:  # as the C++ check, which cannot sum them
        raise ValueError(
            f"{op}: sum of H*W over spatial_shapes {shapes} is more than the S={value.shape[1]} "
            f"tokens of value (value shape {tuple(value.shape)}): {fix}"
        )
    if sum(areas) != value.shape[1]:
        raise ValueError(
            f"{op}: sum of H*W over spatial_shapes {shapes} is {sum(areas)} but value has "
            f"S={value.shape[1]} tokens (value shape {tuple(value.shape)}): {fix}"
        )
    starts = [sum(areas[:i]) for i in range(len(areas))]
    if level_start_index.tolist() != starts:
        raise ValueError(
            f"{op}: level_start_index {level_start_index.tolist()} is inconsistent with "
            f"spatial_shapes {shapes}: expected {starts}"
        )
    return shapes


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
        level_start_index (Tensor): (L,) int64, checked only (levels are contiguous in
            ``value``).
        sampling_locations (Tensor): (N, Lq, M, L, P, 2) normalised (x, y).
        attention_weights (Tensor): (N, Lq, M, L, P).

    Returns:
        Tensor: (N, Lq, M * D).
    """
    shapes = _check_inputs(
        "ms_deform_attn_reference",
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
    )
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = spatial_shapes.tolist() if shapes is None else shapes
    sampled = _sample_levels(value, shapes, sanitize_locations(sampling_locations))
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
        level_start_index (Tensor): (L,) int64, checked only (levels are contiguous in
            ``value``).
        sampling_locations (Tensor): (N, Lq, M, L, P, 2) normalised (x, y).
        key (Tensor or None): (N, S, M, D); None means the keys are the values.

    Returns:
        Tensor: (N, Lq, M * D).
    """
    shapes = _check_inputs(
        "ms_deform_attn_key_aware_reference",
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        query=query,
        key=key,
    )
    N, S, M, D = value.shape
    Lq = query.shape[1]
    shapes = spatial_shapes.tolist() if shapes is None else shapes
    locations = sanitize_locations(sampling_locations)
    v = _sample_levels(value, shapes, locations)  # (N*M, D, Lq, L*P)
    k = v if key is None else _sample_levels(key, shapes, locations)
    q = query.transpose(1, 2).reshape(N * M, Lq, D)
    logits = torch.einsum("bqd,bdqj->bqj", q, k) / math.sqrt(D)
    attn = logits.softmax(dim=-1)  # (N*M, Lq, L*P)
    out = torch.einsum("bqj,bdqj->bqd", attn, v)  # (N*M, Lq, D)
    return out.view(N, M, Lq, D).transpose(1, 2).reshape(N, Lq, M * D)
