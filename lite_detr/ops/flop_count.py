"""fvcore FLOP handles of the compiled ops, so ``FlopCountAnalysis`` counts them.

Usage::

    from lite_detr.ops.flop_count import FLOP_HANDLES
    flops = FlopCountAnalysis(model, inputs).set_op_handle(**FLOP_HANDLES)

Like fvcore, one multiply-add counts as one flop. A bilinear sample costs 4 multiply-adds per
channel (fvcore's own ``aten::grid_sampler`` handle counts the same), so the counts of the compiled
ops equal those fvcore gives the pure-PyTorch references (``grid_sample`` + ``einsum``):

* ``ms_deform_attn``: 4 per channel per point (the attention weight folds into the corner weights).
* ``ms_deform_attn_key_aware``: 4 to sample the value, 4 more for a separate key, 1 for the dot
  product with the query, 1 for the weighted sum. The softmax is not counted.
"""

from numbers import Number
from typing import Any, List

from fvcore.nn.jit_handles import get_shape

__all__ = ["FLOP_HANDLES", "ms_deform_attn_flop_jit", "ms_deform_attn_key_aware_flop_jit"]


def _points_times_channels(value: Any, locations: Any) -> int:
    N, _, M, D = get_shape(value)
    _, Lq, _, L, P, _ = get_shape(locations)
    return N * Lq * M * L * P * D


def ms_deform_attn_flop_jit(inputs: List[Any], outputs: List[Any]) -> Number:
    """Flops of ``lite_detr::ms_deform_attn(value, shapes, starts, locations, weights)``."""
    return 4 * _points_times_channels(inputs[0], inputs[3])


def ms_deform_attn_key_aware_flop_jit(inputs: List[Any], outputs: List[Any]) -> Number:
    """Flops of ``lite_detr::ms_deform_attn_key_aware(query, value, key, shapes, starts, locs)``."""
    has_key = get_shape(inputs[2]) is not None
    return (4 + 4 * has_key + 2) * _points_times_channels(inputs[1], inputs[5])


# keyed by the op names as they appear in a traced graph
FLOP_HANDLES = {
    "lite_detr::ms_deform_attn": ms_deform_attn_flop_jit,
    "lite_detr::ms_deform_attn_key_aware": ms_deform_attn_key_aware_flop_jit,
}
