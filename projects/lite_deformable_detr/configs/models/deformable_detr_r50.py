"""Two-stage Deformable DETR with iterative box refinement, ResNet-50: the baseline (plain 6-layer
deformable encoder).

DINO R50's model (``projects/lite_dino/configs/models/dino_r50.py``: same backbone, neck, encoder,
decoder and criterion) with Deformable DETR's settings (Zhu et al., table 1, "++ two-stage"): FFN
1024 in encoder and decoder, 300 queries from the encoder proposals (their content too, see
:class:`DeformableDETR`), no denoising, no look-forward-twice, one box and class head per decoder
layer, focal loss with class weight 2, top-100 detections at test, sine temperature 10000 with
the -0.5 offset, boxes clamped to 1e-5 before their logit (Deformable DETR's release).
Every knob is a dotted override, e.g. ``model.num_queries=100``.
"""

from lite_detr.modeling.meta_arch.deformable_detr import DeformableDETR

from ....lite_dino.configs.models.dino_r50 import model

model._target_ = DeformableDETR
model.position_embedding.temperature = 10000
model.position_embedding.offset = -0.5
model.decoder.inverse_sigmoid_eps = 1e-5
model.encoder.feedforward_dim = 1024
model.decoder.feedforward_dim = 1024
model.decoder.look_forward_twice = False
model.decoder.share_heads = False
model.criterion.weight_dict.loss_class = 2.0
model.denoising = None
model.num_queries = 300
model.select_box_nums_for_evaluation = 100
