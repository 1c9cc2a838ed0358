"""Step schedules counted in epochs, as the releases' ``StepLR``: lr x0.1 after 11 / 30 / 40
epochs (``lr_multiplier_{12,36,50}ep``).

A multiplier is a function of the fraction of training done. Pair it with ``train.epochs`` of the
same length (12 / 36 / 50) and ``train.max_iter = None`` (``coco_train`` of ``train.py`` sets both):
``train_net.py`` then trains ``epochs * iters_per_epoch`` iterations, one epoch being one pass over
the training set at ``dataloader.train.total_batch_size``
(:func:`lite_detr.solver.iterations_per_epoch`), so the drop lands on the first iteration of epoch
12 / 31 / 41, the release's, on any dataset and batch.
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler


def default_coco_scheduler(epochs: int, decay_epochs: int, warmup_epochs: float = 0):
    """A LazyCall'ed multiplier: 1.0 for ``decay_epochs`` of ``epochs``, then 0.1, with linear
    warmup over ``warmup_epochs``."""
    scheduler = L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[decay_epochs, epochs])
    return L(WarmupParamScheduler)(
        scheduler=scheduler,
        warmup_length=warmup_epochs / epochs,
        warmup_method="linear",
        warmup_factor=0.001,
    )


lr_multiplier_12ep = default_coco_scheduler(12, 11)
lr_multiplier_36ep = default_coco_scheduler(36, 30)
lr_multiplier_50ep = default_coco_scheduler(50, 40)
