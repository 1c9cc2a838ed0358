import os
import re

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from torch import nn

from lite_detr.checkpoint import (
    CheckpointError,
    LiteDetrCheckpointer,
    VariantMismatchError,
    VariantTag,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_CONFIG = os.path.join(ROOT, "projects", "lite_dino", "configs", "models", "lite_dino_r50.py")

# a small Lite-DINO: R18, width 32, one decoder layer (the variant logic does not depend on size)
SMALL = [
    "model.backbone.stages.depth=18",
    "model.neck.input_shapes.res3.channels=128",
    "model.neck.input_shapes.res4.channels=256",
    "model.neck.input_shapes.res5.channels=512",
    "model.embed_dim=32",
    "model.neck.num_groups=8",
    "model.position_embedding.num_pos_feats=16",
    "model.encoder.feedforward_dim=32",
    "model.encoder.low_feedforward_dim=32",
    "model.decoder.num_layers=1",
    "model.decoder.feedforward_dim=32",
    "model.num_queries=10",
    "model.num_classes=2",
]


def build(*overrides):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(MODEL_CONFIG), SMALL + list(overrides))
    return instantiate(cfg.model)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An H3L1-(2+1)x3 / KDA checkpoint written by the checkpointer."""
    folder = str(tmp_path_factory.mktemp("ckpt"))
    model = build()
    LiteDetrCheckpointer(model, folder).save("model_h3l1")
    return os.path.join(folder, "model_h3l1.pth"), model


def test_same_variant_loads(saved):
    path, original = saved
    model = build()
    LiteDetrCheckpointer(model).load(path)
    for (name, a), b in zip(original.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "overrides,ours,theirs",
    [
        (["model.encoder.num_high_levels=2"], "H2L2-(2+1)x3/key_aware", "H3L1-(2+1)x3/key_aware"),
        (
            ["model.encoder.num_high_updates=3", "model.encoder.num_blocks=2"],
            "H3L1-(3+1)x2/key_aware",
            "H3L1-(2+1)x3/key_aware",
        ),
        (
            ["model.encoder.attention=deformable"],
            "H3L1-(2+1)x3/deformable",
            "H3L1-(2+1)x3/key_aware",
        ),
    ],
)
def test_checkpointer_refuses_another_variant(saved, overrides, ours, theirs):
    path, _ = saved
    model = build(*overrides)
    message = f"checkpoint encoder variant '{theirs}' does not match the config's '{ours}'"
    with pytest.raises(VariantMismatchError, match=re.escape(message)):
        LiteDetrCheckpointer(model).load(path)
    # the plain PyTorch path fails as well instead of loading silently
    state = torch.load(path, weights_only=False)["model"]
    with pytest.raises(VariantMismatchError, match="does not match"):
        model.load_state_dict(state, strict=False)


def test_decoder_cross_attention_is_checked(saved):
    path, _ = saved
    model = build("model.decoder.cross_attention=deformable")
    with pytest.raises(
        VariantMismatchError,
        match="decoder cross-attention 'key_aware' does not match the config's 'deformable'",
    ):
        LiteDetrCheckpointer(model).load(path)


def test_untagged_checkpoint_loads(tmp_path):
    """Backbone-only weights (ImageNet initialisation) carry no tag and load normally."""
    model = build()
    backbone = {"backbone." + k: v + 1 for k, v in model.backbone.state_dict().items()}
    path = str(tmp_path / "backbone.pth")
    torch.save({"model": backbone}, path)
    LiteDetrCheckpointer(model).load(path)
    key = next(k for k in backbone if k.endswith("conv1.weight"))
    assert torch.equal(model.state_dict()[key], backbone[key])


def test_checkpointer_asks_to_convert_a_release_checkpoint(tmp_path):
    path = str(tmp_path / "r50_s3ex3_50.4.pth")
    torch.save({"model": {"transformer.encoder.layers.0.norm1.weight": torch.ones(32)}}, path)
    with pytest.raises(
        CheckpointError, match="convert it first with python tools/convert_lite_detr"
    ):
        LiteDetrCheckpointer(build()).load(path)
    with pytest.raises(
        CheckpointError, match=re.escape(f"{path} is in the layout of the authors'")
    ):
        LiteDetrCheckpointer(build()).load(path)


def test_missing_checkpoint_file_is_a_checkpoint_error(tmp_path):
    path = str(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match=re.escape(f"'{path}' does not exist")):
        LiteDetrCheckpointer(build()).load(path)


def test_variant_tag_lives_with_the_model_and_keeps_its_old_import_paths(saved):
    from lite_detr.modeling import variant_tag
    from lite_detr.modeling.meta_arch import VariantTag as from_meta_arch
    from lite_detr.modeling.meta_arch.dino import VariantTag as from_dino

    assert variant_tag.VariantTag is from_dino is from_meta_arch is VariantTag
    assert variant_tag.VariantMismatchError is VariantMismatchError
    # raised by model.load_state_dict, which knows no file: a model error, not a CheckpointError
    assert issubclass(VariantMismatchError, ValueError)
    assert not issubclass(VariantMismatchError, CheckpointError)
    path, model = saved
    # the tag is stored under the attribute name (variant_tag), wherever its class is defined
    state = torch.load(path, weights_only=False)["model"]
    assert VariantTag.decode(state["variant_tag._extra_state"]) == model.variant_tag.tags


@pytest.mark.parametrize(
    "kind,message",
    [
        ("text", "not a readable checkpoint"),
        ("jpeg", "not a readable checkpoint"),
        ("npy", "not a readable checkpoint"),
        ("random", "not a readable checkpoint"),
        ("empty", "not a readable checkpoint"),
        ("truncated", "not a readable checkpoint"),
        ("tensor", "holds a Tensor, not a checkpoint"),
        ("list", "holds a list, not a checkpoint"),
        ("dict of ints", "maps 'a' to a int, not a tensor"),
        ("python objects", "holds Python objects besides tensors (argparse.Namespace)"),
    ],
)
def test_non_checkpoint_files_name_the_file(tmp_path, saved, kind, message):
    import numpy as np
    from PIL import Image

    from lite_detr.checkpoint import CheckpointError

    path = tmp_path / f"weights_{kind.replace(' ', '_')}.pth"
    if kind == "text":
        path.write_text("hello, this is not a checkpoint\n")
    elif kind == "jpeg":
        Image.new("RGB", (8, 8)).save(path, format="JPEG")
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = open(saved[0], "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "list":
        torch.save([1, 2], path)
    elif kind == "python objects":  # as the authors' release files keep their options
        import argparse

        torch.save({"model": {}, "args": argparse.Namespace(lr=1e-4)}, path)
    else:
        torch.save({"a": 1}, path)
    with pytest.raises(CheckpointError) as e:
        LiteDetrCheckpointer(build()).load(str(path))
    text = str(e.value)
    assert text.startswith(str(path)) and message in text, text
    assert "\n" not in text and "pytorch.org" not in text


def test_resume_refuses_an_optimizer_state_of_another_parameter_order(tmp_path):
    class TwoLayers(nn.Module):
        def __init__(self, wide_first):
            super().__init__()
            # same keys and shapes either way; only the registration (= optimizer) order differs
            if wide_first:
                self.wide, self.narrow = nn.Linear(4, 8), nn.Linear(8, 2)
            else:
                self.narrow, self.wide = nn.Linear(8, 2), nn.Linear(4, 8)

        def forward(self, x):
            return self.narrow(self.wide(x))

    def run(wide_first):
        model = TwoLayers(wide_first)
        optimizer = torch.optim.AdamW(model.parameters())
        return model, optimizer, LiteDetrCheckpointer(model, str(tmp_path), optimizer=optimizer)

    model, optimizer, checkpointer = run(wide_first=True)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    checkpointer.save("model_0000000", iteration=0)
    run(wide_first=True)[2].resume_or_load("", resume=True)  # the same order resumes
    with pytest.raises(CheckpointError, match="another order than in the run that wrote it"):
        run(wide_first=False)[2].resume_or_load("", resume=True)
