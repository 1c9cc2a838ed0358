"""Two-stage Deformable DETR with iterative box refinement, ResNet-50: the baseline (plain 6-layer
deformable encoder).

Deformable DETR's published recipe ("++ two-stage", Zhu et al., table 1, and its release):
dropout 0.1 and FFN 1024 in encoder and decoder; foreground proposals from a num_classes-way
classifier ranked by its channel 0, their loss over all encoder tokens and all channels (every
target on channel 0); 300 queries whose content and positional parts both come from the
selected proposals (a 2C -> 2C projection + LayerNorm of their sine embedding, split C + C; the
positional part is the same in every decoder layer); no final decoder LayerNorm; one class and
box head per decoder layer; no denoising, no look-forward-twice; focal loss with class weight 2;
top-100 detections at test; sine temperature 10000 with the -0.5 offset; boxes clamped to 1e-5
before their logit. The optimizer (lr 2e-4, x0.1 on the sampling offsets, decay on every
parameter), batch (32) and schedule are in the experiment configs. Every knob is a dotted
override, e.g. ``model.num_queries=100``.
"""

from detectron2.config import LazyCall as L

from lite_detr.layers import PositionEmbeddingSine
from lite_detr.modeling import DeformableDETR, HungarianMatcher, SetCriterion

from .....configs.common.models.resnet import multi_scale_neck, resnet50_backbone
from .....configs.common.models.transformer import deformable_decoder, deformable_encoder

model = L(DeformableDETR)(
    backbone=resnet50_backbone(),
    neck=multi_scale_neck(),
    position_embedding=L(PositionEmbeddingSine)(
        num_pos_feats=128, temperature=10000, normalize=True, offset=-0.5
    ),
    encoder=deformable_encoder(feedforward_dim=1024, dropout=0.1),
    decoder=deformable_decoder(
        feedforward_dim=1024,
        dropout=0.1,
        look_forward_twice=False,
        share_heads=False,
        positional_queries="input",  # from the proposals (DeformableDETR.position_queries)
        final_norm=False,
        inverse_sigmoid_eps=1e-5,
    ),
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
        weight_dict={"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        focal_alpha=0.25,
        focal_gamma=2.0,
    ),
    num_classes=80,
    embed_dim=256,
    num_queries=300,
    num_feature_levels=4,
    binary_proposals=True,
    select_box_nums_for_evaluation=100,
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
)
