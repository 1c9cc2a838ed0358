"""DINO-4scale, ResNet-50: the baseline (plain 6-layer deformable encoder).

Every knob is a dotted override, e.g. ``model.num_queries=300``; sizes shared by several modules
are interpolated from ``model.embed_dim`` / ``model.num_feature_levels`` / ``model.num_classes``.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from lite_detr.layers import PositionEmbeddingSine
from lite_detr.modeling import (
    DINO,
    ContrastiveDenoising,
    DeformableDecoder,
    DeformableEncoder,
    HungarianMatcher,
    MultiScaleNeck,
    SetCriterion,
    make_resnet_stages,
)

model = L(DINO)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        # make_resnet_stages = ResNet.make_default_stages that also accepts depth 18/34
        stages=L(make_resnet_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=2,  # stem and res2 frozen, as the released DINO / Lite-DINO
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
    # num_pos_feats = embed_dim / 2; temperature 20 and no -0.5 offset, as the released
    # DINO / Lite-DINO (so that their weights give their outputs)
    position_embedding=L(PositionEmbeddingSine)(
        num_pos_feats=128, temperature=20, normalize=True, offset=0.0
    ),
    encoder=L(DeformableEncoder)(
        num_layers=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        num_levels="${..num_feature_levels}",
        num_points=4,
        feedforward_dim=2048,
        dropout=0.0,
        attention="deformable",
        attention_dropout=0.0,
    ),
    decoder=L(DeformableDecoder)(
        num_classes="${..num_classes}",
        num_layers=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        num_levels="${..num_feature_levels}",
        num_points=4,
        feedforward_dim=2048,
        dropout=0.0,
        # an explicit choice, not the encoder's: swapping the encoder leaves the decoder as it is
        cross_attention="deformable",
        attention_dropout=0.0,
        separate_key_proj=False,
        look_forward_twice=True,
        share_heads=True,
        positional_queries="reference_boxes",  # DINO's: an MLP of each layer's boxes
        final_norm=True,
        inverse_sigmoid_eps=1e-3,  # as the released DINO / Lite-DINO
        num_ranking_only_classes="${..num_ranking_only_classes}",
    ),
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
        weight_dict={"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        focal_alpha=0.25,
        focal_gamma=2.0,
    ),
    denoising=L(ContrastiveDenoising)(
        num_classes="${..num_classes}",
        embed_dim="${..embed_dim}",
        num_dn_queries=100,
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
    ),
    num_classes=80,
    embed_dim=256,
    num_queries=900,
    num_feature_levels=4,
    binary_proposals=False,  # class-aware proposals, their loss over the top-900
    select_box_nums_for_evaluation=300,
    # 11 for converted release weights (their unused COCO-id rows rank, never report): see
    # docs/released_weights.md; 0 when training here
    num_ranking_only_classes=0,
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
)
