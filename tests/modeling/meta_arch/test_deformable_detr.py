import glob
import json
import os
import re

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from PIL import Image

from lite_detr.data.datasets.shapes import generate_shapes_dataset
from lite_detr.layers import ATTENTION_TYPES, box_sine_embedding
from lite_detr.modeling import DINO, InterleavedEncoder
from lite_detr.modeling.meta_arch import TwoStageDeformableDETR
from lite_detr.modeling.meta_arch.deformable_detr import DeformableDETR
from lite_detr.solver import get_detr_optimizer_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def build_tiny(build_tiny):
    """conftest's ``build_tiny`` with Deformable DETR as the default model."""

    def build(name="deformable_detr_r50", overrides=(), seed=0):
        return build_tiny(name, overrides, seed)

    return build


@pytest.fixture(scope="module")
def shapes_batch(tmp_path_factory):
    """Two images of the synthetic shapes dataset (64x64, up to 10 objects) as model inputs."""
    out = str(tmp_path_factory.mktemp("data") / "shapes")
    generate_shapes_dataset(out, num_train=2, num_val=1, image_size=64, seed=0)
    with open(os.path.join(out, "annotations", "instances_train.json")) as f:
        coco = json.load(f)
    batch = []
    for img in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        pixels = np.asarray(Image.open(os.path.join(out, img["file_name"])).convert("RGB"))
        inst = Instances((img["height"], img["width"]))
        inst.gt_boxes = Boxes(torch.tensor([a["bbox"] for a in anns]).reshape(-1, 4))
        inst.gt_boxes.tensor[:, 2:] += inst.gt_boxes.tensor[:, :2]  # xywh -> xyxy
        inst.gt_classes = torch.tensor([a["category_id"] - 1 for a in anns], dtype=torch.int64)
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        batch.append({"image": image, "instances": inst})
    assert all(len(x["instances"]) > 0 for x in batch)
    return batch


def train_steps(model, batch, steps=20, lr=1e-3):
    """Plain AdamW steps on one batch; returns the total loss of each step."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    history = []
    for _ in range(steps):
        loss = sum(model(batch).values())
        history.append(loss.item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
    return history


def test_built_from_configs(build_tiny):
    model = build_tiny()
    # a sibling of DINO on the shared base, not a DINO with parts switched off
    assert type(model) is DeformableDETR and isinstance(model, TwoStageDeformableDETR)
    assert not isinstance(model, DINO) and not hasattr(model, "denoising")
    assert model.num_queries == 20
    assert not model.decoder.look_forward_twice
    assert model.decoder.class_embed[0] is not model.decoder.class_embed[1]  # one head per layer
    assert model.criterion.weight_dict["loss_class"] == 2.0
    assert model.variant_tag.tags == {"encoder": "deformable2/deformable", "decoder": "deformable"}
    # content and positional queries come from the proposals: no learned query embedding, no
    # ref_point_head, and no final decoder LayerNorm in the weights
    keys = list(model.state_dict())
    assert not any(
        k.startswith(("tgt_embed", "decoder.ref_point_head", "decoder.norm")) for k in keys
    )
    assert model.proposal_embed.pos_trans.weight.shape == (128, 128)  # 2C -> 2C
    assert model.proposal_embed.pos_trans_norm.normalized_shape == (128,)
    lite = build_tiny("lite_deformable_detr_r50")
    assert type(lite) is DeformableDETR and isinstance(lite.encoder, InterleavedEncoder)
    assert lite.variant_tag.tags == {"encoder": "H3L1-(2+1)x1/key_aware", "decoder": "key_aware"}


@pytest.mark.parametrize("name", ["deformable_detr_r50", "lite_deformable_detr_r50"])
def test_train_and_eval_on_images_of_different_sizes(name, build_tiny, make_input):
    model = build_tiny(name)
    batch = [
        make_input(64, 96, [[10, 12, 60, 50], [50, 30, 90, 60]], [0, 2], out_hw=(128, 192)),
        make_input(56, 48, [[5, 5, 30, 40]], [1], seed=1),
    ]
    model.train()
    losses = model(batch)
    assert set(losses) == {
        b + s for b in ("loss_class", "loss_bbox", "loss_giou") for s in ("", "_0", "_enc")
    }
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # every trainable parameter is used (DDP without find_unused_parameters)
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.proposal_embed.pos_trans.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        results = model(batch)
    r0, r1 = results[0]["instances"], results[1]["instances"]
    assert r0.image_size == (128, 192) and r1.image_size == (56, 48)
    assert len(r0) == len(r1) == 30
    assert (r0.pred_classes < 4).all() and ((r0.scores >= 0) & (r0.scores <= 1)).all()
    b = r0.pred_boxes.tensor
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 192).all() and (b[:, 3] <= 128).all()


def test_queries_follow_the_proposals(build_tiny, make_input):
    """Two-stage: each decoder query's content and position are the two halves of a projection
    of its selected proposal box; the same positional queries serve every decoder layer."""
    model = build_tiny().eval()
    seen, layer_pos = {}, []
    model.decoder.register_forward_hook(
        lambda m, args, kw, out: seen.update(args=args, kw=kw), with_kwargs=True
    )
    for layer in model.decoder.layers:
        layer.register_forward_hook(lambda m, args, out: layer_pos.append(args[1]))
    with torch.no_grad():
        model([make_input(96, 96, [], [])])
    content, ref_unsig = seen["args"][:2]
    query_pos = seen["kw"]["query_pos"]
    assert content.shape == query_pos.shape == (1, 20, 64) and ref_unsig.shape == (1, 20, 4)
    with torch.no_grad():
        emb = box_sine_embedding(ref_unsig.sigmoid(), 32)
        both = model.proposal_embed.pos_trans_norm(model.proposal_embed.pos_trans(emb))
    torch.testing.assert_close(query_pos, both[..., :64])
    torch.testing.assert_close(content, both[..., 64:])
    assert not torch.allclose(content[0, 0], content[0, 1])
    assert all(p is query_pos for p in layer_pos)


def test_binary_proposals_over_all_tokens(build_tiny, make_input):
    """Deformable DETR's proposals, as its release: a K-way classifier (K = num_classes), the
    top-k by channel 0; the encoder loss matches every token's proposal to the ground truth
    relabelled class 0 and trains all K channels (the others as negatives)."""
    model = build_tiny()
    assert model.binary_proposals and model.enc_class_embed.out_features == 4
    batch = [
        make_input(64, 96, [[10, 12, 60, 50], [50, 30, 90, 60]], [3, 2]),
        make_input(64, 96, [], [], seed=1),  # an image without objects (kept, as the release)
    ]
    with torch.no_grad():
        # channel 0 made to disagree with the best channel, so the two rankings differ
        model.enc_class_embed.bias[1:] += 5.0
        enc = model.encode(*model.extract_features(model.preprocess_image(batch)))
        ref_unsig, interm = model.select_proposals(enc)
    s = enc["memory"].shape[1]
    assert interm["pred_logits"].shape == (2, s, 4) and interm["pred_boxes"].shape == (2, s, 4)
    logits = interm["pred_logits"]
    top = torch.topk(logits[0, :, 0], 20).indices
    assert not torch.equal(top, torch.topk(logits[0].max(-1)[0], 20).indices)
    torch.testing.assert_close(ref_unsig[0].sigmoid(), interm["pred_boxes"][0, top])

    calls = []
    model.criterion.matcher.register_forward_hook(lambda m, args, out: calls.append(args))
    model.enc_class_embed.weight.grad = None
    losses = model.train()(batch)
    (enc_outputs, enc_targets), *_ = [c for c in calls if c[0]["pred_logits"].shape[1] == s]
    assert enc_targets[0]["labels"].tolist() == [0, 0] and len(enc_targets[1]["labels"]) == 0
    assert enc_outputs["pred_logits"].shape[-1] == 4 and torch.isfinite(losses["loss_class_enc"])
    losses["loss_class_enc"].backward()
    grad = model.enc_class_embed.bias.grad
    assert (grad[1:] > 0).all()  # every other channel is pushed down (a negative everywhere)
    # DINO keeps its class-aware proposals, trained over the selected ones
    dino = build_tiny("dino_r50")
    assert not dino.binary_proposals and dino.enc_class_embed.out_features == 3


def test_recipe_dropout_and_lr_multipliers_by_parameter_name(tiny_config):
    """Dropout 0.1 everywhere (encoder, decoder, self-attention) and lr 2e-4 with x0.1 on the
    sampling offsets and the backbone, as Deformable DETR's release."""
    path = os.path.join(
        ROOT, "projects/lite_deformable_detr/configs/deformable_detr_r50_two_stage_50ep.py"
    )
    for name in ("deformable_detr_r50", "lite_deformable_detr_r50"):
        cfg = LazyConfig.load(path)
        cfg.model = tiny_config(name).model
        model = instantiate(cfg.model)
        drops = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        attentions = tuple(ATTENTION_TYPES.values())
        inner = {m.dropout.p for m in model.modules() if isinstance(m, attentions)}
        assert drops == {0.0, 0.1} and inner == {0.0}  # 0: inside the deformable attentions
        assert {
            m.dropout for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)
        } == {0.1}
        cfg.optimizer.params.model = model
        groups = instantiate(cfg.optimizer.params)
        lr = {id(p): g["lr"] for g in groups for p in g["params"]}
        named = dict(model.named_parameters())
        offsets = [n for n in named if "sampling_offsets" in n]
        assert any(n.startswith("encoder.") for n in offsets)
        assert any(n.startswith("decoder.") for n in offsets)
        for n, p in named.items():
            if not p.requires_grad:
                continue
            expected = 2e-5 if "sampling_offsets" in n or n.startswith("backbone.") else 2e-4
            assert lr[id(p)] == pytest.approx(expected), n
    with pytest.raises(ValueError, match="reference_point.*match no parameter"):
        get_detr_optimizer_params(model, 2e-4, 1e-4, lr_multipliers={"reference_point": 0.1})


def test_bad_config_raises_clear_error(build_tiny, make_input):
    with pytest.raises(ValueError, match="500 queries exceed"):
        build_tiny(overrides=["model.num_queries=500"]).eval()([make_input(32, 32, [], [])])
    with pytest.raises(ValueError, match="positional_queries=input"):
        build_tiny(overrides=["model.decoder.positional_queries=reference_boxes"])
    with pytest.raises(ValueError, match="embed_dim"):
        build_tiny(overrides=["model.position_embedding.num_pos_feats=16"])


def test_loss_falls_on_synthetic_shapes(build_tiny, shapes_batch):
    torch.set_num_threads(2)
    history = train_steps(build_tiny(seed=0), shapes_batch, steps=20)
    assert all(np.isfinite(history)), history
    assert np.mean(history[-3:]) < 0.8 * np.mean(history[:3]), history


@pytest.mark.parametrize(
    "path",
    sorted(glob.glob(os.path.join(ROOT, "projects", "lite_deformable_detr", "configs", "*.py"))),
)
def test_experiment_configs_match_their_names(path):
    cfg = LazyConfig.load(path)
    name = os.path.basename(path)[: -len(".py")]
    epochs = int(re.search(r"_(\d+)ep$", name).group(1))
    # the release's total batch 32 at lr 2e-4, epochs counted as passes over the data
    assert cfg.train.epochs == epochs and cfg.train.max_iter is None
    assert cfg.dataloader.train.total_batch_size == 32
    assert cfg.optimizer.lr == 2e-4 and cfg.model.num_queries == 300
    assert dict(cfg.optimizer.params.lr_multipliers) == {"sampling_offsets": 0.1}
    assert cfg.model.encoder.feedforward_dim == cfg.model.decoder.feedforward_dim == 1024
    assert cfg.model.encoder.dropout == cfg.model.decoder.dropout == 0.1
    assert cfg.model.decoder.positional_queries == "input" and not cfg.model.decoder.final_norm
    assert cfg.model.binary_proposals and cfg.model.select_box_nums_for_evaluation == 100
    m = re.search(r"_h(\d)l(\d)_a(\d)b(\d)_", name)
    enc = cfg.model.encoder
    if m is None:
        assert name.startswith("deformable_detr_r50_two_stage") and enc.num_layers == 6
        assert cfg.model._target_ is DeformableDETR and enc.attention == "deformable"
    else:
        h, low, a, b = map(int, m.groups())
        assert cfg.model._target_ is DeformableDETR and enc.attention == "key_aware"
        assert cfg.model.decoder.cross_attention == "key_aware"
        assert (enc.num_high_levels, 4 - enc.num_high_levels) == (h, low)
        assert (enc.num_high_updates, enc.num_blocks) == (a, b) and a * b == 6


@pytest.mark.parametrize(
    "base,lite",
    [
        ("lite_deformable_detr/configs/models/deformable_detr_r50.py", "lite_deformable_detr_r50"),
        ("lite_h_detr/configs/models/h_detr_r50.py", "lite_h_detr_r50"),
        ("lite_dino/configs/models/dino_r50.py", "lite_dino_r50"),
    ],
)
def test_lite_models_differ_from_their_baseline_in_the_encoder_only(base, lite):
    """Besides the encoder, only the detector class and the decoder's attention type (KDA)."""
    from omegaconf import OmegaConf

    models = []
    for path in (base, os.path.join(os.path.dirname(base), lite + ".py")):
        d = OmegaConf.to_container(LazyConfig.load(os.path.join(ROOT, "projects", path)).model)
        models.append(d)
    baseline, lite_model = models
    assert baseline["decoder"].pop("cross_attention") == "deformable"
    assert lite_model["decoder"].pop("cross_attention") == "key_aware"
    assert lite_model["encoder"]["feedforward_dim"] == baseline["encoder"]["feedforward_dim"]
    assert lite_model["encoder"]["dropout"] == baseline["encoder"]["dropout"]
    for d in models:
        del d["encoder"], d["_target_"]
    assert lite_model == baseline
