"""Data: the DETR dataset mapper, COCO-format datasets and their checks, the synthetic shapes.

Importing this package registers ``shapes_train`` and ``shapes_val`` (generated lazily, on
first use, under ``$DETECTRON2_DATASETS/shapes``).
"""

from .dataset_mapper import DetrDatasetMapper, build_detr_augmentation, build_resize_augmentation
from .datasets.coco_check import DatasetError, check_coco_json
from .datasets.coco_format import (
    dataset_names,
    fill_num_classes,
    prepare_datasets,
    register_coco_format,
    register_config_datasets,
    unregistered_message,
)
from .datasets.coco_json import load_coco_detection_json
from .datasets.shapes import (
    SHAPES_CLASSES,
    check_shapes_dataset,
    ensure_shapes_dataset,
    generate_shapes_dataset,
    register_shapes,
    shapes_dataset_dir,
)
from .image_io import read_image
from .resumable_loader import ResumableTrainLoader
from .sample_inputs import positive_int, sample_inputs

__all__ = [
    "DetrDatasetMapper",
    "build_detr_augmentation",
    "build_resize_augmentation",
    "DatasetError",
    "check_coco_json",
    "dataset_names",
    "fill_num_classes",
    "prepare_datasets",
    "register_coco_format",
    "register_config_datasets",
    "unregistered_message",
    "load_coco_detection_json",
    "SHAPES_CLASSES",
    "check_shapes_dataset",
    "ensure_shapes_dataset",
    "generate_shapes_dataset",
    "register_shapes",
    "shapes_dataset_dir",
    "read_image",
    "ResumableTrainLoader",
    "positive_int",
    "sample_inputs",
]


def _register_builtin():
    from detectron2.data import DatasetCatalog

    if "shapes_train" not in DatasetCatalog.list():  # re-import (e.g. importlib.reload) safe
        register_shapes("shapes")


_register_builtin()
