"""Lite-DINO R18 (the ``make demo`` model) on your own COCO-format data, on CPU.

No Python needed: name the files with overrides (README, "Train on your own data")::

    python train_net.py --config-file projects/lite_dino/configs/lite_dino_r18_custom_cpu.py \\
        datasets.train.json_file=data/train.json datasets.train.image_root=data/train \\
        datasets.val.json_file=data/val.json datasets.val.image_root=data/val

The number of classes and their names come from the json (``model.num_classes=null``). Images
are resized to a short side of ``dataloader.input_size`` (320 px; 0.8-1.0x of it in training).
The model and schedule are those of ``lite_dino_r18_shapes_cpu.py`` (a half-width ResNet-18 from
scratch, about 0.5 s per iteration of 4 images on an idle 2-core CPU).
"""

from ....configs.common.data.coco_format import dataloader, datasets
from .lite_dino_r18_shapes_cpu import baseline_encoder, lr_multiplier, model, optimizer, train

model.num_classes = None  # from the training json
train.output_dir = "./output/lite_dino_r18_custom_cpu"
