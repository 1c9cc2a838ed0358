"""
The configs of this repository, loadable from anywhere (as detectron2's and detrex's
``model_zoo.get_config``), e.g. from a config file of your own outside the repository::

    from detectron2.data.datasets import register_coco_instances
    from lite_detr.model_zoo import get_config

    register_coco_instances("my_train", {}, "/data/train.json", "/data/train")
    register_coco_instances("my_val", {}, "/data/val.json", "/data/val")

    cfg = get_config("projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py")
    model, dataloader, optimizer, lr_multiplier, train = (
        cfg.model, cfg.dataloader, cfg.optimizer, cfg.lr_multiplier, cfg.train
    )
    dataloader.train.dataset.names = "my_train"
    dataloader.test.dataset.names = "my_val"
    model.num_classes = None  # from my_train's json

Paths are relative to the repository root, as in the README (``configs/common/...`` or
``projects/<project>/configs/...``). An installed package carries the configs in this folder with
the repository's layout (setup.py copies them at build time, as detectron2 does its configs), so
the configs' own relative imports (``....configs.common``) keep working; an editable install or
a source checkout reads them in place.
"""

import os

from detectron2.config import LazyConfig
from omegaconf import DictConfig

__all__ = ["get_config_file", "get_config"]

_PACKAGED = os.path.dirname(os.path.abspath(__file__))  # configs/, projects/ in a built package
_SOURCE = os.path.dirname(os.path.dirname(_PACKAGED))  # the repository root (editable install)


def _config_root() -> str:
    return _PACKAGED if os.path.isdir(os.path.join(_PACKAGED, "configs")) else _SOURCE


def get_config_file(config_path: str) -> str:
    """Absolute path of a config of this repository, given relative to its root."""
    root = _config_root()
    path = os.path.join(root, config_path)
    if not os.path.isfile(path) or not config_path.endswith(".py"):
        raise FileNotFoundError(
            f"{config_path!r} is not a config of lite_detr (looked in {root}). Pass a path "
            "relative to the repository root, e.g. "
            "'projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py' or "
            "'configs/common/data/coco_detr.py'."
        )
    return path


def get_config(config_path: str) -> DictConfig:
    """Load a config of this repository (see :func:`get_config_file`) as a LazyConfig."""
    return LazyConfig.load(get_config_file(config_path))
