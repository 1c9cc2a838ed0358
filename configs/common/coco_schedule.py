"""Step schedules for COCO at batch size 16 (one epoch ~ 7500 iterations), as detrex.

``lr_multiplier_{12,36,50}ep``: lr x0.1 after 11 / 30 / 40 epochs. Set ``train.max_iter`` to
the same length (``12 * 7500`` ...) in the experiment config.
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

ITERS_PER_EPOCH = 7500


def default_coco_scheduler(epochs: int, decay_epochs: int, warmup_epochs: float = 0):
    """A LazyCall'ed multiplier: 1.0 until ``decay_epochs``, then 0.1, with linear warmup."""
    total = epochs * ITERS_PER_EPOCH
    scheduler = L(MultiStepParamScheduler)(
        values=[1.0, 0.1], milestones=[decay_epochs * ITERS_PER_EPOCH, total]
    )
    return L(WarmupParamScheduler)(
        scheduler=scheduler,
        warmup_length=warmup_epochs * ITERS_PER_EPOCH / total,
        warmup_method="linear",
        warmup_factor=0.001,
    )


lr_multiplier_12ep = default_coco_scheduler(12, 11)
lr_multiplier_36ep = default_coco_scheduler(36, 30)
lr_multiplier_50ep = default_coco_scheduler(50, 40)
