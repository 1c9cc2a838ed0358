"""FLOP counting for models that use the compiled ``lite_detr`` ops (fvcore handles).

fvcore counts a traced graph op by op and skips ops it has no handle for (with a warning), so
without these handles the deformable / key-aware attention kernels count as zero and the encoder,
the part Lite DETR makes cheaper, looks almost free. Counts are multiply-accumulates, as fvcore
counts matmuls.
"""

import logging
from typing import Any, Dict, List

from fvcore.nn.jit_handles import get_shape

from lite_detr.ops.flop_count import FLOP_HANDLES

__all__ = ["LITE_DETR_OP_HANDLES", "FlopCountAnalysis"]

logger = logging.getLogger(__name__)


def scaled_dot_product_attention_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::scaled_dot_product_attention(q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv))``:
    q k^T and the weighted sum of v (fvcore 0.1.5 has no handle for it)."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


# the compiled ops' own handles (lite_detr.ops.flop_count), plus the decoder's self-attention
LITE_DETR_OP_HANDLES: Dict[str, Any] = {
    **FLOP_HANDLES,
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
