"""Checkpoint problems that the user can fix become one ConfigError; every other exception raised
while loading (out of memory, a bug) propagates as it is."""

import re

import pytest
import torch
from detectron2.config import instantiate

import lite_detr.engine as engine_module
from lite_detr.checkpoint import CheckpointError, LiteDetrCheckpointer, VariantMismatchError
from lite_detr.config import ConfigError, config_error_on_bad_checkpoint
from lite_detr.engine import do_eval_only, do_train

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.fixture
def toy_checkpoint(toy_cfg, tmp_path):
    path = str(tmp_path / "toy.pth")
    torch.save({"model": instantiate(toy_cfg.model).state_dict()}, path)
    toy_cfg.train.init_checkpoint = path
    return path


def _raise(exc):
    def fail(self, *args, **kwargs):
        raise exc

    return fail


def test_old_import_paths_of_the_config_checks_work():
    import lite_detr.config as config_module

    for name in ("ConfigError", "load_config", "check_config"):
        assert getattr(engine_module, name) is getattr(config_module, name)


def test_only_checkpoint_errors_become_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("Cannot load checkpoint 'w.pth': checkpoint")):
        with config_error_on_bad_checkpoint("w.pth"):
            raise VariantMismatchError("checkpoint encoder variant 'A' does not match 'B'")
    with pytest.raises(ConfigError, match="^w.pth is not a readable checkpoint$"):
        with config_error_on_bad_checkpoint("w.pth"):
            raise CheckpointError("w.pth is not a readable checkpoint")
    for exc in (RuntimeError(OOM), torch.cuda.OutOfMemoryError(OOM), KeyError("model")):
        with pytest.raises(type(exc)) as e:
            with config_error_on_bad_checkpoint("w.pth"):
                raise exc
        assert not isinstance(e.value, ConfigError)


def test_out_of_memory_while_loading_is_not_a_config_error(toy_cfg, toy_checkpoint, monkeypatch):
    monkeypatch.setattr(LiteDetrCheckpointer, "_load_file", _raise(RuntimeError(OOM)))
    with pytest.raises(RuntimeError, match=OOM) as e:
        do_eval_only(toy_cfg)
    assert not isinstance(e.value, ConfigError)
    with pytest.raises(RuntimeError, match=OOM) as e:
        do_train(type("Args", (), {"resume": False})(), toy_cfg)
    assert not isinstance(e.value, ConfigError)


def test_variant_refusal_is_one_config_error_naming_file_and_variants(
    toy_cfg, toy_checkpoint, monkeypatch
):
    refusal = VariantMismatchError(
        "checkpoint encoder variant 'H2L2-(2+1)x3/key_aware' does not match the config's "
        "'H3L1-(2+1)x3/key_aware' (load weights of the same variant, or change the config)"
    )
    monkeypatch.setattr(LiteDetrCheckpointer, "_load_model", _raise(refusal))
    with pytest.raises(ConfigError) as e:
        do_eval_only(toy_cfg)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"Cannot load checkpoint {toy_checkpoint!r}: ")
    assert "H2L2-(2+1)x3" in message and "H3L1-(2+1)x3" in message


def test_missing_checkpoint_is_a_config_error(toy_cfg, tmp_path):
    toy_cfg.train.init_checkpoint = str(tmp_path / "gone.pth")
    with pytest.raises(ConfigError, match="gone.pth' does not exist"):
        do_eval_only(toy_cfg)
