"""AdamW of the DETR recipe: lr 1e-4, backbone lr 1e-5, weight decay 1e-4, none on norms and
embeddings (``AdamW``), or on every parameter (``AdamWDecayAll``, as the released DINO and
Lite-DINO train). ``optimizer.params.model`` is set to the model before instantiating
(train_net)."""

import copy

import torch
from detectron2.config import LazyCall as L

from lite_detr.solver import get_detr_optimizer_params

AdamW = L(torch.optim.AdamW)(
    params=L(get_detr_optimizer_params)(
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        backbone_lr_factor=0.1,
        weight_decay_norm=0.0,
        weight_decay_embed=0.0,
        # name substring -> lr factor, e.g. {"sampling_offsets": 0.1} (Deformable DETR)
        lr_multipliers={},
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)

# the released DINO / Lite-DINO give every parameter (norms, embeddings, queries) the weight decay
AdamWDecayAll = copy.deepcopy(AdamW)
AdamWDecayAll.params.weight_decay_norm = "${..weight_decay}"
AdamWDecayAll.params.weight_decay_embed = "${..weight_decay}"
