"""Reusable layers: multi-scale deformable attentions and their registry, FFN, MLP, position
embeddings, and the CPU-inference variants of nn.Linear and FFN that
:func:`lite_detr.deploy.optimize_for_cpu_inference` swaps in."""

from .attention_registry import ATTENTION_TYPES, build_deformable_attention
from .ffn import FFN, TokenChunkedFFN
from .key_aware_attention import KeyAwareDeformableAttention
from .mlp import MLP
from .multi_scale_deform_attn import MultiScaleDeformableAttention
from .onednn_linear import OneDNNLinear
from .position_encoding import PositionEmbeddingSine, box_sine_embedding

__all__ = [
    "ATTENTION_TYPES",
    "FFN",
    "KeyAwareDeformableAttention",
    "MLP",
    "MultiScaleDeformableAttention",
    "OneDNNLinear",
    "PositionEmbeddingSine",
    "TokenChunkedFFN",
    "box_sine_embedding",
    "build_deformable_attention",
]
