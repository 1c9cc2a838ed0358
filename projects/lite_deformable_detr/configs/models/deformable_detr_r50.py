"""Two-stage Deformable DETR with iterative box refinement, ResNet-50: the baseline (plain 6-layer
deformable encoder).

Deformable DETR's settings (Zhu et al., table 1, "++ two-stage"): FFN 1024 in encoder and
decoder, 300 queries from the encoder proposals, no denoising, no look-forward-twice, one box and
class head per decoder layer, focal loss with class weight 2, top-100 detections at test.
Every knob is a dotted override, e.g. ``model.num_queries=100``.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from lite_detr.layers import PositionEmbeddingSine
from lite_detr.modeling import (
    DeformableDecoder,
    DeformableEncoder,
    HungarianMatcher,
    MultiScaleNeck,
    SetCriterion,
    make_resnet_stages,
)
from lite_detr.modeling.meta_arch.deformable_detr import DeformableDETR

model = L(DeformableDETR)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(make_resnet_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=1,
    ),
    # restate the channels when changing the backbone depth (R18/34: 128, 256, 512)
    neck=L(MultiScaleNeck)(
        input_shapes={
            "res3": L(ShapeSpec)(channels=512, stride=8),
            "res4": L(ShapeSpec)(channels=1024, stride=16),
            "res5": L(ShapeSpec)(channels=2048, stride=32),
        },
        in_features=["res3", "res4", "res5"],
        out_channels="${..embed_dim}",
        num_outs="${..num_feature_levels}",
        num_groups=32,
    ),
    # num_pos_feats = embed_dim / 2; Deformable DETR's temperature 10000
    position_embedding=L(PositionEmbeddingSine)(
        num_pos_feats=128, temperature=10000, normalize=True, offset=-0.5
    ),
    encoder=L(DeformableEncoder)(
        num_layers=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        num_levels="${..num_feature_levels}",
        num_points=4,
        feedforward_dim=1024,
        dropout=0.0,
        attention="deformable",
    ),
    decoder=L(DeformableDecoder)(
        num_classes="${..num_classes}",
        num_layers=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        num_levels="${..num_feature_levels}",
        num_points=4,
        feedforward_dim=1024,
        dropout=0.0,
        # follows the encoder: one override (model.encoder.attention=...) switches KDA everywhere
        cross_attention="${..encoder.attention}",
        look_forward_twice=False,
        share_heads=False,
    ),
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
        weight_dict={"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        focal_alpha=0.25,
        focal_gamma=2.0,
    ),
    denoising=None,
    num_classes=80,
    embed_dim=256,
    num_queries=300,
    num_feature_levels=4,
    select_box_nums_for_evaluation=100,
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
)
