"""Lite-Deformable-DETR, ResNet-50, H3L1-(2+1)x3 with key-aware deformable attention (KDA).

Two-stage Deformable DETR R50 with Lite-DINO's interleaved encoder
(``projects/lite_dino/configs/models/lite_dino_r50.py``) at Deformable DETR's FFN width 1024.
Variants are overrides:

* ``model.encoder.num_high_levels=2`` (H2L2), ``model.encoder.num_high_updates=3
  model.encoder.num_blocks=2`` ((3+1)x2), ...
* KDA off (encoder and decoder): ``model.encoder.attention=deformable``
* the baseline encoder instead of the interleaved one: ``model.encoder='${baseline_encoder}'``
"""

from lite_detr.modeling.meta_arch.deformable_detr import LiteDeformableDETR

from ....lite_dino.configs.models.lite_dino_r50 import model as _lite_dino
from .deformable_detr_r50 import model

# Deformable DETR's 6-layer encoder, swapped in by ``model.encoder='${baseline_encoder}'`` (the
# decoder's cross-attention follows its ``attention``: override it to keep KDA there); a top-level
# node, so its interpolations name their keys in full
baseline_encoder = model.encoder
baseline_encoder.embed_dim = "${model.embed_dim}"
baseline_encoder.num_levels = "${model.num_feature_levels}"

model._target_ = LiteDeformableDETR
model.encoder = _lite_dino.encoder
model.encoder.feedforward_dim = 1024
