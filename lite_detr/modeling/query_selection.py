"""Helpers of two-stage DETRs: padding masks, valid ratios, encoder-memory proposals and the
queries made from them."""

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

from lite_detr.layers import box_sine_embedding

from .level_shapes import level_shapes

__all__ = ["ProposalEmbedding", "get_valid_ratio", "gen_encoder_output_proposals"]


def get_valid_ratio(mask: Tensor) -> Tensor:
    """
    Args:
        mask (Tensor): (N, H, W) bool, True = padding (images are top-left aligned).

    Returns:
        Tensor: (N, 2) float32 valid fraction (w, h) of the padded map.
    """
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float()
    valid_w = (~mask[:, 0, :]).sum(1).float()
    return torch.stack([valid_w / w, valid_h / h], -1)


def gen_encoder_output_proposals(
    memory: Tensor,
    memory_padding_mask: Tensor,
    spatial_shapes: Tensor | Sequence[Tuple[int, int]],
) -> Tuple[Tensor, Tensor, Tensor]:
    """One proposal per encoder token (Deformable DETR two-stage, section 4.2).

    Each token proposes a box centred on its pixel, normalised by its image's valid extent, of size
    0.05 * 2^l on level l (fine-to-coarse). Proposals of padding tokens or too close to the border
    are invalid: their memory is zeroed and their box logit is +inf.

    Args:
        memory (Tensor): (N, S, C) encoder output.
        memory_padding_mask (Tensor): (N, S) bool, True = padding.
        spatial_shapes (Tensor or list): (L, 2) int64 (H_l, W_l), or the L pairs (see
            :func:`~lite_detr.modeling.level_shapes.level_shapes`).

    Returns:
        output_memory (Tensor): (N, S, C) memory with invalid tokens zeroed.
        proposals (Tensor): (N, S, 4) inverse-sigmoid of the cxcywh proposals (+inf if invalid).
        valid (Tensor): (N, S) bool, True for valid proposals.
    """
    n = memory.shape[0]
    proposals = []
    start = 0
    for lvl, (h, w) in enumerate(level_shapes(spatial_shapes)):
        mask = memory_padding_mask[:, start : start + h * w].view(n, h, w)
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        grid_y, grid_x = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=memory.device),
            torch.arange(w, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.stack([grid_x, grid_y], -1)  # (H, W, 2)
        scale = torch.stack([valid_w, valid_h], -1).view(n, 1, 1, 2).float()
        grid = (grid[None] + 0.5) / scale
        wh = torch.full_like(grid, 0.05 * (2.0**lvl))
        proposals.append(torch.cat([grid, wh], -1).view(n, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1) & ~memory_padding_mask
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(~valid[..., None], float("inf"))
    output_memory = memory.masked_fill(~valid[..., None], 0.0)
    return output_memory, proposals, valid


class ProposalEmbedding(nn.Module):
    """Deformable DETR's two-stage queries (section 4.2 and its release's ``pos_trans``): the sine
    embedding of each selected proposal box (4 x C/2 = 2C features), a linear layer 2C -> 2C and
    a LayerNorm, split into the positional query (first C) and the content query (last C).
    """

    def __init__(self, embed_dim: int = 256):
        super().__init__()
        self.embed_dim = embed_dim
        self.pos_trans = nn.Linear(2 * embed_dim, 2 * embed_dim)
        self.pos_trans_norm = nn.LayerNorm(2 * embed_dim)

    def forward(
        self, ref_unsig: Tensor, dtype: torch.dtype = torch.float32
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
            ref_unsig (Tensor): (N, Q, 4) selected proposals, inverse-sigmoid cxcywh.
            dtype: of the queries (the memory's).

        Returns:
            query_pos, content: (N, Q, C) each.
        """
        # the release embeds (x, y, w, h), this (y, x, w, h): a fixed permutation of the
        # linear layer's inputs, the same model
        emb = box_sine_embedding(ref_unsig.sigmoid(), self.embed_dim // 2).to(dtype)
        out = self.pos_trans_norm(self.pos_trans(emb))
        return out[..., : self.embed_dim], out[..., self.embed_dim :]
