import importlib.util
import os

import pytest

from lite_detr.data import register_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPES_CFG = os.path.join(ROOT, "projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py")
TINY = [
    "model.embed_dim=64",
    "model.position_embedding.num_pos_feats=32",
    "model.encoder.feedforward_dim=128",
    "model.encoder.low_feedforward_dim=64",
    "model.decoder.feedforward_dim=128",
    "model.decoder.num_layers=2",
    "model.num_queries=30",
    "model.select_box_nums_for_evaluation=30",
    "model.denoising.num_dn_queries=10",
    "dataloader.train.mapper.augmentation.1.short_edge_length=[128]",
    "dataloader.test.mapper.augmentation.0.short_edge_length=128",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "dataloader.train.total_batch_size=2",
]


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tools_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    register_shapes("tools_shapes", root=str(root), num_train=4, num_val=2, image_size=128)
    return [
        "dataloader.train.dataset.names=tools_shapes_train",
        "dataloader.test.dataset.names=tools_shapes_val",
    ]
