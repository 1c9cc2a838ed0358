"""The synthetic shapes dataset (``shapes_train`` / ``shapes_val``, 320x320 images).

Generated on first use under ``$DETECTRON2_DATASETS/shapes`` (see ``lite_detr.data``). A light
version of the DETR recipe: flip + mild multi-scale resize; no crop, which mostly cuts the
small shapes in half at this image size.

``dataloader.input_size`` (default 320) is the short side at test time; training resizes the
short side to 0.8 / 0.9 / 1.0 times it. The long side is at most 1.875 times it.
"""

from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

from lite_detr.data import DetrDatasetMapper, build_resize_augmentation
from lite_detr.evaluation import COCOEvaluator

dataloader = OmegaConf.create()
dataloader.input_size = 320  # one override for train and test resolution

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_train"),
    mapper=L(DetrDatasetMapper)(
        is_train=True,
        augmentation=L(build_resize_augmentation)(
            input_size="${....input_size}", max_size_ratio=1.875, scales=(0.8, 0.9, 1.0), flip=True
        ),
        image_format="RGB",
    ),
    total_batch_size=4,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        is_train=False,
        augmentation=L(build_resize_augmentation)(
            input_size="${....input_size}", max_size_ratio=1.875
        ),
        image_format="RGB",
    ),
    num_workers=1,
)

dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
