"""DINO-4scale, ResNet-50: the baseline (plain 6-layer deformable encoder).

Every knob is a dotted override, e.g. ``model.num_queries=300``; sizes shared by several modules
are interpolated from ``model.embed_dim`` / ``model.num_feature_levels`` / ``model.num_classes``.
"""

from detectron2.config import LazyCall as L

from lite_detr.layers import PositionEmbeddingSine
from lite_detr.modeling import DINO, ContrastiveDenoising, HungarianMatcher, SetCriterion

from .....configs.common.models.resnet import multi_scale_neck, resnet50_backbone
from .....configs.common.models.transformer import deformable_decoder, deformable_encoder

model = L(DINO)(
    backbone=resnet50_backbone(),
    neck=multi_scale_neck(),
    # num_pos_feats = embed_dim / 2; temperature 20 and no -0.5 offset, as the released
    # DINO / Lite-DINO (so that their weights give their outputs)
    position_embedding=L(PositionEmbeddingSine)(
        num_pos_feats=128, temperature=20, normalize=True, offset=0.0
    ),
    encoder=deformable_encoder(feedforward_dim=2048, dropout=0.0),
    decoder=deformable_decoder(
        feedforward_dim=2048,
        dropout=0.0,
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
