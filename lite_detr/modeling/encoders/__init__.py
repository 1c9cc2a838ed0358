"""Multi-scale transformer encoders: the deformable baseline and Lite DETR's interleaved one."""

from .deformable_encoder import DeformableEncoder
from .encoder_layer import DeformableEncoderLayer, JointEncoderLayer, get_reference_points
from .interleaved_encoder import InterleavedEncoder

__all__ = [
    "DeformableEncoder",
    "DeformableEncoderLayer",
    "InterleavedEncoder",
    "JointEncoderLayer",
    "get_reference_points",
]
