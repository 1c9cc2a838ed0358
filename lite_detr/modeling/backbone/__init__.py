"""Backbones and adapters: detectron2's ResNet, Swin Transformer, the multi-scale neck, and
BatchNorm folding for inference (a deployment step: :mod:`lite_detr.deploy`)."""

from .batchnorm_folding import (
    BatchNormFoldedConv2d,
    fold_batchnorm_at_inference,
    folded_conv_parameters,
)
from .neck import MultiScaleNeck
from .resnet import make_resnet_stages
from .swin import SwinTransformer

__all__ = [
    "BatchNormFoldedConv2d",
    "MultiScaleNeck",
    "SwinTransformer",
    "fold_batchnorm_at_inference",
    "folded_conv_parameters",
    "make_resnet_stages",
]
