"""The published recipes as the configs build them: batch, top-k, query init, epochs and where
the lr drops, the training set (empty images kept). Weight-decay groups: tests/test_configs.py;
H-DETR's query init: tests/modeling/meta_arch/test_h_detr.py; the run length derived from a
dataset: tests/engine/test_epochs.py."""

import glob
import os

import pytest
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf

from lite_detr.solver import iterations_per_epoch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "projects", "*", "configs", "*_*ep.py"))
)
# COCO train2017 as the releases count it: every image of the json
COCO_TRAIN_IMAGES = 118_287


def load(path):
    return LazyConfig.load(os.path.join(ROOT, path))


def test_coco_configs_are_found():
    names = {os.path.basename(p) for p in COCO_CONFIGS}
    assert {
        "deformable_detr_r50_two_stage_50ep.py",
        "h_detr_r50_36ep.py",
        "lite_dino_r50_4scale_h3l1_a2b3_12ep.py",
    } <= names


@pytest.mark.parametrize("path", COCO_CONFIGS)
def test_epochs_and_the_lr_drop_land_where_the_release_puts_them(path):
    """``train.epochs`` passes over the data, lr x0.1 from the first iteration after the
    release's drop epoch (StepLR: 11 of 12, 30 of 36, 40 of 50), at the config's batch."""
    cfg = load(path)
    epochs = int(path.rsplit("_", 1)[1][: -len("ep.py")])
    drop = {12: 11, 36: 30, 50: 40}[epochs]
    assert cfg.train.epochs == epochs and cfg.train.max_iter is None
    batch = cfg.dataloader.train.total_batch_size
    per_epoch = iterations_per_epoch(COCO_TRAIN_IMAGES, batch)
    max_iter = epochs * per_epoch
    multiplier = instantiate(cfg.lr_multiplier)
    lr = [multiplier(it / max_iter) for it in (0, drop * per_epoch - 1, drop * per_epoch)]
    assert lr == [1.0, 1.0, pytest.approx(0.1)]
    assert multiplier((max_iter - 1) / max_iter) == pytest.approx(0.1)
    # every image of the training json, as the releases' torchvision datasets
    assert cfg.dataloader.train.dataset.filter_empty is False


@pytest.mark.parametrize(
    "path,batch,per_epoch",
    [
        # Deformable DETR: "trained with total batch size of 32" (16 GPUs x 2); the release's
        # distributed sampler gives 3,696 iterations per epoch, one fewer
        ("projects/lite_deformable_detr/configs/deformable_detr_r50_two_stage_50ep.py", 32, 3697),
        (
            "projects/lite_deformable_detr/configs/lite_deformable_detr_r50_h3l1_a2b3_12ep.py",
            32,
            3697,
        ),
        ("projects/lite_h_detr/configs/h_detr_r50_36ep.py", 16, 7393),  # 8 GPUs x 2
        ("projects/lite_dino/configs/lite_dino_r50_4scale_h3l1_a2b3_36ep.py", 16, 7393),
    ],
)
def test_total_batch_of_the_release(path, batch, per_epoch):
    cfg = load(path)
    assert cfg.dataloader.train.total_batch_size == batch
    assert iterations_per_epoch(COCO_TRAIN_IMAGES, batch) == per_epoch
    assert cfg.optimizer.lr == (1e-4 if "dino" in path else 2e-4)


def test_iterations_per_epoch():
    assert iterations_per_epoch(10, 4) == 3  # the last batch completed from the next pass
    assert iterations_per_epoch(8, 4) == 2 and iterations_per_epoch(3, 16) == 1
    with pytest.raises(ValueError, match="at least one image"):
        iterations_per_epoch(0, 16)


def test_cpu_configs_keep_a_fixed_number_of_iterations():
    for name in ("lite_dino_r18_shapes_cpu.py", "lite_dino_r18_custom_cpu.py"):
        cfg = load(os.path.join("projects/lite_dino/configs", name))
        assert cfg.train.max_iter == 800 and cfg.train.epochs is None
        # the demo's own schedule (x0.1 for the last 20% of its iterations), untouched
        assert OmegaConf.to_container(cfg.lr_multiplier.scheduler)["milestones"] == [8]


@pytest.mark.parametrize(
    "name,topk",
    [("h_detr_r50", 100), ("lite_h_detr_r50", 100), ("deformable_detr_r50", 100)],
)
def test_test_time_top_k(name, topk):
    """H-DETR's R50 release keeps its ``--topk`` default of 100 detections (only its Swin-L
    results use 300), as Deformable DETR's."""
    (path,) = glob.glob(os.path.join(ROOT, "projects", "*", "configs", "models", name + ".py"))
    assert LazyConfig.load(path).model.select_box_nums_for_evaluation == topk
