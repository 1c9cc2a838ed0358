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

from detectron2.config import LazyCall as L

from lite_detr.modeling import InterleavedEncoder, LiteDINO

from .dino_r50 import model

# DINO's 6-layer deformable encoder, swapped in by ``model.encoder='${baseline_encoder}'``; a
# top-level node, so its interpolations name their keys in full
baseline_encoder = model.encoder
baseline_encoder.embed_dim = "${model.embed_dim}"
baseline_encoder.num_levels = "${model.num_feature_levels}"

model._target_ = LiteDINO
model.encoder = L(InterleavedEncoder)(
    num_blocks=3,  # B
    num_high_updates=2,  # A
    num_high_levels=3,  # H3L1
    embed_dim="${..embed_dim}",
    num_heads=8,
    num_levels="${..num_feature_levels}",
    num_points=4,
    feedforward_dim=2048,
    low_feedforward_dim=256,
    dropout=0.0,
    attention="key_aware",
    attention_dropout=0.0,
    separate_key_proj=False,  # W_K = W_V, the paper's and the release's
)
model.decoder.cross_attention = "key_aware"
