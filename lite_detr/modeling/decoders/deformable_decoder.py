"""Deformable transformer decoder with iterative box refinement (Deformable DETR, DINO)."""

import copy
import math
from typing import Tuple

import torch
from torch import Tensor, nn

from lite_detr.layers import FFN, KeyAwareDeformableAttention, MultiScaleDeformableAttention

from ..box_ops import inverse_sigmoid

__all__ = ["MLP", "DeformableDecoderLayer", "DeformableDecoder", "box_sine_embedding"]

_CROSS_ATTENTIONS = {
    "deformable": MultiScaleDeformableAttention,
    "key_aware": KeyAwareDeformableAttention,
}


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (DETR's box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def box_sine_embedding(boxes: Tensor, num_feats: int = 128, temperature: float = 10000) -> Tensor:
    """Sine embedding of normalised boxes (DINO's ``gen_sineembed_for_position``).

    Args:
        boxes (Tensor): (N, Q, 4) normalised cxcywh (or (N, Q, 2) points).
        num_feats: features per coordinate.

    Returns:
        Tensor: (N, Q, num_feats * boxes.shape[-1]), coordinates in the order y, x, w, h.
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    coords = boxes.float()[..., None] * (2 * math.pi) / dim_t  # (N, Q, D, F)
    emb = torch.stack((coords[..., 0::2].sin(), coords[..., 1::2].cos()), dim=-1).flatten(-2)
    order = [1, 0] + list(range(2, boxes.shape[-1]))  # y before x, as in DINO
    return emb[..., order, :].flatten(-2)


class DeformableDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention, multi-scale cross-attention to the memory, FFN."""

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        feedforward_dim: int = 2048,
        dropout: float = 0.0,
        cross_attention: str = "deformable",
    ):
        """
        Args:
            cross_attention: "deformable" (Deformable DETR's MSDA) or "key_aware" (Lite DETR's
                KDA, docs/model.md section 5; the released Lite-DINO uses it in the decoder too).
        """
        super().__init__()
        if cross_attention not in _CROSS_ATTENTIONS:
            raise ValueError(
                f"cross_attention must be one of {sorted(_CROSS_ATTENTIONS)}, "
                f"got {cross_attention!r}"
            )
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout, batch_first=True)
        self.self_attn_norm = nn.LayerNorm(embed_dim)
        self.cross_attn = _CROSS_ATTENTIONS[cross_attention](
            embed_dim=embed_dim, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.cross_attn_norm = nn.LayerNorm(embed_dim)
        self.ffn = FFN(embed_dim, feedforward_dim, dropout)
        self.ffn_norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        memory_padding_mask: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            query (Tensor): (N, Q, C) content queries.
            query_pos (Tensor): (N, Q, C) positional queries.
            reference_points (Tensor): (N, Q, L, 4) normalised cxcywh boxes on each level.
            memory (Tensor): (N, S, C) encoder output.
            spatial_shapes (Tensor): (L, 2) int64; level_start_index (Tensor): (L,) int64.
            memory_padding_mask (Tensor or None): (N, S) bool, True = padding.
            self_attn_mask (Tensor or None): (Q, Q) bool, True = blocked.

        Returns:
            Tensor: (N, Q, C).
        """
        q = k = query + query_pos
        out = self.self_attn(q, k, query, attn_mask=self_attn_mask, need_weights=False)[0]
        query = self.self_attn_norm(query + self.dropout(out))
        out = self.cross_attn(
            query,
            memory,
            reference_points,
            spatial_shapes,
            level_start_index,
            key_padding_mask=memory_padding_mask,
            query_pos=query_pos,
        )
        query = self.cross_attn_norm(query + self.dropout(out))
        return self.ffn_norm(query + self.dropout(self.ffn(query)))


class DeformableDecoder(nn.Module):
    """Decoder of DINO / two-stage Deformable DETR with iterative box refinement.

    Each layer's box head refines the reference boxes of the next layer (gradients stopped between
    layers). Positional queries are an MLP of the sine embedding of the current reference boxes
    (DAB/DINO). With ``look_forward_twice`` (DINO, section 3.5) the box predicted by layer i
    is relative to the *undetached* reference of layer i-1, so layer i's loss also updates layer
    i-1's box head; without it (Deformable DETR) the reference is detached.

    The classification and box heads live here (one per layer; ``share_heads`` ties them as the
    released DINO / Lite-DINO do).
    """

    def __init__(
        self,
        num_classes: int,
        num_layers: int = 6,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        feedforward_dim: int = 2048,
        dropout: float = 0.0,
        cross_attention: str = "deformable",
        look_forward_twice: bool = True,
        share_heads: bool = True,
        inverse_sigmoid_eps: float = 1e-3,
    ):
        """
        Args:
            num_classes: K, output logits per query (sigmoid, no background class).
            num_layers: decoder layers (6).
            embed_dim, num_heads, num_levels, num_points, feedforward_dim, dropout: layer sizes.
            cross_attention: "deformable" or "key_aware", see :class:`DeformableDecoderLayer`.
            look_forward_twice: DINO's box prediction through the undetached previous reference.
            share_heads: one class head and one box head shared by all layers.
            inverse_sigmoid_eps: clamp of the boxes before their logit, when a layer refines
                them: 1e-3 in the released DINO / Lite-DINO, 1e-5 in Deformable DETR's. Boxes
                nearer than this to 0 or 1 (e.g. a selected border proposal, (1, 1, 1, 1)) get a
                bounded logit, so the value changes outputs.
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DeformableDecoder: num_layers must be >= 1, got {num_layers}")
        layer = DeformableDecoderLayer(
            embed_dim, num_heads, num_levels, num_points, feedforward_dim, dropout, cross_attention
        )
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.cross_attention = cross_attention
        self.look_forward_twice = look_forward_twice
        self.inverse_sigmoid_eps = inverse_sigmoid_eps
        self.ref_point_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2)
        self.norm = nn.LayerNorm(embed_dim)

        class_embed = nn.Linear(embed_dim, num_classes)
        nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))  # prior prob 0.01
        bbox_embed = MLP(embed_dim, embed_dim, 4, 3)
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        if share_heads:
            self.class_embed = nn.ModuleList([class_embed] * num_layers)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_layers)
        else:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_layers))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_layers))

    def forward(
        self,
        query: Tensor,
        reference_boxes_unsig: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        memory_padding_mask: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
            query (Tensor): (N, Q, C) initial content queries.
            reference_boxes_unsig (Tensor): (N, Q, 4) initial boxes, inverse-sigmoid of normalised
                cxcywh; treated as constants (detach proposals before passing them).
            memory (Tensor): (N, S, C) encoder memory, levels fine-to-coarse.
            spatial_shapes (Tensor): (L, 2) int64; level_start_index (Tensor): (L,) int64.
            valid_ratios (Tensor): (N, L, 2) valid (w, h) fraction of each padded level.
            memory_padding_mask (Tensor or None): (N, S) bool, True = padding.
            self_attn_mask (Tensor or None): (Q, Q) bool, True = blocked (denoising mask).

        Returns:
            logits (Tensor): (num_layers, N, Q, K) classification logits of every layer.
            boxes (Tensor): (num_layers, N, Q, 4) normalised cxcywh boxes of every layer.
        """
        if (
            query.shape[:2] != reference_boxes_unsig.shape[:2]
            or reference_boxes_unsig.shape[-1] != 4
        ):
            raise ValueError(
                f"DeformableDecoder: query {tuple(query.shape)} and reference boxes "
                f"{tuple(reference_boxes_unsig.shape)} must be (N, Q, C) and (N, Q, 4)"
            )
        reference = reference_boxes_unsig.sigmoid().detach()
        prev_reference = reference  # reference of the current layer, undetached if look-twice
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # (N, 1, L, 4)
        all_logits, all_boxes = [], []
        output = query
        for i, layer in enumerate(self.layers):
            ref_input = reference[:, :, None] * ratios  # (N, Q, L, 4) on the padded maps
            query_pos = self.ref_point_head(
                box_sine_embedding(ref_input[:, :, 0], self.embed_dim // 2).to(output.dtype)
            )
            output = layer(
                output,
                query_pos,
                ref_input,
                memory,
                spatial_shapes,
                level_start_index,
                memory_padding_mask,
                self_attn_mask,
            )
            hidden = self.norm(output)
            base = prev_reference if self.look_forward_twice else reference
            all_logits.append(self.class_embed[i](hidden))
            eps = self.inverse_sigmoid_eps
            all_boxes.append((self.bbox_embed[i](hidden) + inverse_sigmoid(base, eps)).sigmoid())
            # the next layer's reference comes from the un-normed output, as in DINO's release
            delta = self.bbox_embed[i](output)
            new_reference = (delta + inverse_sigmoid(reference, eps)).sigmoid()
            prev_reference = new_reference
            reference = new_reference.detach()
        return torch.stack(all_logits), torch.stack(all_boxes)

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, cross_attention={self.cross_attention!r}, "
            f"look_forward_twice={self.look_forward_twice}, "
            f"inverse_sigmoid_eps={self.inverse_sigmoid_eps}"
        )
