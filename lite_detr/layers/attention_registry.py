"""The one registry of multi-scale deformable attention types, shared by encoders and decoders.

A config names the attention by its key ("deformable", "key_aware"); every encoder and decoder
builds it with :func:`build_deformable_attention`, so a new type is one entry here
(``ATTENTION_TYPES["my_attention"] = MyAttention``) and is then accepted everywhere. Each type
takes ``(embed_dim, num_heads, num_levels, num_points, dropout)`` and the call of
:class:`MultiScaleDeformableAttention`; type-specific options (KDA's ``separate_key_proj``) are
passed only to the types that have them.
"""

import inspect
from typing import Dict, Type

from torch import nn

from .key_aware_attention import KeyAwareDeformableAttention
from .multi_scale_deform_attn import MultiScaleDeformableAttention

__all__ = ["ATTENTION_TYPES", "build_deformable_attention", "check_attention_type"]

ATTENTION_TYPES: Dict[str, Type[nn.Module]] = {
    "deformable": MultiScaleDeformableAttention,  # Deformable DETR's MSDA
    "key_aware": KeyAwareDeformableAttention,  # Lite DETR's KDA
}


def check_attention_type(
    owner: str, attention: str, separate_key_proj: bool = False, field: str = "attention"
) -> None:
    """Raise ValueError naming ``owner`` and its argument ``field`` if ``attention`` is not
    registered, or if an option is set that this type does not have (``separate_key_proj`` on
    "deformable")."""
    if attention not in ATTENTION_TYPES:
        raise ValueError(
            f"{owner}: unknown {field} {attention!r}; expected one of {sorted(ATTENTION_TYPES)}"
        )
    params = inspect.signature(ATTENTION_TYPES[attention]).parameters
    if separate_key_proj and "separate_key_proj" not in params:
        raise ValueError(
            f"{owner}: separate_key_proj=True needs an attention with keys (e.g. 'key_aware'); "
            f"{attention!r} has none"
        )


def build_deformable_attention(
    attention: str,
    *,
    embed_dim: int,
    num_heads: int,
    num_levels: int,
    num_points: int,
    dropout: float = 0.0,
    separate_key_proj: bool = False,
    owner: str = "build_deformable_attention",
) -> nn.Module:
    """Build the attention registered as ``attention``.

    Args:
        embed_dim, num_heads, num_levels, num_points: sizes, see
            :class:`MultiScaleDeformableAttention`.
        dropout: dropout on the aggregated head outputs, before the output projection (0 in
            Deformable DETR, DINO and Lite DETR: their layers drop on the residual branch).
        separate_key_proj: KDA only: keys get their own projection (W_K != W_V).
        owner: name used in error messages (the encoder or decoder building it).
    """
    check_attention_type(owner, attention, separate_key_proj)
    kwargs = {"separate_key_proj": True} if separate_key_proj else {}
    return ATTENTION_TYPES[attention](
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_levels=num_levels,
        num_points=num_points,
        dropout=dropout,
        **kwargs,
    )
