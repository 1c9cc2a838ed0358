"""Lite-H-DETR, ResNet-50, H3L1-(2+1)x3 with key-aware deformable attention (KDA).

H-DETR R50 (``h_detr_r50.py``) with only the encoder changed: Lite DETR's interleaved encoder at
H-DETR's widths (FFN 2048, dropout 0), and KDA in the decoder's cross-attention too. The
overrides of Lite-Deformable-DETR select the variants (``model.encoder.num_high_levels=2``,
...); ``model.encoder='${baseline_encoder}'`` swaps the 6-layer deformable encoder back in.
"""

from .....configs.common.models.transformer import interleaved_encoder, top_level
from .h_detr_r50 import model

# H-DETR's 6-layer encoder, swapped back in by ``model.encoder='${baseline_encoder}'``
baseline_encoder = top_level(model.encoder)

model.encoder = interleaved_encoder(feedforward_dim=2048, dropout=0.0)  # H3L1-(2+1)x3, KDA
model.decoder.cross_attention = "key_aware"
