"""Lite-DINO, half-width ResNet-18 from scratch, H3L1-(2+1)x1 with KDA, on synthetic shapes (CPU).

The ``make demo`` config: trains on a laptop CPU in minutes (see tools/run_demo.py). Smaller than
the paper's model everywhere except the structure: a ResNet-18 with half the channels (32 to
256), hidden size 128, FFN 512, 3 decoder layers, 100 queries, 20 denoising queries, one
interleaved encoder block (two high-level updates and one low-level update, KDA in encoder and
decoder). BatchNorm is trained (no ImageNet weights). AdamW at lr 8e-4 (x0.1 for the last 20%).

Measured on an idle 2-core CPU (tools/run_demo.py, 2 intra-op threads, 0.52 s/iteration):
800 iterations + evaluation in 7.4 min, shapes_val bbox AP 56.7 / AP50 70.9 / APs 51.5. The
same schedule at lr 4e-4 gave AP 47.7. The previous demo model (full-width ResNet-18, lr 2e-4,
1 thread) took 3.1x as long per iteration and reached AP 38.1-38.9 in 800 iterations.
"""

import torch
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ....configs.common.data.shapes import dataloader
from ....configs.common.train import train
from .models.lite_dino_r50 import baseline_encoder, model

# backbone: ResNet-18 trained from scratch, so BatchNorm is trained and nothing is frozen
model.backbone.stages.depth = 18
model.backbone.stages.norm = "BN"
model.backbone.stem.norm = "BN"
model.backbone.freeze_at = 0
# half-width ResNet-18 (res2's blocks have 32 channels, res5's 256): about a quarter of the
# backbone's multiply-adds, which were two thirds of a training step at full width
model.backbone.stem.out_channels = 32
model.backbone.stages.width = 32
model.neck.input_shapes.res3.channels = 64
model.neck.input_shapes.res4.channels = 128
model.neck.input_shapes.res5.channels = 256

model.embed_dim = 128
model.position_embedding.num_pos_feats = 64  # embed_dim / 2
model.num_classes = 4
model.num_queries = 100
model.select_box_nums_for_evaluation = 100

model.encoder.num_blocks = 1
model.encoder.num_high_updates = 2
model.encoder.num_high_levels = 3
model.encoder.num_heads = 4
model.encoder.feedforward_dim = 512
model.encoder.low_feedforward_dim = 128

# the 6-layer deformable encoder, for ``'model.encoder=${baseline_encoder}'``, at this size
baseline_encoder.num_heads = 4
baseline_encoder.feedforward_dim = 512

model.decoder.num_layers = 3
model.decoder.num_heads = 4
model.decoder.feedforward_dim = 512

model.denoising.num_dn_queries = 20

dataloader.train.total_batch_size = 4

optimizer = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=8e-4,  # a small model from scratch, 800 steps: 8e-4 gave AP 56.7, 4e-4 47.7
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)

train.max_iter = 800
train.output_dir = "./output/lite_dino_r18_shapes_cpu"
train.device = "cpu"
train.eval_period = 800  # evaluated once, at the end (set it with train.max_iter)
train.log_period = 20
train.checkpointer.period = 400
train.checkpointer.max_to_keep = 3
train.seed = 42

# constant lr after a short linear warm-up, x0.1 for the last 20% of train.max_iter (the
# schedule is a fraction of training: it scales with train.max_iter overrides)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[8], num_updates=10),
    warmup_length=0.02,
    warmup_factor=0.01,
)
