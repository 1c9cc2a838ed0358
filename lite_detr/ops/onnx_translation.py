"""ONNX translations of the deformable sampling ops: standard ONNX operators, no plug-in.

``torch.onnx.export(..., dynamo=True, custom_translation_table=onnx_translation_table())``
turns the ``lite_detr::`` nodes of an exported graph into this decomposition, which ONNX
Runtime (or any runtime of opset >= 17) runs as is. The per-level sizes are read from the
``spatial_shapes`` / ``level_start_index`` inputs at run time (``Gather`` + ``Slice`` +
``Reshape``), so the graph serves every input size. Each level is sampled with ``GridSample``
(bilinear, zero padding, ``align_corners=0``: the ops' semantics); the weighted sum (standard op)
or the softmax over the sampled keys (key-aware op) is plain arithmetic.

Like the pure-PyTorch references it materialises the sampled values, one level at a time: each
level's samples are weighted and summed over their points, and the levels' sums added up, with no
concatenation of the levels (nor transpose of the sampled keys) in between: those copies cost as
much as the sampling in ONNX Runtime's profile. It is tested against the compiled kernels in
``tests/ops/test_onnx_translation.py``.
"""

from typing import Callable, Dict

import torch

__all__ = ["ONNX_OPSET", "onnx_translation_table"]

# GridSample exists since opset 16; 18 is the first opset whose Reduce* ops all take axes as an
# input, which the decomposition uses.
ONNX_OPSET = 18


def _ops():
    import onnxscript

    return onnxscript.opset18


def _ints(op, values):
    return op.Constant(value_ints=list(values))


def _sanitized_grid(op, locations):
    """(..., 2) normalised (x, y) -> GridSample's [-1, 1] grid, each coordinate clipped to [-1, 2]
    and a NaN one set to -1: a point with a coordinate outside [-1, 2] or not finite has no
    bilinear corner on the map, nor has it at the clipped coordinate (-1 or 2 is a whole map
    away), so it still contributes zero (as ``reference.sanitize_locations``), and GridSample never
    sees a NaN or an infinity. Three elementwise ops over the grid (an earlier version took eight
    to move such points to -5: 8% of ONNX Runtime's time on Lite-DINO R50)."""
    low = op.CastLike(op.Constant(value_float=-1.0), locations)
    high = op.CastLike(op.Constant(value_float=2.0), locations)
    clipped = op.Clip(op.Where(op.IsNaN(locations), low, locations), low, high)
    two = op.CastLike(op.Constant(value_float=2.0), locations)
    one = op.CastLike(op.Constant(value_float=1.0), locations)
    return op.Sub(op.Mul(clipped, two), one)


def _sample_levels(
    op, value, spatial_shapes, level_start_index, grids, num_queries, levels, points
):
    """
    Bilinearly sample every level of ``value``.

    Args:
        value: (N, S, M, D); spatial_shapes: (L, 2) int64; level_start_index: (L,) int64.
        grids: (N, Lq, M, L, P, 2) sanitized, in [-1, 1] convention.
        num_queries: (1,) int64 tensor holding Lq; levels, points: L and P (ints).

    Returns:
        a list of L tensors (N*M, D, P, Lq): each level's sampled values, the queries innermost
        (GridSample's output rows are the grid's rows: the grid is laid out (P, Lq)), so that
        the per-query weights and queries broadcast along an outer axis (D or P) over
        contiguous rows of Lq. The levels are not concatenated: the callers reduce each level
        and add the levels up, which saves writing and reading the (N*M, D, L, P, Lq) tensor
        once more (in ONNX Runtime's profile that copy and its transpose cost as much as the
        sampling).
    """
    depth = value.shape[3]
    sampled = []
    for level in range(levels):
        hw = op.Gather(spatial_shapes, op.Constant(value_int=level), axis=0)  # (2,)
        start = op.Gather(level_start_index, _ints(op, [level]), axis=0)  # (1,)
        end = op.Add(start, op.ReduceProd(hw, keepdims=1))
        value_l = op.Slice(value, start, end, _ints(op, [1]))  # (N, H*W, M, D)
        value_l = op.Transpose(value_l, perm=[0, 2, 3, 1])  # (N, M, D, H*W)
        value_l = op.Reshape(value_l, op.Concat(_ints(op, [-1, depth]), hw, axis=0))
        grid_l = op.Gather(grids, op.Constant(value_int=level), axis=3)  # (N, Lq, M, P, 2)
        grid_l = op.Transpose(grid_l, perm=[0, 2, 3, 1, 4])  # (N, M, P, Lq, 2)
        grid_l = op.Reshape(
            grid_l, op.Concat(_ints(op, [-1, points]), num_queries, _ints(op, [2]), axis=0)
        )
        sampled.append(
            op.GridSample(value_l, grid_l, align_corners=0, mode="bilinear", padding_mode="zeros")
        )  # (N*M, D, P, Lq)
    return sampled


def _add(op, terms):
    return terms[0] if len(terms) == 1 else op.Sum(*terms)


def _ms_deform_attn(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights
):
    op = _ops()
    _, _, heads, depth = value.shape
    num_queries = op.Shape(sampling_locations, start=1, end=2)
    num_levels, num_points = sampling_locations.shape[3], sampling_locations.shape[4]
    grids = _sanitized_grid(op, sampling_locations)
    sampled = _sample_levels(
        op, value, spatial_shapes, level_start_index, grids, num_queries, num_levels, num_points
    )
    weights = op.Transpose(attention_weights, perm=[0, 2, 3, 4, 1])  # (N, M, L, P, Lq)
    weights = op.Reshape(
        weights,
        op.Concat(_ints(op, [-1, 1, num_levels, num_points]), num_queries, axis=0),
    )  # (N*M, 1, L, P, Lq)
    levels = []
    for level, sampled_l in enumerate(sampled):
        weights_l = op.Gather(weights, op.Constant(value_int=level), axis=2)  # (N*M, 1, P, Lq)
        levels.append(op.ReduceSum(op.Mul(sampled_l, weights_l), _ints(op, [2]), keepdims=0))
    out = op.Reshape(_add(op, levels), _ints(op, [-1, heads * depth, 0]))  # (N, M*D, Lq)
    return op.Transpose(out, perm=[0, 2, 1])


def _ms_deform_attn_key_aware(
    query, value, key, spatial_shapes, level_start_index, sampling_locations
):
    op = _ops()
    _, _, heads, depth = value.shape
    num_queries = op.Shape(sampling_locations, start=1, end=2)
    num_levels, num_points = sampling_locations.shape[3], sampling_locations.shape[4]
    grids = _sanitized_grid(op, sampling_locations)
    sample = (grids, num_queries, num_levels, num_points)
    values = _sample_levels(op, value, spatial_shapes, level_start_index, *sample)
    keys = values
    if key is not None:
        keys = _sample_levels(op, key, spatial_shapes, level_start_index, *sample)
    # each level's logits (N*M, P, Lq): a dot product over D (axis 1) with the scaled query
    # (N*M, D, 1, Lq), which broadcasts over P; the sampled keys are not transposed
    q = op.Transpose(query, perm=[0, 2, 3, 1])  # (N, M, D, Lq)
    q = op.Reshape(q, op.Concat(_ints(op, [-1, depth, 1]), num_queries, axis=0))
    scale = op.CastLike(op.Constant(value_float=1.0 / float(depth) ** 0.5), value)
    q = op.Mul(q, scale)
    logits = [op.ReduceSum(op.Mul(k, q), _ints(op, [1]), keepdims=0) for k in keys]
    attn = op.Softmax(op.Concat(*logits, axis=1), axis=1)  # (N*M, J, Lq), J = L*P level-major
    attn_levels = op.Split(op.Unsqueeze(attn, _ints(op, [1])), axis=2, num_outputs=num_levels)
    attn_levels = attn_levels if num_levels > 1 else [attn_levels]  # L x (N*M, 1, P, Lq)
    out = _add(
        op,
        [
            op.ReduceSum(op.Mul(v, a), _ints(op, [2]), keepdims=0)
            for v, a in zip(values, attn_levels)
        ],
    )  # (N*M, D, Lq)
    out = op.Reshape(out, _ints(op, [-1, heads * depth, 0]))  # (N, M*D, Lq)
    out = op.Transpose(out, perm=[0, 2, 1])  # (N, Lq, M*D)
    # the op's second output: the softmax weights (N, Lq, M, J) in the kernels' float32/64
    attn = op.Reshape(
        attn, op.Concat(_ints(op, [-1, heads, num_levels * num_points]), num_queries, axis=0)
    )
    attn = op.Transpose(attn, perm=[0, 3, 1, 2])
    if value.dtype is not None and value.dtype.name not in ("FLOAT", "DOUBLE"):
        attn = op.Cast(attn, to=1)
    return out, attn


def onnx_translation_table() -> Dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)`` mapping both
    ``lite_detr::`` ops to their decomposition (needs ``onnxscript``)."""
    return {
        torch.ops.lite_detr.ms_deform_attn.default: _ms_deform_attn,
        torch.ops.lite_detr.ms_deform_attn_key_aware.default: _ms_deform_attn_key_aware,
    }
