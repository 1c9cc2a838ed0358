"""COCO 2017 detection with the DETR augmentation recipe (Carion et al. 2020, Sec. A.4).

Training: random flip, then either a multi-scale resize (short side 480..800, long side <= 1333)
or, with probability 0.5, resize to 400/500/600 + random crop 384..600 + the multi-scale resize.
"""

from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from omegaconf import OmegaConf

from lite_detr.data import DetrDatasetMapper, build_detr_augmentation
from lite_detr.evaluation import COCOEvaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DetrDatasetMapper)(
        is_train=True,
        augmentation=L(build_detr_augmentation)(with_crop=False),
        augmentation_with_crop=L(build_detr_augmentation)(with_crop=True),
        image_format="RGB",
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        is_train=False,
        augmentation=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="RGB",
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
