"""Detector components: backbone adapters, encoders, decoders, detectors, matcher, criterion.

Importing this package registers :class:`DINO` and :class:`LiteDINO` in detectron2's
``META_ARCH_REGISTRY``.
"""

from .backbone import MultiScaleNeck, SwinTransformer, make_resnet_stages
from .criterion import SetCriterion
from .decoders import DeformableDecoder, DeformableDecoderLayer
from .denoising import ContrastiveDenoising
from .encoders import DeformableEncoder, InterleavedEncoder
from .matcher import HungarianMatcher
from .meta_arch import DINO, LiteDINO

__all__ = [
    "DINO",
    "ContrastiveDenoising",
    "DeformableDecoder",
    "DeformableDecoderLayer",
    "DeformableEncoder",
    "HungarianMatcher",
    "InterleavedEncoder",
    "LiteDINO",
    "MultiScaleNeck",
    "SetCriterion",
    "SwinTransformer",
    "make_resnet_stages",
]
