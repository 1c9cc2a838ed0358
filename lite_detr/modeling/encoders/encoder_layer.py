"""Post-norm deformable encoder layers and helpers shared by the encoders."""

from typing import Sequence, Tuple

import torch
from torch import nn

from lite_detr.layers import FFN, build_deformable_attention

from ..level_shapes import level_shapes

__all__ = [
    "check_encoder_inputs",
    "get_reference_points",
    "DeformableEncoderLayer",
    "JointEncoderLayer",
]


def get_reference_points(
    spatial_shapes: torch.Tensor | Sequence[Tuple[int, int]], valid_ratios: torch.Tensor
) -> torch.Tensor:
    """
    Reference points of the encoder tokens (Deformable DETR's ``get_reference_points``): the
    centre of each pixel, normalised by the valid (un-padded) extent of its image, then mapped
    into every level's valid region.

    Args:
        spatial_shapes (Tensor or list): (L, 2) int64 (H_l, W_l), or the L pairs (see
            :func:`~lite_detr.modeling.level_shapes.level_shapes`).
        valid_ratios (Tensor): (N, L, 2) valid fraction (w, h) of each level.

    Returns:
        Tensor: (N, S, L, 2) normalised (x, y), S = sum_l H_l * W_l, fine-to-coarse.
    """
    device, dtype = valid_ratios.device, valid_ratios.dtype
    points = []
    for lvl, (h, w) in enumerate(level_shapes(spatial_shapes)):
        # pixel centres 0.5, 1.5, ... (arange keeps symbolic sizes symbolic; linspace does not)
        ref_y, ref_x = torch.meshgrid(
            torch.arange(h, dtype=dtype, device=device) + 0.5,
            torch.arange(w, dtype=dtype, device=device) + 0.5,
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        points.append(torch.stack((ref_x, ref_y), -1))
    reference_points = torch.cat(points, 1)
    return reference_points[:, :, None] * valid_ratios[:, None]


def check_encoder_inputs(
    encoder_name: str,
    embed_dim: int,
    num_levels: int,
    query: torch.Tensor,
    query_pos: torch.Tensor,
    valid_ratios: torch.Tensor,
    shapes: Sequence[Tuple[int, int]],
) -> None:
    """
    Raise ValueError naming the offending encoder input, for what the encoder itself uses before
    its layers: ``query`` and ``query_pos``, which it slices (checked against each other, so
    ``query``'s channels first); the level sizes ``shapes`` (the (H_l, W_l) pairs of
    ``spatial_shapes``, host ints) against the S tokens of ``query``, from which it builds the
    reference points and splits F_L / F_H; ``valid_ratios``, which only it reads. The layers'
    attention modules check the key padding mask, and the op the level tensors (dtype, values,
    ``level_start_index``). Shapes as in :meth:`DeformableEncoder.forward`.
    """
    if query.dim() != 3 or query.shape[-1] != embed_dim:
        raise ValueError(
            f"{encoder_name}: query must be (N, S, {embed_dim}), got {tuple(query.shape)}"
        )
    if query_pos is None or query_pos.shape != query.shape:
        got = None if query_pos is None else tuple(query_pos.shape)
        raise ValueError(
            f"{encoder_name}: query_pos must have the shape of query {tuple(query.shape)}, "
            f"got {got}"
        )
    n = query.shape[0]
    if valid_ratios.shape != (n, num_levels, 2) or not valid_ratios.is_floating_point():
        raise ValueError(
            f"{encoder_name}: valid_ratios must be a ({n}, {num_levels}, 2) float tensor, got "
            f"shape {tuple(valid_ratios.shape)} and dtype {valid_ratios.dtype}"
        )
    total = sum(h * w for h, w in shapes)
    if total != query.shape[1]:
        raise ValueError(
            f"{encoder_name}: query has S={query.shape[1]} tokens but spatial_shapes "
            f"{[list(s) for s in shapes]} sum to {total}"
        )


class DeformableEncoderLayer(nn.Module):
    """
    Post-norm encoder layer: ``x = LN(x + Attn(x)); x = LN(x + FFN(x))``. The queries may be a
    subset of the keys/values (Lite DETR's high-only layers) or all of them.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        feedforward_dim: int = 2048,
        dropout: float = 0.0,
        attention: str = "deformable",
        attention_dropout: float = 0.0,
        separate_key_proj: bool = False,
    ):
        """
        Args:
            embed_dim, num_heads, num_levels, num_points: see
                :class:`lite_detr.layers.MultiScaleDeformableAttention`.
            feedforward_dim (int): hidden width of the FFN.
            dropout (float): dropout on the residual branches and inside the FFN.
            attention (str): a key of :data:`lite_detr.layers.ATTENTION_TYPES` ("deformable",
                "key_aware").
            attention_dropout (float): dropout inside the attention, before its output
                projection (0 in Deformable DETR, DINO and Lite DETR).
            separate_key_proj (bool): KDA's own key projection (``attention="key_aware"`` only).
        """
        super().__init__()
        self.self_attn = build_deformable_attention(
            attention,
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_levels=num_levels,
            num_points=num_points,
            dropout=attention_dropout,
            separate_key_proj=separate_key_proj,
            owner=type(self).__name__,
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.ffn = FFN(embed_dim, feedforward_dim, dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim)

    def attend(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention sub-layer with residual and norm."""
        attn = self.self_attn(
            query=query,
            value=value,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            key_padding_mask=key_padding_mask,
            query_pos=query_pos,
        )
        return self.norm1(query + self.dropout1(attn))

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query (Tensor): (N, Lq, C) tokens to update.
            query_pos (Tensor): (N, Lq, C) their position (+ level) embedding.
            reference_points (Tensor): (N, Lq, L, 2) their normalised reference points.
            value (Tensor): (N, S, C) all multi-scale tokens, the keys/values.
            spatial_shapes (Tensor): (L, 2) int64 (H_l, W_l).
            level_start_index (Tensor): (L,) int64.
            key_padding_mask (Tensor or None): (N, S) bool, True marks padding.

        Returns:
            Tensor: (N, Lq, C) updated tokens.
        """
        x = self.attend(
            query,
            query_pos,
            reference_points,
            value,
            spatial_shapes,
            level_start_index,
            key_padding_mask,
        )
        return self.norm2(x + self.dropout2(self.ffn(x)))


class JointEncoderLayer(DeformableEncoderLayer):
    """
    Lite DETR's joint layer (sec. 3.2 of the paper; section 4 of docs/model.md): all tokens are
    queries of one attention, then the low-level tokens F_L go through a light FFN with their own
    norm and the high-level tokens F_H through the wide FFN.
    """

    def __init__(self, *, low_feedforward_dim: int = 256, **kwargs):
        """
        Args:
            low_feedforward_dim (int): hidden width of the light FFN of F_L.
            kwargs: arguments of :class:`DeformableEncoderLayer` (``feedforward_dim`` is the
                wide FFN of F_H).
        """
        super().__init__(**kwargs)
        embed_dim = self.norm1.normalized_shape[0]
        dropout = self.dropout1.p
        self.low_ffn = FFN(embed_dim, low_feedforward_dim, dropout)
        self.low_dropout = nn.Dropout(dropout)
        self.low_norm = nn.LayerNorm(embed_dim)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        num_low_tokens: int = 0,
    ) -> torch.Tensor:
        """
        Same arguments as :meth:`DeformableEncoderLayer.forward` with query = value = all
        S tokens, plus ``num_low_tokens``: the first ``num_low_tokens`` of them are F_L.

        Returns:
            Tensor: (N, S, C) updated [F_L ; F_H].
        """
        x = self.attend(
            query,
            query_pos,
            reference_points,
            value,
            spatial_shapes,
            level_start_index,
            key_padding_mask,
        )
        x_low, x_high = x[:, :num_low_tokens], x[:, num_low_tokens:]
        x_low = self.low_norm(x_low + self.low_dropout(self.low_ffn(x_low)))
        x_high = self.norm2(x_high + self.dropout2(self.ffn(x_high)))
        return torch.cat((x_low, x_high), dim=1)
