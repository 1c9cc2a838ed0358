"""Detectors registered in detectron2's ``META_ARCH_REGISTRY``."""

from .dino import DINO, LiteDINO, VariantTag

__all__ = ["DINO", "LiteDINO", "VariantTag"]
