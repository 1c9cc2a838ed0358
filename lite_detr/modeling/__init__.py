"""Detector components: backbone adapters, encoders, decoders, detectors, matcher, criterion.

Configs import everything they build from here (``from lite_detr.modeling import DINO, ...``).
"""

from .backbone import MultiScaleNeck, SwinTransformer, make_resnet_stages
from .criterion import SetCriterion
from .decoders import DeformableDecoder, DeformableDecoderLayer
from .denoising import ContrastiveDenoising
from .encoders import DeformableEncoder, InterleavedEncoder
from .matcher import HungarianMatcher
from .meta_arch import (  # noqa: F401  (the Lite* aliases: configs saved before 2026-12-08 name them)
    DINO,
    HDETR,
    DeformableDETR,
    LiteDeformableDETR,
    LiteDINO,
    LiteHDETR,
    TwoStageDeformableDETR,
)

__all__ = [
    "DINO",
    "ContrastiveDenoising",
    "DeformableDETR",
    "DeformableDecoder",
    "DeformableDecoderLayer",
    "DeformableEncoder",
    "HDETR",
    "HungarianMatcher",
    "InterleavedEncoder",
    "MultiScaleNeck",
    "SetCriterion",
    "SwinTransformer",
    "TwoStageDeformableDETR",
    "make_resnet_stages",
]
