"""Detectors registered in detectron2's ``META_ARCH_REGISTRY`` (importing registers them), and
their shared, unregistered base :class:`TwoStageDeformableDETR`."""

from .deformable_detr import DeformableDETR, LiteDeformableDETR
from .dino import DINO, LiteDINO
from .h_detr import HDETR, LiteHDETR
from .two_stage import TwoStageDeformableDETR, VariantTag

__all__ = [
    "DINO",
    "DeformableDETR",
    "HDETR",
    "LiteDINO",
    "LiteDeformableDETR",
    "LiteHDETR",
    "TwoStageDeformableDETR",
    "VariantTag",
]
