"""Model inputs for analysis tools: real test images when the dataset is there, else random ones."""

import itertools
import logging
import os
from typing import Dict, List, Sequence

import torch

__all__ = ["sample_inputs", "positive_int"]

logger = logging.getLogger(__name__)


def positive_int(text: str) -> int:
    """``argparse`` type of ``--input-size`` / ``--num-inputs``: an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _dataset_available(cfg) -> bool:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    try:
        names = cfg.dataloader.test.dataset.names
    except (AttributeError, KeyError):
        return False
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in DatasetCatalog.list():
            return False
        json_file = MetadataCatalog.get(name).get("json_file")
        if json_file is not None and not os.path.isfile(json_file):
            return False  # not downloaded / not generated yet: do not trigger a generation
    return True


def sample_inputs(
    cfg,
    num: int = 1,
    input_size: Sequence[int] | None = None,
    seed: int = 0,
    fallback_sizes: Sequence[Sequence[int]] = ((800, 1333),),
) -> List[Dict]:
    """
    Args:
        cfg: a LazyConfig with ``dataloader.test``.
        num (int): number of single-image inputs.
        input_size ((H, W), optional): random images of this size instead of dataset images.
        seed (int): seed of the random images.
        fallback_sizes: sizes of the random images when neither ``input_size`` nor the test
            dataset is there, taken in turn (at least one image of each: ``num`` is raised to
            their count).

    Returns:
        list[dict]: each ``{"image": (3, H, W) uint8, "height": H, "width": W}`` (dataset inputs
        also keep ``file_name`` etc.).
    """
    from detectron2.config import instantiate

    if input_size is None:
        if _dataset_available(cfg):
            test_cfg = cfg.dataloader.test
            loader = instantiate(test_cfg)
            return [batch[0] for batch in itertools.islice(loader, num)]
        sizes = [tuple(int(v) for v in size) for size in fallback_sizes]
        num = max(num, len(sizes))
        logger.warning(
            "Test dataset of the config is not available: using random images of "
            + ", ".join(f"{h}x{w}" for h, w in sizes)
            + " (pass --input-size H W to choose the size)."
        )
    else:
        sizes = [(int(input_size[0]), int(input_size[1]))]
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for i in range(num):
        h, w = sizes[i % len(sizes)]
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        inputs.append({"image": image, "height": h, "width": w})
    return inputs
