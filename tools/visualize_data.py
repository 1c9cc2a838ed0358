#!/usr/bin/env python
"""
Draw the ground truth of a config's dataset, to check the annotations before training.

    python tools/visualize_data.py --config-file CONFIG --output out/ [--split train|test] \\
        [--num-images 20] [key=value overrides, e.g. datasets.train.json_file=...]

The dataset (the one ``dataloader.<split>`` names, registered by the config's ``datasets`` node
or by ``register_coco_instances`` in your config) is checked as ``train_net.py`` checks it, then
the first ``--num-images`` images are drawn with their boxes and class names (detectron2
``Visualizer``) into ``out/<image name>.png``. ``--show-transformed`` draws them after the
training augmentation (resize, flip) instead, as the model sees them.
"""

import argparse
import itertools
import os

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import numpy as np
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from lite_detr.config import ConfigError, load_config
from lite_detr.data import DatasetError, dataset_names, prepare_datasets
from lite_detr.engine import read_rgb
from lite_detr.engine.cli import run_tool


def _draw_transformed(batch, metadata, image_format: str):
    image = batch["image"].permute(1, 2, 0).numpy()
    if image_format == "BGR":
        image = np.ascontiguousarray(image[:, :, ::-1])
    vis = Visualizer(image, metadata)
    inst = batch.get("instances")
    if inst is None or len(inst) == 0:
        return vis.output
    names = metadata.get("thing_classes", [])
    labels = [names[c] if c < len(names) else str(c) for c in inst.gt_classes.tolist()]
    return vis.overlay_instances(boxes=inst.gt_boxes.tensor.numpy(), labels=labels)


def visualize(cfg, output: str, split: str = "train", num_images: int = 20, transformed=False):
    """Draw ``num_images`` images of ``dataloader.<split>``; return the written paths."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output {output!r} is a file: pass a folder (it is created).")
    try:
        prepare_datasets(cfg, (split,), skip_bad_images=cfg.train.get("skip_bad_images", False))
    except DatasetError as e:
        raise ConfigError(str(e)) from e
    names = dataset_names(cfg.dataloader[split])
    if not names:
        raise ConfigError(f"dataloader.{split} names no dataset (dataset.names).")
    metadata = MetadataCatalog.get(names[0])
    os.makedirs(output, exist_ok=True)
    fmt = cfg.dataloader[split].mapper.get("image_format", "RGB")
    if transformed:
        mapper = instantiate(cfg.dataloader[split].mapper)
        mapper.is_train = True  # keep the boxes, also for the test split
    paths = []
    dicts = itertools.chain.from_iterable(DatasetCatalog.get(n) for n in names)
    for d in tqdm(itertools.islice(dicts, num_images), total=num_images, desc="visualize"):
        if transformed:
            drawn = _draw_transformed(mapper(d), metadata, fmt)
        else:
            image = read_rgb(d["file_name"])
            drawn = Visualizer(image, metadata).draw_dataset_dict(d)
        path = os.path.join(output, os.path.splitext(os.path.basename(d["file_name"]))[0] + ".png")
        drawn.save(path)
        paths.append(path)
    print(f"visualize_data.py: {len(paths)} images of {names[0]!r} with ground truth -> {output}")
    return paths


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--num-images", type=int, default=20)
    parser.add_argument(
        "--show-transformed", action="store_true", help="after the training augmentation"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    return run_tool(
        "visualize_data.py",
        lambda: visualize(
            load_config(args.config_file, args.opts),
            args.output,
            args.split,
            args.num_images,
            args.show_transformed,
        ),
    )


if __name__ == "__main__":
    main()
