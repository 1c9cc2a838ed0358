"""FLOP counting for models that use the compiled ``lite_detr`` ops (fvcore handles).

fvcore counts a traced graph op by op and skips ops it has no handle for (with a warning), so
without these handles the deformable / key-aware attention kernels count as zero and the encoder,
the part Lite DETR makes cheaper, looks almost free. Counts are multiply-accumulates, as fvcore
counts matmuls.
"""

from typing import Any, Dict

from lite_detr.ops.flop_count import FLOP_HANDLES, scaled_dot_product_attention_flop_jit

__all__ = ["LITE_DETR_OP_HANDLES", "FlopCountAnalysis"]


# the compiled ops' own handles (lite_detr.ops.flop_count), plus the decoder's self-attention
LITE_DETR_OP_HANDLES: Dict[str, Any] = {
    **FLOP_HANDLES,
    "aten::scaled_dot_product_attention": scaled_dot_product_attention_flop_jit,
}


def _zero_flops(inputs, outputs) -> int:
    return 0


def FlopCountAnalysis(model, inputs, with_lite_detr_ops: bool = True):
    """
    detectron2's ``FlopCountAnalysis`` (list[dict] inputs) with the ``lite_detr`` op handles.

    Args:
        model (nn.Module): a detectron2-style model taking list[dict].
        inputs (list[dict]): model inputs ("image" CHW tensor, ...).
        with_lite_detr_ops (bool): count our ops; False counts them as zero, as fvcore did
            before ``lite_detr.ops`` added them to its default handles.
    """
    from detectron2.utils.analysis import FlopCountAnalysis as _D2FlopCountAnalysis

    flops = _D2FlopCountAnalysis(model, inputs)
    if with_lite_detr_ops:
        flops.set_op_handle(**LITE_DETR_OP_HANDLES)
    else:  # (a None handle would not override a default one)
        flops.set_op_handle(**dict.fromkeys(LITE_DETR_OP_HANDLES, _zero_flops))
    return flops
