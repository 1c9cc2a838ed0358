"""``train.epochs``: the run length in passes over the training set, derived at run time from
the dataset's length and the total batch; the lr drop of an epoch schedule lands on its epoch."""

import argparse
import json
import os

import pytest
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog

from lite_detr.engine import ConfigError, check_config, do_train, resolve_epochs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def ten_images():
    """A registered dataset of exactly 10 dataset dicts (never read from disk here)."""
    name = "epochs_test_ten_images"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(
            name,
            lambda: [
                {"file_name": f"{i}.jpg", "image_id": i, "height": 8, "width": 8, "annotations": []}
                for i in range(10)
            ],
        )
    return name


@pytest.mark.parametrize("batch,expected", [(4, 3 * 3), (5, 3 * 2), (16, 3 * 1)])
def test_max_iter_from_the_dataset_length_and_the_batch(toy_cfg, ten_images, batch, expected):
    toy_cfg.dataloader.train.dataset.names = ten_images
    toy_cfg.dataloader.train.dataset.filter_empty = False  # images without objects count
    toy_cfg.dataloader.train.total_batch_size = batch
    toy_cfg.train.update(epochs=3, max_iter=None)
    resolve_epochs(toy_cfg)
    assert toy_cfg.train.max_iter == expected  # 3 * ceil(10 / batch)


def test_a_fixed_max_iter_is_left_alone(toy_cfg):
    assert toy_cfg.train.epochs is None
    resolve_epochs(toy_cfg)
    assert toy_cfg.train.max_iter == 6


def test_epochs_and_max_iter_are_exclusive(toy_cfg):
    toy_cfg.train.update(epochs=3, max_iter=100)
    with pytest.raises(ConfigError, match=r"both set the run length: add train.max_iter=null"):
        check_config(toy_cfg)
    toy_cfg.train.update(epochs=0, max_iter=None)
    with pytest.raises(ConfigError, match=r"train.epochs must be an integer >= 1, got 0"):
        check_config(toy_cfg)


def test_epochs_need_a_dataset_to_count(toy_cfg):
    del toy_cfg.dataloader.train.dataset
    toy_cfg.train.update(epochs=2, max_iter=None)
    with pytest.raises(ConfigError, match="needs dataloader.train.dataset"):
        resolve_epochs(toy_cfg)


def test_training_by_epochs_drops_the_lr_on_the_schedules_epoch(toy_cfg, tiny_shapes):
    """12 epochs of the 16-image set at batch 8 (2 iterations each) with the COCO 12-epoch
    schedule: 24 iterations, lr x0.1 from iteration 22, the first of epoch 12."""
    num_images = len(DatasetCatalog.get(f"{tiny_shapes}_train"))
    assert num_images == 16
    toy_cfg.lr_multiplier = LazyConfig.load(
        os.path.join(ROOT, "configs/common/coco_schedule.py")
    ).lr_multiplier_12ep
    toy_cfg.dataloader.train.total_batch_size = 8
    toy_cfg.train.update(epochs=12, max_iter=None, log_period=1)
    toy_cfg.train.checkpointer.period = 100
    trainer = do_train(argparse.Namespace(resume=False, eval_only=False), toy_cfg)
    assert toy_cfg.train.max_iter == trainer.iter == 24
    with open(os.path.join(toy_cfg.train.output_dir, "metrics.json")) as f:
        lr = {m["iteration"]: m["lr"] for m in map(json.loads, f) if "lr" in m}
    assert sorted(lr) == list(range(24))
    assert [lr[i] for i in range(22)] == pytest.approx([1e-2] * 22)
    assert [lr[22], lr[23]] == pytest.approx([1e-3] * 2)
