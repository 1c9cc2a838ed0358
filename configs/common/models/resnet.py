"""ResNet-50 and the multi-scale neck over its res3-res5: the backbone and neck of every R50
detector here (DINO, Deformable DETR, H-DETR and their Lite versions).

Functions, so that each model config gets its own nodes; a model config places them with
``backbone=resnet50_backbone(), neck=multi_scale_neck()``.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from lite_detr.modeling import MultiScaleNeck, make_resnet_stages


def resnet50_backbone():
    """torchvision's ResNet-50 layout (stride in the 3x3 conv), FrozenBN, stem and res2 frozen (as
    the released DINO / Lite-DINO and Deformable DETR), giving res3-res5."""
    return L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        # make_resnet_stages = ResNet.make_default_stages that also accepts depth 18/34
        stages=L(make_resnet_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=2,
    )


def multi_scale_neck():
    """The neck over ResNet-50's res3-res5, to be placed at ``model.neck``: its width and level
    count interpolate the model's ``embed_dim`` / ``num_feature_levels`` (the fourth level is a
    stride-2 conv on res5). Restate ``input_shapes`` when changing the backbone (R18/34: 128, 256,
    512 channels; Swin-T: ``projects/lite_dino/configs/models/swin_t.py``)."""
    return L(MultiScaleNeck)(
        input_shapes={
            "res3": L(ShapeSpec)(channels=512, stride=8),
            "res4": L(ShapeSpec)(channels=1024, stride=16),
            "res5": L(ShapeSpec)(channels=2048, stride=32),
        },
        in_features=["res3", "res4", "res5"],
        out_channels="${..embed_dim}",
        num_outs="${..num_feature_levels}",
        num_groups=32,
    )
