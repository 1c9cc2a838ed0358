"""Stages of detectron2's ResNet for DETR-style detectors, any depth and width."""

from typing import List

from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

__all__ = ["make_resnet_stages"]

_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


def _out_channels(depth: int = 50, width: int = 64) -> List[int]:
    """Output channels of res2..res5 of :func:`make_resnet_stages` with this depth and width."""
    expansion = 1 if depth < 50 else 4
    return [width * expansion * 2**k for k in range(4)]


def make_resnet_stages(
    depth: int = 50, norm: str = "FrozenBN", stride_in_1x1: bool = False, width: int = 64
) -> List[list]:
    """
    ``ResNet.make_default_stages`` that works for every depth and width: ``stride_in_1x1`` only
    exists for bottleneck blocks (depth >= 50) and is dropped for ResNet-18/34, so a config can
    override the depth alone. ``stride_in_1x1=False`` matches torchvision-style (DETR) ImageNet
    weights.

    ``width`` is the channel count of res2's first block (64 in the standard ResNets; the stem's
    ``out_channels`` must equal it); every stage scales with it, so ``width=32`` is a ResNet with
    half the channels and about a quarter of the multiply-adds (the CPU demo's backbone). With
    the default 64 the stages are exactly ``ResNet.make_default_stages``'s.

    Returns:
        list[list[CNNBlockBase]]: the ``stages`` argument of ``ResNet``.
    """
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"ResNet depth must be one of 18, 34, 50, 101, 152, got {depth!r}")
    if not isinstance(width, int) or width < 8 or width % 8:
        raise ValueError(
            f"ResNet width must be a positive multiple of 8 (standard: 64), got {width!r}"
        )
    kwargs = {"norm": norm}
    if depth >= 50:
        kwargs["stride_in_1x1"] = stride_in_1x1
    if width == 64:
        return ResNet.make_default_stages(depth, **kwargs)
    out_channels = _out_channels(depth, width)
    in_channels = [width] + out_channels[:-1]
    block_class = BasicBlock if depth < 50 else BottleneckBlock
    stages = []
    for n, s, i, o in zip(_BLOCKS_PER_STAGE[depth], [1, 2, 2, 2], in_channels, out_channels):
        if depth >= 50:
            kwargs["bottleneck_channels"] = o // 4
        stages.append(
            ResNet.make_stage(
                block_class=block_class,
                num_blocks=n,
                stride_per_block=[s] + [1] * (n - 1),
                in_channels=i,
                out_channels=o,
                **kwargs,
            )
        )
    return stages
