"""ONNX translations of the deformable sampling ops: standard ONNX operators, no plug-in.

``torch.onnx.export(..., dynamo=True, custom_translation_table=onnx_translation_table())``
turns the ``lite_detr::`` nodes of an exported graph into this decomposition, which ONNX
Runtime (or any runtime of opset >= 17) runs as is. The per-level sizes are read from the
``spatial_shapes`` / ``level_start_index`` inputs at run time (``Gather`` + ``Slice`` +
``Reshape``), so the graph serves every input size. Each level is sampled with ``GridSample``
(bilinear, zero padding, ``align_corners=0``: the ops' semantics); the weighted sum (standard op)
or the softmax over the sampled keys (key-aware op) is plain arithmetic.

Like the pure-PyTorch references it materialises the sampled values; it is tested against the
compiled kernels in ``tests/ops/test_onnx_translation.py``.
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
    """(..., 2) normalised (x, y) -> GridSample's [-1, 1] grid; points with a NaN/Inf coordinate
    or outside [-1, 2] (no corner on the map) move to -5, i.e. (-2, -2) normalised, where they
    contribute zero (as ``reference.sanitize_locations``)."""
    half = op.CastLike(op.Constant(value_float=0.5), locations)
    bound = op.CastLike(op.Constant(value_float=1.5), locations)
    inside = op.LessOrEqual(op.Abs(op.Sub(locations, half)), bound)  # False for NaN
    inside = op.ReduceMin(op.Cast(inside, to=1), _ints(op, [-1]), keepdims=1)  # both coords
    inside = op.Cast(inside, to=9)  # bool
    two = op.CastLike(op.Constant(value_float=2.0), locations)
    one = op.CastLike(op.Constant(value_float=1.0), locations)
    far = op.CastLike(op.Constant(value_float=-5.0), locations)
    return op.Where(inside, op.Sub(op.Mul(locations, two), one), far)


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
        (N*M, D, Lq, L, P) sampled values.
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
        grid_l = op.Transpose(grid_l, perm=[0, 2, 1, 3, 4])  # (N, M, Lq, P, 2)
        grid_l = op.Reshape(
            grid_l, op.Concat(_ints(op, [-1]), num_queries, _ints(op, [points, 2]), axis=0)
        )
        out = op.GridSample(
            value_l, grid_l, align_corners=0, mode="bilinear", padding_mode="zeros"
        )  # (N*M, D, Lq, P)
        sampled.append(op.Unsqueeze(out, _ints(op, [3])))
    return op.Concat(*sampled, axis=3)


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
    weights = op.Transpose(attention_weights, perm=[0, 2, 1, 3, 4])  # (N, M, Lq, L, P)
    weights = op.Reshape(
        weights,
        op.Concat(_ints(op, [-1, 1]), num_queries, _ints(op, [num_levels, num_points]), axis=0),
    )  # (N*M, 1, Lq, L, P)
    out = op.ReduceSum(op.Mul(sampled, weights), _ints(op, [3, 4]), keepdims=0)  # (N*M, D, Lq)
    out = op.Reshape(out, _ints(op, [-1, heads * depth, 0]))  # (N, M*D, Lq)
    return op.Transpose(out, perm=[0, 2, 1])


def _to_heads_last(op, x, depth):
    """(N*M, D, Lq, L, P) -> (N*M, Lq, L*P, D)."""
    x = op.Transpose(x, perm=[0, 2, 3, 4, 1])
    return op.Reshape(x, _ints(op, [0, 0, -1, depth]))


def _ms_deform_attn_key_aware(
    query, value, key, spatial_shapes, level_start_index, sampling_locations
):
    op = _ops()
    _, _, heads, depth = value.shape
    num_queries = op.Shape(sampling_locations, start=1, end=2)
    grids = _sanitized_grid(op, sampling_locations)
    sample = (grids, num_queries, sampling_locations.shape[3], sampling_locations.shape[4])
    v = _sample_levels(op, value, spatial_shapes, level_start_index, *sample)
    v = _to_heads_last(op, v, depth)  # (N*M, Lq, J, D), J = L*P
    if key is None:
        k = v
    else:
        k = _to_heads_last(
            op, _sample_levels(op, key, spatial_shapes, level_start_index, *sample), depth
        )
    q = op.Transpose(query, perm=[0, 2, 1, 3])  # (N, M, Lq, D)
    q = op.Reshape(q, op.Concat(_ints(op, [-1]), num_queries, _ints(op, [depth, 1]), axis=0))
    scale = op.CastLike(op.Constant(value_float=1.0 / float(depth) ** 0.5), value)
    logits = op.Mul(op.Squeeze(op.MatMul(k, q), _ints(op, [3])), scale)  # (N*M, Lq, J)
    attn = op.Softmax(logits, axis=-1)
    out = op.MatMul(op.Unsqueeze(attn, _ints(op, [2])), v)  # (N*M, Lq, 1, D)
    out = op.Reshape(
        out, op.Concat(_ints(op, [-1, heads]), num_queries, _ints(op, [depth]), axis=0)
    )
    out = op.Transpose(out, perm=[0, 2, 1, 3])  # (N, Lq, M, D)
    out = op.Reshape(out, _ints(op, [0, 0, heads * depth]))
    # the op's second output: the softmax weights (N, Lq, M, J) in the kernels' float32/64
    attn = op.Reshape(attn, op.Concat(_ints(op, [-1, heads]), num_queries, _ints(op, [-1]), axis=0))
    attn = op.Transpose(attn, perm=[0, 2, 1, 3])
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
