"""H-DETR, ResNet-50: two-stage Deformable DETR (the model of
``projects/lite_deformable_detr/configs/models/deformable_detr_r50.py``) with hybrid matching.

300 one-to-one queries (kept at inference) + 1500 one-to-many queries matched to the ground truth
repeated 6 times (training only), one-to-many loss weight 1 (H-DETR's defaults).
"""

from lite_detr.modeling.meta_arch.h_detr import HDETR

from ....lite_deformable_detr.configs.models.deformable_detr_r50 import model

model._target_ = HDETR
model.num_queries = 300  # one-to-one group
model.num_queries_one2many = 1500
model.one2many_repeats = 6
model.one2many_loss_weight = 1.0
