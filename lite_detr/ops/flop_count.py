"""fvcore FLOP handles of the compiled ops, so ``FlopCountAnalysis`` counts them.

Importing ``lite_detr.ops`` (which building any of our models does) adds these handles and one
for ``aten::scaled_dot_product_attention`` to fvcore's defaults, so a plain fvcore or detectron2
``FlopCountAnalysis(model, inputs)`` counts them with no handles passed. They can also be given
by hand::

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

__all__ = [
    "FLOP_HANDLES",
    "ms_deform_attn_flop_jit",
    "ms_deform_attn_key_aware_flop_jit",
    "scaled_dot_product_attention_flop_jit",
    "register_default_flop_handles",
]


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


def scaled_dot_product_attention_flop_jit(inputs: List[Any], outputs: List[Any]) -> Number:
    """``aten::scaled_dot_product_attention(q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv))``:
    q k^T and the weighted sum of v (fvcore 0.1.5 has no handle for it)."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def register_default_flop_handles() -> None:
    """
    Add our handles to fvcore's default ones (``fvcore.nn.flop_count._DEFAULT_SUPPORTED_OPS``,
    which every ``FlopCountAnalysis``, detectron2's included, starts from). fvcore offers no
    public registry, so its module dict is extended; a handle fvcore has already is kept.
    """
    import importlib

    # the module, not the function that `fvcore.nn.flop_count` names after `import fvcore.nn`
    defaults = importlib.import_module("fvcore.nn.flop_count")._DEFAULT_SUPPORTED_OPS
    for name, handle in {
        **FLOP_HANDLES,
        "aten::scaled_dot_product_attention": scaled_dot_product_attention_flop_jit,
    }.items():
        defaults.setdefault(name, handle)
