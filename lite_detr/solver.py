"""Optimizer parameter groups of the DETR recipe, built on detectron2's
``get_default_optimizer_params`` (which in detectron2 v0.6 has no per-module lr factor), and the
length of an epoch in iterations."""

import math
from typing import Any, Dict, List, Mapping

from detectron2.solver.build import get_default_optimizer_params, reduce_param_groups
from torch import nn

__all__ = ["get_detr_optimizer_params", "iterations_per_epoch"]


def get_detr_optimizer_params(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    backbone_lr_factor: float = 0.1,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    backbone_prefix: str = "backbone.",
    lr_multipliers: Mapping[str, float] | None = None,
) -> List[Dict[str, Any]]:
    """Parameter groups for AdamW: backbone lr x ``backbone_lr_factor`` (DETR: 0.1), lr x
    ``lr_multipliers[key]`` for parameters whose name contains ``key``, and
    ``weight_decay_norm`` / ``weight_decay_embed`` for normalisation layers and for embeddings
    (``nn.Embedding`` weights and ``nn.Parameter`` tables named ``*_embed``/``*_embeds``, e.g.
    level embeddings).

    Args:
        model: the detector; parameter names are matched against ``backbone_prefix``.
        base_lr, weight_decay: defaults of every other parameter.
        lr_multipliers: name substring -> lr factor, e.g. ``{"sampling_offsets": 0.1}``
            (Deformable DETR's ``lr_linear_proj_mult``); factors of several matching keys (and
            the backbone's) multiply. A key that matches no parameter is an error.

    Returns:
        list of param-group dicts for a ``torch.optim.Optimizer``.
    """
    groups = get_default_optimizer_params(
        model, base_lr=base_lr, weight_decay=weight_decay, weight_decay_norm=weight_decay_norm
    )
    lr_multipliers = dict(lr_multipliers or {})
    names = {p: n for n, p in model.named_parameters()}
    unmatched = [k for k in lr_multipliers if not any(k in n for n in names.values())]
    if unmatched:
        raise ValueError(
            f"optimizer.params.lr_multipliers: {unmatched} match no parameter name of "
            f"{type(model).__name__} (e.g. {next(iter(names.values()), None)!r}); fix or "
            "remove them"
        )
    embeds = {
        p for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(False)
    }
    per_param = []
    for group in groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            h = dict(hyper)
            name = names[p]
            factor = backbone_lr_factor if name.startswith(backbone_prefix) else 1.0
            for key, mult in lr_multipliers.items():
                if key in name:
                    factor *= mult
            if factor != 1.0:
                h["lr"] = base_lr * factor
            if p in embeds or name.rsplit(".", 1)[-1].endswith(("_embed", "_embeds")):
                h["weight_decay"] = weight_decay_embed
            per_param.append({"params": [p], **h})
    return reduce_param_groups(per_param)


def iterations_per_epoch(num_images: int, total_batch_size: int) -> int:
    """Iterations of one epoch, a pass over ``num_images`` training images at
    ``total_batch_size`` images per iteration: ceil(num_images / total_batch_size).

    The releases of Deformable DETR, H-DETR, DINO and Lite DETR count an epoch as one pass of
    their distributed sampler (every process drops its last incomplete batch), which is this
    number or one less: on COCO train2017's 118,287 images 7,393 at batch 16 (8 x 2, theirs
    too) and 3,697 at batch 32 (16 x 2: theirs is 3,696).
    """
    if num_images < 1 or total_batch_size < 1:
        raise ValueError(
            f"iterations_per_epoch: need at least one image and a batch of at least one, got "
            f"{num_images} images at batch {total_batch_size}"
        )
    return math.ceil(num_images / total_batch_size)
