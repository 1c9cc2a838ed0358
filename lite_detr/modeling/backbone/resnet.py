"""Helpers building detectron2's ResNet for DETR-style detectors, any depth."""

from typing import List, Sequence

from detectron2.modeling.backbone import BasicStem, ResNet

__all__ = ["make_resnet_stages", "make_resnet"]


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


def make_resnet(
    depth: int = 50,
    out_features: Sequence[str] = ("res3", "res4", "res5"),
    norm: str = "FrozenBN",
    freeze_at: int = 1,
    stride_in_1x1: bool = False,
) -> ResNet:
    """
    Detectron2's ``ResNet`` as DINO uses it: FrozenBN, stem frozen (``freeze_at=1``), res3-res5
    out (strides 8/16/32; channels 128/256/512 for depth < 50, 512/1024/2048 otherwise).
    """
    return ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm=norm),
        stages=make_resnet_stages(depth, norm=norm, stride_in_1x1=stride_in_1x1),
        out_features=list(out_features),
        freeze_at=freeze_at,
    )
