"""
Multi-scale deformable sampling ops: the standard one (Deformable DETR) and the key-aware one
(Lite DETR), compiled for CPU and CUDA in ``lite_detr._C`` with pure-PyTorch references beside them.
"""

from . import reference
from .flop_count import register_default_flop_handles
from .ms_deform_attn import (
    compiled_ops_available,
    compiled_ops_load_error,
    cpu_kernels,
    ms_deform_attn,
    ms_deform_attn_key_aware,
)

__all__ = [
    "ms_deform_attn",
    "ms_deform_attn_key_aware",
    "compiled_ops_available",
    "compiled_ops_load_error",
    "cpu_kernels",
    "reference",
]

register_default_flop_handles()  # plain fvcore / detectron2 FlopCountAnalysis count our ops
