"""Every LazyConfig file under configs/ and projects/ loads, takes an override, survives a
save/load round trip and instantiates (R50 models at full size twice, the rest shrunk)."""

import glob
import os
import re

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for pattern in ("configs/**/*.py", "projects/**/configs/**/*.py")
    for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
    if not os.path.basename(p).startswith("_")
    # functions the model configs call (backbone, neck, encoders, decoder): no nodes of their own
    and not os.path.relpath(p, ROOT).startswith("configs/common/models/")
)
FULL_SIZE = {  # instantiated as written (slow); everything else is shrunk first
    "projects/lite_dino/configs/models/dino_r50.py",
    "projects/lite_dino/configs/models/lite_dino_r50.py",
}
# shrink R50-sized models: R18, width 64, 2 decoder layers, few queries (keys that exist only)
SHRINK = {
    "model.backbone.stages.depth": 18,
    "model.neck.input_shapes.res3.channels": 128,
    "model.neck.input_shapes.res4.channels": 256,
    "model.neck.input_shapes.res5.channels": 512,
    "model.embed_dim": 64,
    "model.position_embedding.num_pos_feats": 32,
    "model.encoder.feedforward_dim": 128,
    "model.encoder.low_feedforward_dim": 64,
    "model.decoder.num_layers": 2,
    "model.decoder.feedforward_dim": 128,
    "model.num_queries": 20,
}
# shrink Swin-T models the same way: a Swin with one block per stage and a quarter of the channels
SWIN_SHRINK = {
    "model.backbone.embed_dim": 24,
    "model.backbone.depths": [1, 1, 1, 1],
    "model.neck.input_shapes.res3.channels": 48,
    "model.neck.input_shapes.res4.channels": 96,
    "model.neck.input_shapes.res5.channels": 192,
}


def load(path):
    return LazyConfig.load(os.path.join(ROOT, path))


def first_number_leaf(node, prefix=""):
    """Dotted key of the first int/float leaf that is not an interpolation."""
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else []
    for key, value in items:
        if str(key).startswith("_"):
            continue
        full = f"{prefix}{key}"
        if isinstance(value, (DictConfig, ListConfig)):
            if isinstance(value, DictConfig):
                found = first_number_leaf(value, full + ".")
                if found:
                    return found
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return full
    return None


def test_configs_are_found():
    assert "configs/common/train.py" in CONFIGS
    assert "projects/lite_dino/configs/lite_dino_r50_4scale_h3l1_a2b3_36ep.py" in CONFIGS
    assert len(CONFIGS) >= 14


@pytest.mark.parametrize("path", CONFIGS)
def test_config_override_and_round_trip(path, tmp_path):
    cfg = load(path)
    assert len(cfg) > 0, f"{path} defines no config node"
    key = first_number_leaf(cfg)
    assert key is not None, f"{path}: no numeric field to override"
    new = OmegaConf.select(cfg, key) + 3
    LazyConfig.apply_overrides(cfg, [f"{key}={new}"])
    assert OmegaConf.select(cfg, key) == new

    first, second = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    LazyConfig.save(cfg, first)
    assert not os.path.exists(first + ".pkl"), f"{path} does not serialise to plain yaml"
    reloaded = LazyConfig.load(first)
    assert OmegaConf.select(reloaded, key) == new
    assert set(reloaded.keys()) == set(cfg.keys())
    LazyConfig.save(reloaded, second)
    with open(first) as a, open(second) as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("path", CONFIGS)
def test_config_instantiates(path):
    cfg = load(path)
    if "model" in cfg and OmegaConf.select(cfg, "model.num_classes", default=0) is None:
        cfg.model.num_classes = 3  # null: train_net takes it from the dataset's json
    if path not in FULL_SIZE and "model" in cfg:
        if OmegaConf.select(cfg, "model.backbone.stages.depth", default=None) == 50:
            existing = [
                f"{k}={v}" for k, v in SHRINK.items() if OmegaConf.select(cfg, k) is not None
            ]
            LazyConfig.apply_overrides(cfg, existing)
        elif OmegaConf.select(cfg, "model.backbone.depths", default=None) is not None:
            shrink = {**SHRINK, **SWIN_SHRINK}
            shrink.pop("model.backbone.stages.depth")
            shrink = {k: v for k, v in shrink.items() if OmegaConf.select(cfg, k) is not None}
            LazyConfig.apply_overrides(cfg, [f"{k}={v}" for k, v in shrink.items()])
    model = None
    for name in cfg:
        node = cfg[name]
        if name == "model":
            torch.manual_seed(0)
            model = instantiate(node)
            assert isinstance(model, torch.nn.Module)
        elif name == "dataloader":
            # the loaders need registered datasets; their mappers are self-contained
            for split in ("train", "test"):
                if OmegaConf.select(node, f"{split}.mapper", default=None) is not None:
                    assert callable(instantiate(node[split].mapper))
        elif name.startswith("lr_multiplier"):
            sched = instantiate(node)
            assert 0 < sched(0.0) <= 1 and 0 < sched(0.999) <= 1
        elif name in ("train",):
            assert "max_iter" in node and "output_dir" in node
    optimizers = [n for n in cfg if n == "optimizer" or n.startswith("AdamW")]
    for name in optimizers:
        cfg[name].params.model = model if model is not None else torch.nn.Linear(2, 2)
        assert isinstance(instantiate(cfg[name]), torch.optim.Optimizer)
    for name in cfg:
        if name not in ["model", "dataloader", "train"] + optimizers and "_target_" in cfg[name]:
            if not name.startswith("lr_multiplier"):
                instantiate(cfg[name])  # e.g. baseline_encoder


# what each R50 model config builds from the shared pieces in configs/common/models: detector,
# encoder (FFN width, dropout), decoder (cross-attention, positional queries), queries
MODELS = {
    "projects/lite_dino/configs/models/dino_r50.py": (
        "DINO", "DeformableEncoder", 2048, 0.0, "deformable", "reference_boxes", 900),
    "projects/lite_dino/configs/models/lite_dino_r50.py": (
        "DINO", "InterleavedEncoder", 2048, 0.0, "key_aware", "reference_boxes", 900),
    "projects/lite_deformable_detr/configs/models/deformable_detr_r50.py": (
        "DeformableDETR", "DeformableEncoder", 1024, 0.1, "deformable", "input", 300),
    "projects/lite_deformable_detr/configs/models/lite_deformable_detr_r50.py": (
        "DeformableDETR", "InterleavedEncoder", 1024, 0.1, "key_aware", "input", 300),
    "projects/lite_h_detr/configs/models/h_detr_r50.py": (
        "HDETR", "DeformableEncoder", 2048, 0.0, "deformable", "input", 300),
    "projects/lite_h_detr/configs/models/lite_h_detr_r50.py": (
        "HDETR", "InterleavedEncoder", 2048, 0.0, "key_aware", "input", 300),
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(MODELS))
def test_model_configs_key_values(path):
    detector, encoder, ffn, dropout, cross_attention, positional_queries, queries = MODELS[path]
    cfg = load(path)
    model = cfg.model
    assert model._target_.__name__ == detector and model.encoder._target_.__name__ == encoder
    assert (model.encoder.feedforward_dim, model.encoder.dropout) == (ffn, dropout)
    assert (model.decoder.feedforward_dim, model.decoder.dropout) == (ffn, dropout)
    assert model.decoder.cross_attention == cross_attention
    assert model.decoder.positional_queries == positional_queries
    assert model.num_queries == queries and model.num_feature_levels == 4
    # the shared R50 backbone and neck
    assert model.backbone.stages.depth == 50 and model.backbone.freeze_at == 2
    assert model.neck.input_shapes.res5.channels == 2048
    # sizes follow the model's: one override changes the neck, encoder and decoder together
    LazyConfig.apply_overrides(cfg, ["model.embed_dim=128", "model.num_feature_levels=3"])
    for node in (model.neck.out_channels, model.encoder.embed_dim, model.decoder.embed_dim):
        assert node == 128
    assert model.neck.num_outs == model.encoder.num_levels == model.decoder.num_levels == 3
    if encoder == "InterleavedEncoder":
        enc = model.encoder
        assert (enc.num_high_levels, enc.num_high_updates, enc.num_blocks) == (3, 2, 3)
        assert enc.attention == "key_aware" and enc.low_feedforward_dim == 256
        # the baseline's encoder, swapped back in whole, follows the model's sizes too
        assert cfg.baseline_encoder._target_.__name__ == "DeformableEncoder"
        assert cfg.baseline_encoder.feedforward_dim == ffn
        LazyConfig.apply_overrides(cfg, ["model.encoder=${baseline_encoder}"])
        assert model.encoder.num_layers == 6 and model.encoder.embed_dim == 128
        assert model.encoder.num_levels == 3


def test_full_size_models():
    dino = instantiate(load("projects/lite_dino/configs/models/dino_r50.py").model)
    lite = instantiate(load("projects/lite_dino/configs/models/lite_dino_r50.py").model)
    assert type(dino).__name__ == type(lite).__name__ == "DINO"
    assert dino.variant_tag.tags == {"encoder": "deformable6/deformable", "decoder": "deformable"}
    assert lite.variant_tag.tags == {"encoder": "H3L1-(2+1)x3/key_aware", "decoder": "key_aware"}
    n_dino = sum(p.numel() for p in dino.parameters())
    n_lite = sum(p.numel() for p in lite.parameters())
    assert 44e6 < n_dino < 50e6  # DINO-4scale R50: ~47M
    assert 44e6 < n_lite < 50e6
    assert (
        dino.num_queries == 900 and len(dino.decoder.layers) == 6 and dino.encoder.num_layers == 6
    )


def test_full_size_swin_t_models():
    """The paper's Lite-DINO Swin-T (~48M parameters) and DINO Swin-T."""
    for name, encoder in [
        ("lite_dino_swin_t_4scale_h3l1_a2b3_36ep", "H3L1-(2+1)x3/key_aware"),
        ("dino_swin_t_4scale_36ep", "deformable6/deformable"),
    ]:
        cfg = load(f"projects/lite_dino/configs/{name}.py")
        model = instantiate(cfg.model)
        assert type(model.backbone).__name__ == "SwinTransformer"
        assert model.variant_tag.tags["encoder"] == encoder
        backbone = sum(p.numel() for p in model.backbone.parameters())
        assert 27e6 < backbone < 28e6  # Swin-T without its classifier head and final norm
        assert 46e6 < sum(p.numel() for p in model.parameters()) < 50e6, name
        assert cfg.model.backbone.drop_path_rate == 0.2
        assert cfg.model.denoising.box_noise_scale == 1.0


@pytest.mark.parametrize(
    "path",
    [p for p in CONFIGS if re.search(r"lite_dino/configs/(lite_)?dino_(r50|swin_t)_4scale", p)],
)
def test_experiment_configs_match_their_names(path):
    cfg = load(path)
    name = os.path.basename(path)[: -len(".py")]
    epochs = int(re.search(r"_(\d+)ep$", name).group(1))
    assert cfg.train.epochs == epochs and cfg.train.max_iter is None
    assert cfg.train.device == "cuda"
    assert cfg.model.num_queries == 900 and cfg.model.num_feature_levels == 4
    assert cfg.dataloader.train.total_batch_size == 16
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.params.backbone_lr_factor == 0.1
    m = re.search(r"_h(\d)l(\d)_a(\d)b(\d)_", name)
    enc = cfg.model.encoder
    if m is None:
        assert name.startswith("dino_") and enc.num_layers == 6
        assert cfg.model.decoder.cross_attention == "deformable"
    else:
        h, low, a, b = map(int, m.groups())
        assert (enc.num_high_levels, 4 - enc.num_high_levels) == (h, low)
        assert (enc.num_high_updates, enc.num_blocks) == (a, b) and a * b == 6
        assert enc.attention == "key_aware" and cfg.model.decoder.cross_attention == "key_aware"
    # docs/training.md's overrides: the decoder's attention is its own choice, not the encoder's
    encoder_off = LazyConfig.apply_overrides(load(path), ["model.encoder.attention=deformable"])
    assert encoder_off.model.decoder.cross_attention == cfg.model.decoder.cross_attention
    kda_off = LazyConfig.apply_overrides(
        load(path),
        ["model.encoder.attention=deformable", "model.decoder.cross_attention=deformable"],
    )
    assert kda_off.model.decoder.cross_attention == "deformable"
    if "baseline_encoder" in cfg:
        swapped = LazyConfig.apply_overrides(load(path), ["model.encoder=${baseline_encoder}"])
        assert swapped.model.encoder.num_layers == 6


@pytest.mark.parametrize(
    "path,norm_decay",
    [
        # the releases of DINO / Lite-DINO, Deformable DETR and H-DETR decay every parameter
        ("projects/lite_dino/configs/lite_dino_r50_4scale_h3l1_a2b3_12ep.py", 1e-4),
        ("projects/lite_deformable_detr/configs/deformable_detr_r50_two_stage_50ep.py", 1e-4),
        ("projects/lite_h_detr/configs/lite_h_detr_r50_h3l1_a2b3_36ep.py", 1e-4),
    ],
)
def test_optimizer_param_groups(path, norm_decay):
    cfg = load(path)
    existing = [f"{k}={v}" for k, v in SHRINK.items() if OmegaConf.select(cfg, k) is not None]
    LazyConfig.apply_overrides(cfg, existing)
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    setting = {}
    for group in opt.param_groups:
        for p in group["params"]:
            setting[p] = (group["lr"], group["weight_decay"])
    named = dict(model.named_parameters())
    lr = cfg.optimizer.lr
    assert setting[named["backbone.res3.0.conv1.weight"]] == (lr / 10, 1e-4)
    assert setting[named["decoder.layers.0.ffn.linear1.weight"]] == (lr, 1e-4)
    assert setting[named["decoder.layers.0.ffn_norm.weight"]][1] == norm_decay
    assert setting[named["level_embeds"]][1] == norm_decay
    if "tgt_embed.weight" in named:
        assert setting[named["tgt_embed.weight"]][1] == norm_decay
    if "denoising.label_enc.weight" in named:
        assert setting[named["denoising.label_enc.weight"]][1] == norm_decay
    # every trainable parameter is decayed: one weight decay in all groups
    assert {g["weight_decay"] for g in opt.param_groups} == {1e-4}


def test_one_override_sets_train_and_test_input_size():
    from lite_detr.engine import load_config

    for path, size in (
        ("projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py", 200),
        ("projects/lite_dino/configs/lite_dino_r50_4scale_h3l1_a2b3_12ep.py", 400),
    ):
        cfg = load_config(os.path.join(ROOT, path), [f"dataloader.input_size={size}"])
        (test_resize,) = instantiate(cfg.dataloader.test.mapper.augmentation)
        assert test_resize.short_edge_length == (size, size)
        train_sizes = instantiate(cfg.dataloader.train.mapper.augmentation)[-1].short_edge_length
        assert max(train_sizes) == size and min(train_sizes) < size


def test_readme_encoder_swap_works_on_the_cpu_config():
    from lite_detr.engine import load_config
    from lite_detr.modeling.encoders import DeformableEncoder

    cfg = load_config(
        os.path.join(ROOT, "projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py"),
        ["model.encoder=${baseline_encoder}"],
    )
    model = instantiate(cfg.model)
    assert isinstance(model.encoder, DeformableEncoder) and len(model.encoder.layers) == 6


@pytest.mark.parametrize(
    "path, old",
    [
        ("projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py", "LiteDINO"),
        ("projects/lite_h_detr/configs/models/lite_h_detr_r50.py", "LiteHDETR"),
    ],
)
def test_config_saved_with_the_old_lite_class_names_still_builds(path, old, tmp_path):
    # runs saved before the Lite* subclasses were dropped name them in their config.yaml
    cfg = load(path)
    saved = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, saved)
    with open(saved) as f:
        text = f.read()
    new = old[len("Lite") :]
    assert f"lite_detr.modeling.{new}\n" in text
    with open(saved, "w") as f:
        f.write(text.replace(f"lite_detr.modeling.{new}\n", f"lite_detr.modeling.{old}\n"))
    model = LazyConfig.load(saved).model
    assert model._target_ == f"lite_detr.modeling.{old}"
    assert type(instantiate(model)).__name__ == new
