"""The (H_l, W_l) sizes of the feature levels as Python ints, for code that loops over levels."""

from typing import List, Sequence, Tuple

import torch

__all__ = ["level_shapes"]


def level_shapes(spatial_shapes: torch.Tensor | Sequence[Sequence[int]]) -> List[Tuple[int, int]]:
    """
    The (H_l, W_l) pair of each level.

    Args:
        spatial_shapes: (L, 2) int64 tensor (read back from its device: one host sync), or a
            sequence of L (H, W) pairs, used as is. The detectors pass the pairs they take from
            the feature maps' sizes: under ``torch.export`` / ``torch.compile`` those stay
            symbolic expressions of the input size, so one exported graph serves every size.

    Returns:
        list of L (H, W) tuples.
    """
    if isinstance(spatial_shapes, torch.Tensor):
        return [(h, w) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]
