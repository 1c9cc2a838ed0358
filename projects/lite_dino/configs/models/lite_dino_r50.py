"""Lite-DINO-4scale, ResNet-50, H3L1-(2+1)x3 with key-aware deformable attention (KDA).

DINO R50 with the interleaved encoder of Lite DETR, and KDA in the decoder's cross-attention too
(the release). Variants are overrides:

* ``model.encoder.num_high_levels=2`` (H2L2), ``model.encoder.num_high_updates=3
  model.encoder.num_blocks=2`` ((3+1)x2), ...
* KDA off: ``model.encoder.attention=deformable model.decoder.cross_attention=deformable``
  (each is its own choice)
* the baseline encoder instead of the interleaved one: ``model.encoder='${baseline_encoder}'``
  (the decoder keeps KDA)
"""

from .....configs.common.models.transformer import interleaved_encoder, top_level
from .dino_r50 import model

# DINO's 6-layer deformable encoder, swapped back in by ``model.encoder='${baseline_encoder}'``
baseline_encoder = top_level(model.encoder)

model.encoder = interleaved_encoder(feedforward_dim=2048, dropout=0.0)  # H3L1-(2+1)x3, KDA
model.decoder.cross_attention = "key_aware"
