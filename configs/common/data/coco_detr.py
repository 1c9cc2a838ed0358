"""COCO 2017 detection with the DETR augmentation recipe (Carion et al. 2020, Sec. A.4).

Training: random flip, then either a multi-scale resize (short side 480..800, long side <= 1333)
or, with probability 0.5, resize to 400/500/600 + random crop 384..600 + the multi-scale resize.
Every training image is kept, including those without objects (the releases' epochs are
passes over all 118,287 COCO train2017 images). Test: short side 800, long side <= 1333.
``dataloader.input_size=512`` scales all of these sizes by 512 / 800 (one override for train and
test resolution).
"""

from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

from lite_detr.data import DetrDatasetMapper, build_detr_augmentation, build_resize_augmentation
from lite_detr.evaluation import COCOEvaluator

# COCO-format data of your own instead of COCO: datasets.train.json_file=... and
# datasets.train.image_root=... (same for val) register the files under these names
datasets = {
    "train": {"name": "coco_2017_train", "json_file": "", "image_root": ""},
    "val": {"name": "coco_2017_val", "json_file": "", "image_root": ""},
}

dataloader = OmegaConf.create()
dataloader.input_size = 800  # test short side; training sizes scale with it

dataloader.train = L(build_detection_train_loader)(
    # every image, as the releases of Deformable DETR, H-DETR, DINO and Lite DETR (their COCO
    # datasets are torchvision's, one item per image of the json): the 1,021 COCO train2017
    # images without a non-crowd box (detectron2 drops them by default) train as background
    dataset=L(get_detection_dataset_dicts)(names="${datasets.train.name}", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        is_train=True,
        augmentation=L(build_detr_augmentation)(with_crop=False, input_size="${....input_size}"),
        augmentation_with_crop=L(build_detr_augmentation)(
            with_crop=True, input_size="${....input_size}"
        ),
        image_format="RGB",
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="${datasets.val.name}", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        is_train=False,
        augmentation=L(build_resize_augmentation)(
            input_size="${....input_size}", max_size_ratio=1333 / 800
        ),
        image_format="RGB",
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
