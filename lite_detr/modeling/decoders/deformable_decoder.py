"""Deformable transformer decoder with iterative box refinement (Deformable DETR, DINO)."""

import copy
import math
from typing import Tuple

import torch
from torch import Tensor, nn

from lite_detr.layers import FFN, MLP, box_sine_embedding, build_deformable_attention
from lite_detr.layers.attention_registry import check_attention_type

from ..box_ops import inverse_sigmoid

__all__ = ["DeformableDecoderLayer", "DeformableDecoder", "POSITIONAL_QUERIES"]

# where a decoder's positional queries come from (see DeformableDecoder)
POSITIONAL_QUERIES = ("reference_boxes", "input")


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
        attention_dropout: float = 0.0,
        separate_key_proj: bool = False,
    ):
        """
        Args:
            dropout: on the residual branches, inside the FFN and on the self-attention weights
                (as Deformable DETR's layer).
            cross_attention: a key of :data:`lite_detr.layers.ATTENTION_TYPES`: "deformable"
                (Deformable DETR's MSDA) or "key_aware" (Lite DETR's KDA, docs/model.md section
                5; the released Lite-DINO uses it in the decoder too).
            attention_dropout: dropout inside the cross-attention, before its output projection
                (0 in Deformable DETR, DINO and Lite DETR).
            separate_key_proj: KDA's own key projection (``cross_attention="key_aware"`` only).
        """
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout, batch_first=True)
        self.self_attn_norm = nn.LayerNorm(embed_dim)
        self.cross_attn = build_deformable_attention(
            cross_attention,
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_levels=num_levels,
            num_points=num_points,
            dropout=attention_dropout,
            separate_key_proj=separate_key_proj,
            owner=type(self).__name__,
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
    """Decoder of DINO / two-stage Deformable DETR / H-DETR with iterative box refinement.

    Each layer's box head refines the reference boxes of the next layer (gradients stopped between
    layers). The positional queries are either an MLP of the sine embedding of each layer's
    current reference boxes (``positional_queries="reference_boxes"``, DAB-DETR / DINO) or given
    by the detector and the same in every layer (``"input"``, Deformable DETR / H-DETR: a
    projection of the proposals' embedding). With ``look_forward_twice`` (DINO, section 3.5) the
    box predicted by layer i is relative to the *undetached* reference of layer i-1, so layer i's
    loss also updates layer i-1's box head; without it (Deformable DETR) the reference is
    detached.

    The classification and box heads live here (``class_embed`` / ``bbox_embed``, one per layer;
    ``share_heads`` ties them as the released DINO / Lite-DINO do). It satisfies
    :class:`~lite_detr.modeling.interfaces.QueryDecoder`.
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
        positional_queries: str = "reference_boxes",
        final_norm: bool = True,
        attention_dropout: float = 0.0,
        separate_key_proj: bool = False,
        num_ranking_only_classes: int = 0,
    ):
        """
        Args:
            num_classes: K, output logits per query (sigmoid, no background class).
            num_layers: decoder layers (6).
            embed_dim, num_heads, num_levels, num_points, feedforward_dim, dropout: layer sizes.
            cross_attention: "deformable" or "key_aware", see :class:`DeformableDecoderLayer`;
                an explicit choice, independent of the encoder's attention.
            look_forward_twice: DINO's box prediction through the undetached previous reference.
            share_heads: one class head and one box head shared by all layers.
            inverse_sigmoid_eps: clamp of the boxes before their logit, when a layer refines
                them: 1e-3 in the released DINO / Lite-DINO, 1e-5 in Deformable DETR's. Boxes
                nearer than this to 0 or 1 (e.g. a selected border proposal, (1, 1, 1, 1)) get a
                bounded logit, so the value changes outputs.
            positional_queries: "reference_boxes" (an MLP ``ref_point_head`` of each layer's
                reference boxes) or "input" (the ``query_pos`` argument of :meth:`forward`).
            final_norm: a LayerNorm (``norm``) before the heads (DINO); Deformable DETR has none.
            attention_dropout, separate_key_proj: of the cross-attention, see
                :class:`DeformableDecoderLayer`.
            num_ranking_only_classes: U more logits per query after the K, from class-head rows
                that rank detections but are never reported (the class rows of a converted
                release checkpoint that no class uses, see
                :class:`~lite_detr.modeling.meta_arch.TwoStageDeformableDETR`).
        """
        super().__init__()
        if num_ranking_only_classes < 0:
            raise ValueError(
                "DeformableDecoder: num_ranking_only_classes must be >= 0, got "
                f"{num_ranking_only_classes}"
            )
        if num_layers < 1:
            raise ValueError(f"DeformableDecoder: num_layers must be >= 1, got {num_layers}")
        if positional_queries not in POSITIONAL_QUERIES:
            raise ValueError(
                f"DeformableDecoder: positional_queries must be one of {POSITIONAL_QUERIES}, got "
                f"{positional_queries!r}"
            )
        check_attention_type(
            "DeformableDecoder", cross_attention, separate_key_proj, field="cross_attention"
        )
        layer = DeformableDecoderLayer(
            embed_dim,
            num_heads,
            num_levels,
            num_points,
            feedforward_dim,
            dropout,
            cross_attention,
            attention_dropout,
            separate_key_proj,
        )
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.num_ranking_only_classes = num_ranking_only_classes
        self.cross_attention = cross_attention
        self.look_forward_twice = look_forward_twice
        self.inverse_sigmoid_eps = inverse_sigmoid_eps
        self.positional_queries = positional_queries
        if positional_queries == "reference_boxes":
            self.ref_point_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2)
        self.norm = nn.LayerNorm(embed_dim) if final_norm else None

        class_embed = nn.Linear(embed_dim, num_classes + num_ranking_only_classes)
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
        query_pos: Tensor | None = None,
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
            query_pos (Tensor or None): (N, Q, C) positional queries of every layer, required with
                ``positional_queries="input"`` and refused otherwise.

        Returns:
            logits (Tensor): (num_layers, N, Q, K + U) classification logits of every layer (the
                K classes, then the U ranking-only rows).
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
        if (query_pos is None) != (self.positional_queries == "reference_boxes"):
            raise ValueError(
                f"DeformableDecoder: positional_queries={self.positional_queries!r} "
                + ("takes no query_pos" if query_pos is not None else "needs query_pos (N, Q, C)")
            )
        if query_pos is not None and query_pos.shape != query.shape:
            raise ValueError(
                f"DeformableDecoder: query_pos {tuple(query_pos.shape)} must have the shape of "
                f"query {tuple(query.shape)}"
            )
        reference = reference_boxes_unsig.sigmoid().detach()
        prev_reference = reference  # reference of the current layer, undetached if look-twice
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # (N, 1, L, 4)
        all_logits, all_boxes = [], []
        output = query
        for i, layer in enumerate(self.layers):
            ref_input = reference[:, :, None] * ratios  # (N, Q, L, 4) on the padded maps
            pos = query_pos
            if pos is None:
                pos = self.ref_point_head(
                    box_sine_embedding(ref_input[:, :, 0], self.embed_dim // 2).to(output.dtype)
                )
            output = layer(
                output,
                pos,
                ref_input,
                memory,
                spatial_shapes,
                level_start_index,
                memory_padding_mask,
                self_attn_mask,
            )
            hidden = output if self.norm is None else self.norm(output)
            base = prev_reference if self.look_forward_twice else reference
            all_logits.append(self.class_embed[i](hidden))
            eps = self.inverse_sigmoid_eps
            out_delta = self.bbox_embed[i](hidden)
            all_boxes.append((out_delta + inverse_sigmoid(base, eps)).sigmoid())
            # the next layer's reference comes from the un-normed output, as in DINO's release
            delta = out_delta if self.norm is None else self.bbox_embed[i](output)
            new_reference = (delta + inverse_sigmoid(reference, eps)).sigmoid()
            prev_reference = new_reference
            reference = new_reference.detach()
        return torch.stack(all_logits), torch.stack(all_boxes)

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, cross_attention={self.cross_attention!r}, "
            f"look_forward_twice={self.look_forward_twice}, "
            f"positional_queries={self.positional_queries!r}, final_norm={self.norm is not None}, "
            f"inverse_sigmoid_eps={self.inverse_sigmoid_eps}"
        )
