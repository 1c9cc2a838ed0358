"""Backbone adapters: detectron2's ResNet and the multi-scale neck."""

from .neck import MultiScaleNeck
from .resnet import make_resnet, make_resnet_stages

__all__ = ["MultiScaleNeck", "make_resnet", "make_resnet_stages"]
