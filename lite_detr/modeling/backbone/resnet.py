"""Stages of detectron2's ResNet for DETR-style detectors, any depth."""

from typing import List

from detectron2.modeling.backbone import ResNet

__all__ = ["make_resnet_stages"]


def make_resnet_stages(
    depth: int = 50, norm: str = "FrozenBN", stride_in_1x1: bool = False
) -> List[list]:
    """
    ``ResNet.make_default_stages`` that works for every depth: ``stride_in_1x1`` only exists for
    bottleneck blocks (depth >= 50) and is dropped for ResNet-18/34, so a config can override the
    depth alone. ``stride_in_1x1=False`` matches torchvision-style (DETR) ImageNet weights.

    Returns:
        list[list[CNNBlockBase]]: the ``stages`` argument of ``ResNet``.
    """
    if depth not in (18, 34, 50, 101, 152):
        raise ValueError(f"ResNet depth must be one of 18, 34, 50, 101, 152, got {depth!r}")
    kwargs = {"norm": norm}
    if depth >= 50:
        kwargs["stride_in_1x1"] = stride_in_1x1
    return ResNet.make_default_stages(depth, **kwargs)
