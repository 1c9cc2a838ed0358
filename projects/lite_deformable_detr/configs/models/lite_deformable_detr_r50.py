"""Lite-Deformable-DETR, ResNet-50, H3L1-(2+1)x3 with key-aware deformable attention (KDA).

Two-stage Deformable DETR R50 (``deformable_detr_r50.py``) with only the encoder changed: Lite
DETR's interleaved encoder at Deformable DETR's widths (FFN 1024, dropout 0.1), and KDA in the
decoder's cross-attention too (as the released Lite-DINO). Variants are overrides:

* ``model.encoder.num_high_levels=2`` (H2L2), ``model.encoder.num_high_updates=3
  model.encoder.num_blocks=2`` ((3+1)x2), ...
* KDA off: ``model.encoder.attention=deformable model.decoder.cross_attention=deformable``
* the baseline encoder instead of the interleaved one: ``model.encoder='${baseline_encoder}'``
"""

from detectron2.config import LazyCall as L

from lite_detr.modeling import InterleavedEncoder
from lite_detr.modeling.meta_arch import LiteDeformableDETR

from .deformable_detr_r50 import model

# Deformable DETR's 6-layer encoder, swapped in by ``model.encoder='${baseline_encoder}'``; a
# top-level node, so its interpolations name their keys in full
baseline_encoder = model.encoder
baseline_encoder.embed_dim = "${model.embed_dim}"
baseline_encoder.num_levels = "${model.num_feature_levels}"

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
    dropout=0.1,
    attention="key_aware",
    attention_dropout=0.0,
    separate_key_proj=False,
)
model.decoder.cross_attention = "key_aware"
