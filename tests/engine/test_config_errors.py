import os

import pytest
import torch

from lite_detr.engine import ConfigError, check_config, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPES_CFG = os.path.join(ROOT, "projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py")


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does_not_exist.py.*does not exist"):
        load_config("configs/does_not_exist.py")


def test_unknown_override_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"Unknown config key 'train.max_iters'.*train.max_iter"):
        load_config(SHAPES_CFG, ["train.max_iters=10"])
    with pytest.raises(ConfigError, match=r"'model.encoder' has no key 'num_block'"):
        load_config(SHAPES_CFG, ["model.encoder.num_block=2"])


def test_valid_overrides_apply():
    cfg = load_config(
        SHAPES_CFG,
        [
            "train.max_iter=7",
            "model.encoder.num_blocks=2",  # an existing LazyCall argument
            "optimizer.betas.1=0.99",  # a list index
        ],
    )
    assert cfg.train.max_iter == 7 and cfg.model.encoder.num_blocks == 2
    assert cfg.optimizer.betas[1] == 0.99


def test_override_of_lazycall_argument_not_in_config_is_checked_against_signature():
    # ResNet(freeze_at=...) exists in the config; "out_features" is a real argument too
    cfg = load_config(SHAPES_CFG, ["model.backbone.freeze_at=1"])
    assert cfg.model.backbone.freeze_at == 1
    with pytest.raises(ConfigError, match="'model.backbone' has no key 'freze_at'"):
        load_config(SHAPES_CFG, ["model.backbone.freze_at=1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu():
    cfg = load_config(SHAPES_CFG, ["train.device=cuda"])
    with pytest.raises(ConfigError, match="no CUDA GPU.*train.device=cpu"):
        check_config(cfg)


def test_missing_dataset_and_checkpoint(tmp_path):
    cfg = load_config(SHAPES_CFG, ["dataloader.train.dataset.names=shapes_trian"])
    with pytest.raises(ConfigError, match="'shapes_trian'.*not registered.*shapes_train"):
        check_config(cfg)
    cfg = load_config(SHAPES_CFG, [f"train.init_checkpoint={tmp_path}/missing.pth"])
    with pytest.raises(ConfigError, match="missing.pth.*does not exist"):
        check_config(cfg)


def test_registered_dataset_without_files(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register("ghost_val", lambda: [])
    MetadataCatalog.get("ghost_val").set(json_file=str(tmp_path / "instances_ghost.json"))
    cfg = load_config(SHAPES_CFG, ["dataloader.test.dataset.names=ghost_val"])
    with pytest.raises(ConfigError, match="instances_ghost.json do not exist.*DETECTRON2_DATASETS"):
        check_config(cfg)
    # the lazily generated shapes dataset passes before it is generated
    cfg = load_config(SHAPES_CFG)
    check_config(cfg)
