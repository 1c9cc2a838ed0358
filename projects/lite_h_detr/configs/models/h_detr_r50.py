"""H-DETR, ResNet-50: two-stage Deformable DETR with box refinement and hybrid matching, as
H-DETR's R50 36-epoch results (Jia et al., table 1 and its release's script).

Deformable DETR's model (``projects/lite_deformable_detr/configs/models/deformable_detr_r50.py``:
binary proposals over all tokens, positional queries from the proposals, no final decoder norm,
one head per layer, class loss weight 2) with H-DETR's settings: FFN 2048, dropout 0, mixed
query selection (learned content queries, :class:`HDETR`), look-forward-twice, top-100
detections at test (the release's ``--topk`` default; only its Swin-L results keep 300); 300
one-to-one queries (kept at inference) + 1500 one-to-many queries
matched to the ground truth repeated 6 times (training only), one-to-many loss weight 1.
"""

from lite_detr.modeling import HDETR

from ....lite_deformable_detr.configs.models.deformable_detr_r50 import model

model._target_ = HDETR
model.encoder.feedforward_dim = 2048
model.encoder.dropout = 0.0
model.decoder.feedforward_dim = 2048
model.decoder.dropout = 0.0
model.decoder.look_forward_twice = True
model.select_box_nums_for_evaluation = 100  # the R50 release's --topk (Swin-L: 300)
model.num_queries = 300  # one-to-one group
model.num_queries_one2many = 1500
model.one2many_repeats = 6
model.one2many_loss_weight = 1.0
