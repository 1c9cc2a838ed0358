"""Sine position embedding for 2-D feature maps (DETR, Deformable DETR and DINO flavour)."""

import math

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine", "box_sine_embedding"]


class PositionEmbeddingSine(nn.Module):
    """
    The sine/cosine embedding of DETR ("Attention is all you need" generalised to images),
    computed on the un-padded region of each image. ``offset=-0.5`` (Deformable DETR's release)
    embeds pixel centres; the released DINO / Lite-DINO use no offset (``offset=0``, their
    configs' setting), which their weights need.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = -0.5,
        eps: float = 1e-6,
    ):
        """
        Args:
            num_pos_feats (int): features per axis; the output has ``2 * num_pos_feats`` channels
                (y features first, then x), which must equal the transformer width.
            temperature (float): wavelength base of the sinusoids.
            normalize (bool): normalise the coordinates to ``[0, scale]`` over the valid region.
            scale (float): range of the normalised coordinates (used only with ``normalize``).
            offset (float): added to the 1-based cumulative coordinates before normalising.
            eps (float): guards the normalisation of fully padded rows/columns.
        """
        super().__init__()
        if num_pos_feats <= 0 or num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be a positive even number, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset
        self.eps = eps

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            mask (Tensor): (N, H, W) bool, True marks padding.

        Returns:
            Tensor: (N, 2 * num_pos_feats, H, W) float32 position embedding.
        """
        if mask.dim() != 3 or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a (N, H, W) bool tensor, got shape {tuple(mask.shape)} "
                f"and dtype {mask.dtype}"
            )
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        # interleave sin (even channels) and cos (odd channels)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale:.4f}, offset={self.offset}"
        )


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
