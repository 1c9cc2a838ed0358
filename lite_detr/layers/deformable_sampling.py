"""Input checks and sampling locations shared by the multi-scale deformable attentions."""

import torch

__all__ = [
    "check_deformable_attention_inputs",
    "compute_sampling_locations",
    "project_heads",
]


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def check_deformable_attention_inputs(
    module_name: str,
    embed_dim: int,
    num_levels: int,
    query: torch.Tensor,
    value: torch.Tensor,
    reference_points: torch.Tensor,
    spatial_shapes: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    query_pos: torch.Tensor | None,
) -> None:
    """
    Raise ValueError naming the offending argument when an input that the module uses before
    the op has the wrong shape or device: the op sees only its projections and the sampling
    locations, so a wrong ``query`` or ``reference_points`` would fail inside a linear layer with
    a message naming none of the inputs, or broadcast silently. ``spatial_shapes`` is checked
    only for what :func:`compute_sampling_locations` needs (its L rows, its device); its dtype and
    values, ``level_start_index`` and the agreement with ``value``'s S tokens are the op's to
    check (``lite_detr.ops``, at its C++ boundary). No check reads a tensor's data.
    Argument shapes are those of :meth:`MultiScaleDeformableAttention.forward`.
    """
    if query.dim() != 3 or query.shape[-1] != embed_dim:
        raise ValueError(f"{module_name}: query must be (N, Lq, {embed_dim}), got {_shape(query)}")
    n, lq = query.shape[:2]
    if value.dim() != 3 or value.shape[0] != n or value.shape[-1] != embed_dim:
        raise ValueError(
            f"{module_name}: value must be ({n}, S, {embed_dim}) to match query, got "
            f"{_shape(value)}"
        )
    if query_pos is not None and query_pos.shape != query.shape:
        raise ValueError(
            f"{module_name}: query_pos must have the shape of query {_shape(query)}, got "
            f"{_shape(query_pos)}"
        )
    if spatial_shapes.shape != (num_levels, 2):
        raise ValueError(
            f"{module_name}: spatial_shapes must be ({num_levels}, 2), the (H, W) of each level, "
            f"got shape {_shape(spatial_shapes)}"
        )
    if (
        reference_points.dim() != 4
        or reference_points.shape[:3] != (n, lq, num_levels)
        or reference_points.shape[-1] not in (2, 4)
    ):
        raise ValueError(
            f"{module_name}: reference_points must be ({n}, {lq}, {num_levels}, 2) normalised xy "
            f"or ({n}, {lq}, {num_levels}, 4) cxcywh boxes, got {_shape(reference_points)}"
        )
    s = value.shape[1]
    if key_padding_mask is not None and (
        key_padding_mask.shape != (n, s) or key_padding_mask.dtype != torch.bool
    ):
        raise ValueError(
            f"{module_name}: key_padding_mask must be a ({n}, {s}) bool tensor, got shape "
            f"{_shape(key_padding_mask)} and dtype {key_padding_mask.dtype}"
        )
    named = {
        "value": value,
        "reference_points": reference_points,
        "spatial_shapes": spatial_shapes,
        "key_padding_mask": key_padding_mask,
        "query_pos": query_pos,
    }
    for name, t in named.items():
        if t is not None and t.device != query.device:
            raise ValueError(
                f"{module_name}: {name} is on {t.device} but query is on {query.device}"
            )


def compute_sampling_locations(
    reference_points: torch.Tensor, sampling_offsets: torch.Tensor, spatial_shapes: torch.Tensor
) -> torch.Tensor:
    """
    Turn predicted offsets into normalised sampling locations (Deformable DETR, eq. 3).

    Args:
        reference_points (Tensor): (N, Lq, L, 2) normalised (x, y), or (N, Lq, L, 4) normalised
            (cx, cy, w, h) boxes.
        sampling_offsets (Tensor): (N, Lq, M, L, P, 2) offsets (x, y). For 2-D references they
            are in pixels of level l; for boxes, in units of half the box size times P.
        spatial_shapes (Tensor): (L, 2) int64 (H_l, W_l).

    Returns:
        Tensor: (N, Lq, M, L, P, 2) normalised (x, y) sampling locations.
    """
    n, lq, m, lvl, p, _ = sampling_offsets.shape
    flat = lvl * p * 2  # the (L, P, 2) values of one query and head, contiguous
    offsets = sampling_offsets.reshape(n, lq, m, flat)

    def per_point(t: torch.Tensor) -> torch.Tensor:
        """(N, Lq, L, 2) -> (N, Lq, 1, L*P*2): each point's value of its level."""
        return t[:, :, None, :, None, :].expand(n, lq, 1, lvl, p, 2).reshape(n, lq, 1, flat)

    # The per-level values are laid out like the offsets first, so each operation below runs over
    # L*P*2 contiguous values: broadcasting (L, 1, 2) into (L, P, 2) directly made them run over
    # pairs, ~10x slower at 800x1333. The arithmetic is the same, element by element.
    if reference_points.shape[-1] == 2:
        # loc = ref + offset / (W_l, H_l), in one pass (addcdiv rounds as the two operations do)
        normalizer = spatial_shapes.flip(-1).to(sampling_offsets.dtype)  # (L, 2) as (W, H)
        per_value = normalizer[:, None, :].expand(lvl, p, 2).reshape(flat)
        locations = torch.addcdiv(per_point(reference_points), offsets, per_value)
    else:
        # loc = ref.xy + offset / P * ref.wh / 2
        xy, wh = per_point(reference_points[..., :2]), per_point(reference_points[..., 2:])
        locations = xy + offsets / p * wh * 0.5
    return locations.view(n, lq, m, lvl, p, 2)


def project_heads(
    proj: torch.nn.Module,
    x: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    num_heads: int,
) -> torch.Tensor:
    """
    Project the sampled features (values, or keys) and split them into heads; padded tokens are
    zeroed so they contribute nothing wherever they are sampled.

    Args:
        proj (nn.Module): C -> C projection.
        x (Tensor): (N, S, C).
        key_padding_mask (Tensor or None): (N, S) bool, True marks padding.
        num_heads (int): M.

    Returns:
        Tensor: (N, S, M, C // M).
    """
    x = proj(x)
    if key_padding_mask is not None:
        x = x.masked_fill(key_padding_mask[..., None], 0.0)
    n, s, c = x.shape
    return x.view(n, s, num_heads, c // num_heads)
