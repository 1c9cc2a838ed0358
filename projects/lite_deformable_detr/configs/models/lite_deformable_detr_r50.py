"""Lite-Deformable-DETR, ResNet-50, H3L1-(2+1)x3 with key-aware deformable attention (KDA).

Two-stage Deformable DETR R50 (``deformable_detr_r50.py``) with only the encoder changed: Lite
DETR's interleaved encoder at Deformable DETR's widths (FFN 1024, dropout 0.1), and KDA in the
decoder's cross-attention too (as the released Lite-DINO). Variants are overrides:

* ``model.encoder.num_high_levels=2`` (H2L2), ``model.encoder.num_high_updates=3
  model.encoder.num_blocks=2`` ((3+1)x2), ...
* KDA off: ``model.encoder.attention=deformable model.decoder.cross_attention=deformable``
* the baseline encoder instead of the interleaved one: ``model.encoder='${baseline_encoder}'``
"""

from .....configs.common.models.transformer import interleaved_encoder, top_level
from .deformable_detr_r50 import model

# Deformable DETR's 6-layer encoder, swapped back in by ``model.encoder='${baseline_encoder}'``
baseline_encoder = top_level(model.encoder)

model.encoder = interleaved_encoder(feedforward_dim=1024, dropout=0.1)  # H3L1-(2+1)x3, KDA
model.decoder.cross_attention = "key_aware"
