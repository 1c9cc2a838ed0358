"""Your own COCO-format detection data: a json and an image folder per split, no Python needed.

Name the files with overrides (the datasets are registered under ``datasets.*.name`` when the
config is loaded, as detectron2's ``register_coco_instances`` does, and checked before training)::

    datasets.train.json_file=data/train.json datasets.train.image_root=data/train
    datasets.val.json_file=data/val.json datasets.val.image_root=data/val

The class count and names are read from the json (``model.num_classes: null`` takes them; a
number that disagrees is an error). The augmentation is the light one of the shapes dataset
(flip + multi-scale resize around ``dataloader.input_size``, default 320 px).
"""

from .shapes import dataloader

datasets = {
    "train": {"name": "custom_train", "json_file": "", "image_root": ""},
    "val": {"name": "custom_val", "json_file": "", "image_root": ""},
}

dataloader.train.dataset.names = "${datasets.train.name}"
dataloader.test.dataset.names = "${datasets.val.name}"
