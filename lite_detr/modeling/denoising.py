"""Contrastive denoising (CDN) queries of DINO (Zhang et al., 2022, section 3.3)."""

from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid

__all__ = ["ContrastiveDenoising", "build_dn_attn_mask"]


def build_dn_attn_mask(num_groups: int, group_size: int, num_queries: int, device=None) -> Tensor:
    """Self-attention mask of the decoder when denoising queries are prepended.

    Query layout: ``num_groups`` dn groups of ``group_size`` queries, then ``num_queries``
    matching queries. Matching queries never see dn queries (the ground truth would leak into the
    matching part, which is all that runs at inference), and dn groups do not see each other
    (each is an independent noised copy of the ground truth). dn queries may see matching queries.

    Returns:
        Tensor: (D + Q, D + Q) bool with D = num_groups * group_size; True = attention blocked
        (``nn.MultiheadAttention`` semantics).
    """
    pad = num_groups * group_size
    mask = torch.zeros(pad + num_queries, pad + num_queries, dtype=torch.bool, device=device)
    mask[pad:, :pad] = True
    for g in range(num_groups):
        start, end = g * group_size, (g + 1) * group_size
        mask[start:end, :start] = True
        mask[start:end, end:pad] = True
    return mask


class ContrastiveDenoising(nn.Module):
    """Builds DINO's contrastive denoising queries from the ground truth (training only).

    Every ground-truth box yields a positive query (box corners moved by less than half the box
    size, to be reconstructed) and a negative one (moved by 1-2x half the size, to be classified
    as "no object"); labels are flipped to a random class with probability
    ``label_noise_ratio / 2``. ``num_dn_queries`` positives are spread over
    ``max(1, num_dn_queries // max_gt)`` groups, each of ``2 * max_gt`` queries laid out as
    ``[positives of targets 0..max_gt-1 ; negatives]`` (images with fewer targets pad with zero
    queries).
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int = 256,
        num_dn_queries: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
    ):
        """
        Args:
            num_classes: number of foreground classes; the label embedding has one row per class.
            embed_dim: decoder width C.
            num_dn_queries: positive dn queries per image (DINO: 100); the group count follows.
            label_noise_ratio: twice the probability that a dn label is replaced by a random one.
            box_noise_scale: scale of the box noise, in units of half the box size.
        """
        super().__init__()
        if num_dn_queries < 1:
            raise ValueError(
                f"ContrastiveDenoising: num_dn_queries must be >= 1, got {num_dn_queries}; "
                "to disable denoising pass denoising=None to the detector"
            )
        if not 0.0 <= label_noise_ratio <= 1.0 or box_noise_scale < 0:
            raise ValueError(
                "ContrastiveDenoising: need 0 <= label_noise_ratio <= 1 and box_noise_scale >= 0, "
                f"got {label_noise_ratio} and {box_noise_scale}"
            )
        self.num_classes = num_classes
        self.num_dn_queries = num_dn_queries
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.label_enc = nn.Embedding(num_classes, embed_dim)

    def forward(
        self, targets: List[Dict[str, Tensor]], num_queries: int
    ) -> Tuple[Tensor, Tensor, Tensor, Dict[str, int]] | None:
        """
        Args:
            targets: N dicts with "labels" (T_i,) int64 and "boxes" (T_i, 4) normalised cxcywh.
            num_queries: number Q of matching queries that follow the dn queries.

        Returns:
            None when the batch has no ground truth, else a tuple of
            * content (N, D, C): label embeddings of the noised labels,
            * boxes (N, D, 4): noised boxes, unsigmoided (inverse_sigmoid of cxcywh),
            * attn_mask (D + Q, D + Q) bool, see :func:`build_dn_attn_mask`,
            * dn_meta: {"num_groups", "group_size", "pad_size" (= D)}.
        """
        max_gt = max((len(t["labels"]) for t in targets), default=0)
        if max_gt == 0:
            return None
        device = self.label_enc.weight.device
        num_images = len(targets)
        num_groups = max(1, self.num_dn_queries // max_gt)

        labels = torch.zeros(num_images, max_gt, dtype=torch.int64, device=device)
        boxes = torch.zeros(num_images, max_gt, 4, device=device)
        valid = torch.zeros(num_images, max_gt, dtype=torch.bool, device=device)
        for i, t in enumerate(targets):
            n = len(t["labels"])
            labels[i, :n] = t["labels"].to(device)
            boxes[i, :n] = t["boxes"].to(device=device, dtype=boxes.dtype)
            valid[i, :n] = True

        # (N, G, 2 [positive, negative], T) copies of the ground truth
        shape = (num_images, num_groups, 2, max_gt)
        labels = labels[:, None, None].expand(shape).clone()
        boxes = boxes[:, None, None].expand(*shape, 4)
        valid = valid[:, None, None].expand(shape)

        if self.label_noise_ratio > 0:
            flip = torch.rand(shape, device=device) < self.label_noise_ratio * 0.5
            random_labels = torch.randint_like(labels, 0, self.num_classes)
            labels = torch.where(flip, random_labels, labels)

        if self.box_noise_scale > 0:
            xyxy = box_cxcywh_to_xyxy(boxes)
            half_wh = boxes[..., 2:].repeat(1, 1, 1, 1, 2) / 2
            sign = torch.randint(0, 2, xyxy.shape, device=device, dtype=xyxy.dtype) * 2.0 - 1.0
            magnitude = torch.rand_like(xyxy)
            magnitude[:, :, 1] += 1.0  # negatives: noise beyond the positives' range
            xyxy = xyxy + sign * magnitude * half_wh * self.box_noise_scale
            boxes = box_xyxy_to_cxcywh(xyxy.clamp(min=0.0, max=1.0))

        content = self.label_enc(labels) * valid[..., None]
        boxes_unsig = inverse_sigmoid(boxes, eps=1e-3) * valid[..., None]  # as the DINO release
        pad_size = num_groups * 2 * max_gt
        content = content.reshape(num_images, pad_size, -1)
        boxes_unsig = boxes_unsig.reshape(num_images, pad_size, 4)
        attn_mask = build_dn_attn_mask(num_groups, 2 * max_gt, num_queries, device=device)
        dn_meta = {"num_groups": num_groups, "group_size": 2 * max_gt, "pad_size": pad_size}
        return content, boxes_unsig, attn_mask, dn_meta

    def extra_repr(self) -> str:
        return (
            f"num_dn_queries={self.num_dn_queries}, label_noise_ratio={self.label_noise_ratio}, "
            f"box_noise_scale={self.box_noise_scale}"
        )
