"""Detectors registered in detectron2's ``META_ARCH_REGISTRY`` (importing registers them)."""

from .deformable_detr import DeformableDETR, LiteDeformableDETR
from .dino import DINO, LiteDINO, VariantTag
from .h_detr import HDETR, LiteHDETR

__all__ = [
    "DINO",
    "DeformableDETR",
    "HDETR",
    "LiteDINO",
    "LiteDeformableDETR",
    "LiteHDETR",
    "VariantTag",
]
