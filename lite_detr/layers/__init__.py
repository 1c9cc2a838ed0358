"""Reusable layers: multi-scale deformable attentions, FFN and position embedding."""

from .ffn import FFN
from .key_aware_attention import KeyAwareDeformableAttention
from .multi_scale_deform_attn import MultiScaleDeformableAttention
from .position_encoding import PositionEmbeddingSine

__all__ = [
    "FFN",
    "KeyAwareDeformableAttention",
    "MultiScaleDeformableAttention",
    "PositionEmbeddingSine",
]
