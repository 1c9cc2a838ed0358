import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.layers.batch_norm import FrozenBatchNorm2d
from detectron2.modeling.backbone import BasicStem, ResNet

from lite_detr.modeling.backbone import MultiScaleNeck, make_resnet_stages


def make_resnet18(freeze_at=1):
    """detectron2's ResNet-18 as the configs build it: FrozenBN, res3-res5 out."""
    return ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=make_resnet_stages(depth=18, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=freeze_at,
    )


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return make_resnet18().eval()


def test_resnet18_neck_levels(resnet18):
    assert {k: (v.channels, v.stride) for k, v in resnet18.output_shape().items()} == {
        "res3": (128, 8),
        "res4": (256, 16),
        "res5": (512, 32),
    }
    neck = MultiScaleNeck(resnet18.output_shape(), out_channels=64, num_outs=4)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outs = neck(resnet18(x))
    assert [tuple(o.shape) for o in outs] == [
        (2, 64, 8, 12),
        (2, 64, 4, 6),
        (2, 64, 2, 3),
        (2, 64, 1, 2),
    ]
    assert [s.stride for s in neck.output_shape()] == [8, 16, 32, 64]
    assert all(s.channels == 64 for s in neck.output_shape())
    # the stride-64 level is a 3x3/2 conv + GroupNorm on C5 itself, not on its projection
    extra_conv, extra_norm = neck.extra_convs[0]
    assert (extra_conv.in_channels, extra_conv.kernel_size, extra_conv.stride) == (
        512,
        (3, 3),
        (2, 2),
    )
    assert isinstance(extra_norm, torch.nn.GroupNorm) and extra_norm.num_groups == 32


def test_resnet_frozen_bn_and_stem(resnet18):
    assert any(isinstance(m, FrozenBatchNorm2d) for m in resnet18.modules())
    assert not any(p.requires_grad for p in resnet18.stem.parameters())
    assert all(p.requires_grad for p in resnet18.res5.parameters())


def test_make_resnet_stages_any_depth():
    # stride_in_1x1 is meaningless for basic blocks and must not break depth 18
    stages = make_resnet_stages(depth=18, stride_in_1x1=True)
    assert [len(s) for s in stages] == [2, 2, 2, 2]
    assert stages[0][0].out_channels == 64
    stages = make_resnet_stages(depth=50)
    assert stages[-1][-1].out_channels == 2048
    with pytest.raises(ValueError, match="depth"):
        make_resnet_stages(depth=42)


@pytest.mark.parametrize("depth", [18, 50])
def test_make_resnet_stages_width(depth):
    def shapes(stages):
        return [
            [(type(b).__name__, b.in_channels, b.out_channels, b.stride) for b in s] for s in stages
        ]

    # width 64 is detectron2's default ResNet, block for block
    default = ResNet.make_default_stages(
        depth, norm="BN", **({} if depth < 50 else {"stride_in_1x1": False})
    )
    assert shapes(make_resnet_stages(depth=depth, norm="BN", width=64)) == shapes(default)
    # width 32 halves every stage's channels and keeps the blocks and strides
    half = make_resnet_stages(depth=depth, norm="BN", width=32)
    assert shapes(half) == [
        [(name, i // 2, o // 2, s) for name, i, o, s in stage] for stage in shapes(default)
    ]
    resnet = ResNet(
        stem=BasicStem(in_channels=3, out_channels=32, norm="BN"),
        stages=half,
        out_features=["res3", "res4", "res5"],
    )
    expansion = 1 if depth < 50 else 4
    assert [v.channels for v in resnet.output_shape().values()] == [
        64 * expansion,
        128 * expansion,
        256 * expansion,
    ]
    outs = resnet(torch.randn(1, 3, 64, 64))
    assert outs["res5"].shape == (1, 256 * expansion, 2, 2)
    for bad in (0, 12, 64.0):
        with pytest.raises(ValueError, match="width must be a positive multiple of 8"):
            make_resnet_stages(depth=depth, width=bad)


def test_more_extra_levels_chain_on_previous_level():
    shapes = {"res4": ShapeSpec(channels=16, stride=16), "res5": ShapeSpec(channels=24, stride=32)}
    neck = MultiScaleNeck(
        shapes, in_features=["res4", "res5"], out_channels=32, num_outs=4, num_groups=8
    )
    feats = {"res4": torch.randn(1, 16, 8, 8), "res5": torch.randn(1, 24, 4, 4)}
    outs = neck(feats)
    assert [o.shape[-1] for o in outs] == [8, 4, 2, 1]
    assert [s.stride for s in neck.output_shape()] == [16, 32, 64, 128]
    assert neck.extra_convs[1][0].in_channels == 32


def test_bad_neck_arguments():
    shapes = {"res5": ShapeSpec(channels=24, stride=32)}
    with pytest.raises(ValueError, match="num_groups"):
        MultiScaleNeck(shapes, in_features=["res5"], out_channels=48, num_groups=32)
    with pytest.raises(ValueError, match="res3"):
        MultiScaleNeck(shapes, in_features=["res3", "res5"], out_channels=64)
    with pytest.raises(ValueError, match="num_outs"):
        MultiScaleNeck(shapes, in_features=["res5"], out_channels=64, num_outs=0)
    neck = MultiScaleNeck(shapes, in_features=["res5"], out_channels=64, num_outs=2)
    with pytest.raises(ValueError, match="res5"):
        neck({"res4": torch.randn(1, 24, 4, 4)})
