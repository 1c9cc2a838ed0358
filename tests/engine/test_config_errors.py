import importlib.util
import os
import re

import pytest
import torch

from lite_detr.config import ConfigError, check_config, load_config

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


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.max_iter=abc", "train.max_iter must be an integer >= 1, got 'abc'"),
        ("train.max_iter=-5", "train.max_iter must be an integer >= 1, got -5"),
        ("train.max_iter=2.5", "train.max_iter must be an integer >= 1, got 2.5"),
        ("dataloader.train.total_batch_size=0", "total_batch_size must be an integer >= 1"),
        ("train.log_period=0", "train.log_period must be an integer >= 1, got 0"),
        ("optimizer.lr=fast", "optimizer.lr must be a number > 0, got 'fast'"),
        ("optimizer.lr=0", "optimizer.lr must be a number > 0, got 0"),
        ("optimizer.lr=nan", "optimizer.lr must be a number > 0, got nan"),
        ("train.checkpointer.period=0", "train.checkpointer.period must be an integer >= 1"),
        ("train.checkpointer.max_to_keep=0", r"max_to_keep must be an integer >= 1 \(or None\)"),
        ("train.eval_period=-1", "train.eval_period must be an integer >= 0"),
        ("dataloader.train.num_workers=-2", "num_workers must be an integer >= 0"),
        ("train.seed=abc", "train.seed must be an integer >= -1"),
        ("model.num_classes=0", "model.num_classes must be an integer >= 1"),
        (
            "model.num_classes=80",
            "model.num_classes=80 but dataset 'shapes_val'.*has 4 classes.*model.num_classes=4",
        ),
    ],
)
def test_bad_values_are_refused_before_anything_runs(override, message):
    cfg = load_config(SHAPES_CFG, [override])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_checkpointer_max_to_keep_none_is_valid():
    check_config(load_config(SHAPES_CFG, ["train.checkpointer.max_to_keep=null"]))


def test_config_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad_config.py"
    bad.write_text("from detectron2.config import LazyCall as L\n\nmodel = dict(a=1,\ntrain = 3\n")
    with pytest.raises(ConfigError, match=r"bad_config.py, line 3: SyntaxError"):
        load_config(str(bad))
    bad.write_text("x = 1\ny = undefined_name + 1\n")
    with pytest.raises(ConfigError, match=r"bad_config.py, line 2: NameError: .*undefined_name"):
        load_config(str(bad))


@pytest.mark.parametrize("kind", ["file", "missing"])
def test_datasets_root_that_is_not_a_folder(tmp_path, monkeypatch, kind):
    root = tmp_path / "datasets"
    if kind == "file":
        root.write_text("")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    with pytest.raises(ConfigError, match=rf"\$DETECTRON2_DATASETS='{root}' is (a file|missing)"):
        check_config(load_config(SHAPES_CFG))


def test_output_dir_of_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    from lite_detr.engine import check_output_dir, claim_output_dir

    out = str(tmp_path / "run")
    check_output_dir(out, resume=False)  # a new folder
    os.makedirs(out)
    (tmp_path / "run" / "model_final.pth").write_bytes(b"weights")
    with pytest.raises(ConfigError, match="already holds a run.*model_final.pth.*--resume"):
        check_output_dir(out, resume=False)
    check_output_dir(out, resume=True)
    check_output_dir(out, resume=False, overwrite=True)
    lock = claim_output_dir(out)  # a run in progress: refused even with --resume / --overwrite
    try:
        for resume, overwrite in ((True, False), (False, True)):
            with pytest.raises(ConfigError, match=f"in use by a running.*pid {os.getpid()}"):
                check_output_dir(out, resume=resume, overwrite=overwrite)
    finally:
        lock.close()
    lock = claim_output_dir(out, overwrite=True)
    lock.close()
    assert os.listdir(out) == [".train_net.lock"]  # the previous run's files are gone


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "model.embed_dim=abc",
            "model.embed_dim must be an integer (the config has 128), got 'abc'",
        ),
        ("model.embed_dim=2.5", "model.embed_dim must be an integer (the config has 128), got 2.5"),
        ("model.encoder.num_blocks=x", "model.encoder.num_blocks must be an integer"),
        ("model.backbone.freeze_at=two", "model.backbone.freeze_at must be an integer"),  # default
        ("model.criterion.matcher.cost_class=high", "cost_class must be a number"),
    ],
)
def test_model_overrides_of_the_wrong_type_name_the_key(override, message):
    # `model.embed_dim=abc` failed deep in a constructor with a TypeError
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(SHAPES_CFG, [override])
    cfg = load_config(
        SHAPES_CFG, ["model.criterion.matcher.cost_class=3", "model.num_classes=null"]
    )
    assert cfg.model.criterion.matcher.cost_class == 3  # an int where the config has a float


def test_unknown_device_is_refused_before_the_launch():
    # train_net.py's launch (check_launch) met torch.device's RuntimeError first
    from lite_detr.engine.launch import check_launch

    for device in ("tpu", "cuda:x", "meta"):
        with pytest.raises(ConfigError, match=f"train.device must be .*got '{device}'"):
            check_launch(device, 1)
    check_launch("cpu", 1)


def test_output_dir_that_is_a_file(tmp_path, capsys):
    # "[Errno 17] File exists" did not say the output folder is a file
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    with pytest.raises(ConfigError, match=rf"train.output_dir='{afile}' is a file, not a folder"):
        check_config(load_config(SHAPES_CFG, [f"train.output_dir={afile}"]))
    with pytest.raises(ConfigError, match=rf"is inside {afile}, a file, not a folder"):
        check_config(load_config(SHAPES_CFG, [f"train.output_dir={afile}/run"]))
    spec = importlib.util.spec_from_file_location(
        "visualize_data", os.path.join(ROOT, "tools", "visualize_data.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit) as e:
        tool.main(["--config-file", SHAPES_CFG, "--output", str(afile)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1]
        == f"visualize_data.py: error: --output '{afile}' is a file: pass a folder (it is created)."
    )
    assert afile.read_text() == "keep me"
