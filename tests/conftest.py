"""Shared test settings: the demo config and the overrides that shrink it for CPU tests."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES_CFG = os.path.join(ROOT, "projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py")
# a small Lite-DINO of the demo config's structure, fast enough for CPU tests
TINY_MODEL = [
    "model.embed_dim=64",
    "model.position_embedding.num_pos_feats=32",
    "model.encoder.feedforward_dim=128",
    "model.encoder.low_feedforward_dim=64",
    "model.decoder.feedforward_dim=128",
    "model.decoder.num_layers=2",
    "model.num_queries=30",
    "model.select_box_nums_for_evaluation=30",
    "model.denoising.num_dn_queries=10",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
]
# ... on 128 px images
TINY = TINY_MODEL + ["dataloader.input_size=128"]


# the toy_cfg fixture as a config file, for train_net.py subprocesses (dataset root: {root})
TOY_CONFIG_FILE = """
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler

from lite_detr.data import register_shapes
from tests.engine.conftest import ToyDetector

register_shapes("toy_file_shapes", root={root!r}, num_train=16, num_val=8, image_size=128)
dataloader = LazyConfig.load({data!r}).dataloader
train = LazyConfig.load({train!r}).train
model = L(ToyDetector)(num_classes=4, dropout=0.5)
optimizer = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(), lr=1e-2, weight_decay=1e-4
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[5], num_updates=100),
    warmup_length=0.0,
    warmup_factor=1.0,
)
dataloader.train.dataset.names = "toy_file_shapes_train"
dataloader.test.dataset.names = "toy_file_shapes_val"
dataloader.train.num_workers = 1
dataloader.test.num_workers = 0
dataloader.input_size = 128
train.update(device="cpu", max_iter=12, eval_period=0, log_period=1, seed=0)
train.checkpointer = dict(period=3, max_to_keep=10)
"""


def write_toy_config(folder) -> str:
    """Write ``folder/toy_config.py`` (its dataset is generated in ``folder/datasets``)."""
    path = os.path.join(str(folder), "toy_config.py")
    with open(path, "w") as f:
        f.write(
            TOY_CONFIG_FILE.format(
                root=os.path.join(str(folder), "datasets"),
                data=os.path.join(ROOT, "configs/common/data/shapes.py"),
                train=os.path.join(ROOT, "configs/common/train.py"),
            )
        )
    return path


@pytest.fixture
def toy_config_file(tmp_path_factory):
    """A config file of the toy detector on a 16/8-image shapes dataset (its own copy)."""
    return write_toy_config(tmp_path_factory.mktemp("toy_config"))
