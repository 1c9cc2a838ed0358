"""Reusable layers: multi-scale deformable attentions and their registry, FFN, MLP, a linear
layer that runs through oneDNN at CPU inference, and position embeddings."""

from .attention_registry import ATTENTION_TYPES, build_deformable_attention
from .ffn import FFN
from .key_aware_attention import KeyAwareDeformableAttention
from .linear import Linear
from .mlp import MLP
from .multi_scale_deform_attn import MultiScaleDeformableAttention
from .position_encoding import PositionEmbeddingSine, box_sine_embedding

__all__ = [
    "ATTENTION_TYPES",
    "FFN",
    "KeyAwareDeformableAttention",
    "Linear",
    "MLP",
    "MultiScaleDeformableAttention",
    "PositionEmbeddingSine",
    "box_sine_embedding",
    "build_deformable_attention",
]
