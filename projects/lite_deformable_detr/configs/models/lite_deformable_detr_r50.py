"""Lite-Deformable-DETR, ResNet-50, H3L1-(2+1)x3 with key-aware deformable attention (KDA).

Two-stage Deformable DETR R50 with the interleaved encoder of Lite DETR (wide FFN 1024, as the
baseline's). Variants are overrides:

* ``model.encoder.num_high_levels=2`` (H2L2), ``model.encoder.num_high_updates=3
  model.encoder.num_blocks=2`` ((3+1)x2), ...
* KDA off (encoder and decoder): ``model.encoder.attention=deformable``
* the baseline encoder instead of the interleaved one: ``model.encoder='${baseline_encoder}'``
"""

from detectron2.config import LazyCall as L

from lite_detr.modeling import DeformableEncoder, InterleavedEncoder
from lite_detr.modeling.meta_arch.deformable_detr import LiteDeformableDETR

from .deformable_detr_r50 import model

model._target_ = LiteDeformableDETR
model.encoder = L(InterleavedEncoder)(
    num_blocks=3,  # B
    num_high_updates=2,  # A
    num_high_levels=3,  # H3L1
    embed_dim="${..embed_dim}",
    num_heads=8,
    num_levels="${..num_feature_levels}",
    num_points=4,
    feedforward_dim=1024,
    low_feedforward_dim=256,
    dropout=0.0,
    attention="key_aware",
)

# Deformable DETR's 6-layer encoder, swapped in by ``model.encoder='${baseline_encoder}'``; the
# decoder's cross-attention follows its ``attention`` (override it to keep KDA there).
baseline_encoder = L(DeformableEncoder)(
    num_layers=6,
    embed_dim="${model.embed_dim}",
    num_heads=8,
    num_levels="${model.num_feature_levels}",
    num_points=4,
    feedforward_dim=1024,
    dropout=0.0,
    attention="deformable",
)
