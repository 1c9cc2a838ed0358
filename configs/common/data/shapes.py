"""The synthetic shapes dataset (``shapes_train`` / ``shapes_val``, 320x320 images).

Generated on first use under ``$DETECTRON2_DATASETS/shapes`` (see ``lite_detr.data``). A light
version of the DETR recipe: flip + mild multi-scale resize; no crop, which mostly cuts the
small shapes in half at this image size.
"""

from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from omegaconf import OmegaConf

from lite_detr.data import DetrDatasetMapper
from lite_detr.evaluation import COCOEvaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_train"),
    mapper=L(DetrDatasetMapper)(
        is_train=True,
        augmentation=[
            L(T.RandomFlip)(horizontal=True),
            L(T.ResizeShortestEdge)(
                short_edge_length=(256, 288, 320), max_size=600, sample_style="choice"
            ),
        ],
        image_format="RGB",
    ),
    total_batch_size=4,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        is_train=False,
        augmentation=[L(T.ResizeShortestEdge)(short_edge_length=320, max_size=600)],
        image_format="RGB",
    ),
    num_workers=1,
)

dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
