"""FLOP counting for models that use the compiled ``lite_detr`` ops (fvcore handles).

fvcore counts a traced graph op by op and skips ops it has no handle for (with a warning), so
without these handles the deformable / key-aware attention kernels count as zero and the encoder,
the part Lite DETR makes cheaper, looks almost free. Counts are multiply-accumulates, as fvcore
counts matmuls.
"""

import logging
from typing import Any, Dict, List

from fvcore.nn.jit_handles import get_shape

__all__ = ["LITE_DETR_OP_HANDLES", "FlopCountAnalysis", "ms_deform_attn_flop_jit"]

logger = logging.getLogger(__name__)


def ms_deform_attn_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """
    ``lite_detr::ms_deform_attn(value (N, S, M, D), spatial_shapes, level_start_index,
    sampling_locations (N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P))``:
    per sample and channel, 4 MACs of bilinear interpolation and 1 of weighting.
    """
    n, _, m, d = get_shape(inputs[0])
    _, lq, _, levels, points, _ = get_shape(inputs[3])
    return n * lq * m * levels * points * d * 5


def ms_deform_attn_key_aware_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """
    ``lite_detr::ms_deform_attn_key_aware(query (N, Lq, M, D), value (N, S, M, D), key,
    spatial_shapes, level_start_index, sampling_locations (N, Lq, M, L, P, 2))``: per sample and
    channel, bilinear value (4 MACs), q.k (1) and the weighted sum (1); a separate key tensor
    costs another bilinear gather (4), while key = value (the default) shares one gather.
    """
    n, lq, m, d = get_shape(inputs[0])
    levels, points = get_shape(inputs[5])[3:5]
    shared = inputs[1].unique() == inputs[2].unique()
    per_channel = 4 + 1 + 1 + (0 if shared else 4)
    return n * lq * m * levels * points * d * per_channel


def scaled_dot_product_attention_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::scaled_dot_product_attention(q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv))``:
    q k^T and the weighted sum of v (fvcore 0.1.5 has no handle for it)."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


LITE_DETR_OP_HANDLES: Dict[str, Any] = {
    "lite_detr::ms_deform_attn": ms_deform_attn_flop_jit,
    "lite_detr::ms_deform_attn_key_aware": ms_deform_attn_key_aware_flop_jit,
    "aten::scaled_dot_product_attention": scaled_dot_product_attention_flop_jit,
}


def FlopCountAnalysis(model, inputs, with_lite_detr_ops: bool = True):
    """
    detectron2's ``FlopCountAnalysis`` (list[dict] inputs) with the ``lite_detr`` op handles.

    Args:
        model (nn.Module): a detectron2-style model taking list[dict].
        inputs (list[dict]): model inputs ("image" CHW tensor, ...).
        with_lite_detr_ops (bool): register the handles (False reproduces plain fvcore).
    """
    from detectron2.utils.analysis import FlopCountAnalysis as _D2FlopCountAnalysis

    flops = _D2FlopCountAnalysis(model, inputs)
    if with_lite_detr_ops:
        flops.set_op_handle(**LITE_DETR_OP_HANDLES)
    return flops
