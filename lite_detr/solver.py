"""Optimizer parameter groups of the DETR recipe, built on detectron2's
``get_default_optimizer_params`` (which in detectron2 v0.6 has no per-module lr factor)."""

from typing import Any, Dict, List

from detectron2.solver.build import get_default_optimizer_params, reduce_param_groups
from torch import nn

__all__ = ["get_detr_optimizer_params"]


def get_detr_optimizer_params(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    backbone_lr_factor: float = 0.1,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    backbone_prefix: str = "backbone.",
) -> List[Dict[str, Any]]:
    """Parameter groups for AdamW: backbone lr x ``backbone_lr_factor`` (DETR: 0.1), and
    ``weight_decay_norm`` / ``weight_decay_embed`` for normalisation layers and for embeddings
    (``nn.Embedding`` weights and ``nn.Parameter`` tables named ``*_embed``/``*_embeds``, e.g.
    level embeddings).

    Args:
        model: the detector; parameter names are matched against ``backbone_prefix``.
        base_lr, weight_decay: defaults of every other parameter.

    Returns:
        list of param-group dicts for a ``torch.optim.Optimizer``.
    """
    groups = get_default_optimizer_params(
        model, base_lr=base_lr, weight_decay=weight_decay, weight_decay_norm=weight_decay_norm
    )
    names = {p: n for n, p in model.named_parameters()}
    embeds = {
        p for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(False)
    }
    per_param = []
    for group in groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            h = dict(hyper)
            name = names[p]
            if name.startswith(backbone_prefix):
                h["lr"] = base_lr * backbone_lr_factor
            if p in embeds or name.rsplit(".", 1)[-1].endswith(("_embed", "_embeds")):
                h["weight_decay"] = weight_decay_embed
            per_param.append({"params": [p], **h})
    return reduce_param_groups(per_param)
