import glob
import os
import re

import pytest
import torch
from detectron2.config import LazyConfig

from lite_detr.modeling import (
    HDETR,
    DeformableDETR,
    DeformableEncoder,
    InterleavedEncoder,
    TwoStageDeformableDETR,
)
from lite_detr.modeling.meta_arch.h_detr import build_hybrid_attn_mask, repeat_targets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PROJECTS = os.path.join(ROOT, "projects")

BASE = ("loss_class", "loss_bbox", "loss_giou")


@pytest.fixture
def build_tiny(build_tiny):
    """conftest's ``build_tiny`` (H-DETR: 20 + 40 queries, k = 3) with H-DETR as the default."""

    def build(name="h_detr_r50", overrides=(), seed=0):
        return build_tiny(name, overrides, seed)

    return build


@pytest.fixture
def batch(make_input):
    return [
        make_input(64, 96, [[10, 12, 60, 50], [50, 30, 90, 60]], [0, 2], out_hw=(128, 192)),
        make_input(72, 64, [[5, 5, 30, 40], [30, 20, 60, 50], [8, 50, 40, 70]], [1, 3, 1], seed=1),
    ]


def decoder_calls(model):
    """Records the queries (N, Q, C) and self-attention mask of every decoder call."""
    calls = []
    model.decoder.register_forward_hook(
        lambda m, args, out: calls.append({"query": args[0], "attn_mask": args[7], "out": out})
    )
    return calls


def test_hybrid_attn_mask_and_repeated_targets():
    mask = build_hybrid_attn_mask(2, 3)
    expected = torch.tensor(
        [
            [0, 0, 1, 1, 1],
            [0, 0, 1, 1, 1],
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    targets = [
        {"labels": torch.tensor([2, 0]), "boxes": torch.rand(2, 4)},
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
    ]
    rep = repeat_targets(targets, 3)
    assert rep[0]["labels"].tolist() == [2, 0, 2, 0, 2, 0]
    assert torch.equal(rep[0]["boxes"][4:], targets[0]["boxes"])
    assert rep[1]["labels"].shape == (0,) and rep[1]["boxes"].shape == (0, 4)


def test_query_counts(build_tiny):
    model = build_tiny()
    assert type(model) is HDETR and isinstance(model, TwoStageDeformableDETR)
    assert not isinstance(model, DeformableDETR)  # a sibling on the shared base
    # num_queries is the one-to-one group, in training and at inference alike
    assert model.num_queries == 20 and model.num_queries_one2many == 40
    assert model.train().num_queries == 20 and model.eval().num_queries == 20
    # mixed query selection: learned content queries for both groups; decoder with
    # look-forward-twice, positional queries from the proposals, no final norm
    assert model.tgt_embed.weight.shape == (60, 64)
    assert model.decoder.look_forward_twice and model.decoder.norm is None
    assert model.decoder.positional_queries == "input" and model.binary_proposals
    lite = build_tiny("lite_h_detr_r50")
    assert type(lite) is HDETR and isinstance(lite.encoder, InterleavedEncoder)
    assert lite.variant_tag.tags == {"encoder": "H3L1-(2+1)x1/key_aware", "decoder": "key_aware"}


@pytest.mark.parametrize("name", ["h_detr_r50", "lite_h_detr_r50"])
def test_one2many_branch_in_training_only(name, build_tiny, batch):
    model = build_tiny(name)
    calls = decoder_calls(model)

    losses = model.train()(batch)
    one2one = {b + s for b in BASE for s in ("", "_0", "_enc")}
    one2many = {b + s for b in BASE for s in ("_one2many", "_0_one2many")}
    assert set(losses) == one2one | one2many
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    train_call = calls[-1]
    assert train_call["query"].shape == (2, 60, 64)
    assert torch.equal(train_call["attn_mask"], build_hybrid_attn_mask(20, 40))

    with torch.no_grad():
        results = model.eval()(batch)
    eval_call = calls[-1]
    assert len(calls) == 2
    # inference: only the one-to-one queries are selected and decoded, without a mask
    assert eval_call["query"].shape == (2, 20, 64) and eval_call["attn_mask"] is None
    assert [len(r["instances"]) for r in results] == [30, 30]
    assert results[0]["instances"].image_size == (128, 192)

    # the masked one-to-one group in training computes exactly what inference computes
    for train_out, eval_out in zip(train_call["out"], eval_call["out"]):
        torch.testing.assert_close(train_out[:, :, :20].detach(), eval_out, atol=1e-4, rtol=1e-4)


def test_top_k_at_test_and_learned_content_of_the_one2one_group(build_tiny, batch):
    """Inference keeps the top select_box_nums_for_evaluation (query, class) pairs of the Q1
    one-to-one queries, whose content is the first Q1 rows of tgt_embed."""
    for k in (7, 30):
        model = build_tiny(overrides=[f"model.select_box_nums_for_evaluation={k}"]).eval()
        calls = decoder_calls(model)
        with torch.no_grad():
            results = model(batch)
        assert [len(r["instances"]) for r in results] == [k, k]
        scores = results[0]["instances"].scores
        assert torch.equal(scores, scores.sort(descending=True).values)
    torch.testing.assert_close(calls[-1]["query"][0], model.tgt_embed.weight[:20])


def test_one2many_loss_weight_and_images_without_objects(build_tiny, make_input):
    batch = [make_input(64, 64, [[4, 4, 40, 40]], [2]), make_input(64, 80, [], [], seed=1)]
    torch.manual_seed(0)
    losses = build_tiny().train()(batch)
    torch.manual_seed(0)
    halved = build_tiny(overrides=["model.one2many_loss_weight=0.5"]).train()(batch)
    for k, v in losses.items():
        expected = v * 0.5 if k.endswith("_one2many") else v
        torch.testing.assert_close(halved[k], expected)
    empty = build_tiny().train()([make_input(64, 64, [], []), batch[1]])
    assert set(empty) == set(losses) and empty["loss_bbox_one2many"].item() == 0.0


def test_bad_config_raises_clear_errors(build_tiny, make_input):
    with pytest.raises(TypeError, match="denoising"):
        build_tiny(overrides=["+model.denoising=null"])
    with pytest.raises(ValueError, match="num_queries_one2many"):
        build_tiny(overrides=["model.num_queries_one2many=-1"])
    with pytest.raises(ValueError, match="one2many_repeats"):
        build_tiny(overrides=["model.one2many_repeats=0"])
    # 20 + 40 queries need 60 encoder tokens: a 32x32 image has 16 + 4 + 1 + 1
    with pytest.raises(ValueError, match="60 queries exceed"):
        build_tiny().train()([make_input(32, 32, [[1, 1, 20, 20]], [0])])


def test_loss_falls(build_tiny, make_input):
    torch.set_num_threads(2)
    gt = [[[8, 10, 30, 34], [34, 30, 60, 58]], [[4, 6, 22, 22], [22, 24, 44, 46], [44, 6, 60, 28]]]
    batch = [
        make_input(64, 64, gt[0], [0, 2]),
        make_input(64, 64, gt[1], [1, 3, 1], seed=1),
    ]
    for x, boxes in zip(batch, gt):  # bright boxes on a dark background: learnable in 20 steps
        x["image"] //= 4
        for x0, y0, x1, y1 in boxes:
            x["image"][:, y0:y1, x0:x1] = 255
    model = build_tiny(seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    history = []
    for _ in range(20):
        losses = model(batch)
        history.append({k: v.item() for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
    for one2many in (False, True):  # both groups learn
        total = [
            sum(v for k, v in h.items() if k.endswith("_one2many") == one2many) for h in history
        ]
        assert all(torch.isfinite(torch.tensor(total))), total
        assert sum(total[-3:]) < 0.8 * sum(total[:3]), (one2many, total)


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(PROJECTS, "lite_h_detr", "configs", "*.py")))
)
def test_experiment_configs_match_their_names(path):
    cfg = LazyConfig.load(path)
    name = os.path.basename(path)[: -len(".py")]
    epochs = int(re.search(r"_(\d+)ep$", name).group(1))
    assert cfg.train.epochs == epochs and cfg.train.max_iter is None
    assert cfg.dataloader.train.total_batch_size == 16 and cfg.optimizer.lr == 2e-4
    model = cfg.model
    assert (model.num_queries, model.num_queries_one2many, model.one2many_repeats) == (300, 1500, 6)
    lite = name.startswith("lite_h_detr_r50_h3l1_a2b3_")
    assert model._target_ is HDETR
    assert model.encoder._target_ is (InterleavedEncoder if lite else DeformableEncoder)
    # H-DETR's R50 36-epoch recipe; the Lite version differs in the encoder (and KDA) only
    assert model.encoder.feedforward_dim == model.decoder.feedforward_dim == 2048
    assert model.encoder.dropout == model.decoder.dropout == 0.0
    # top-100 detections: the R50 release's --topk default
    assert model.decoder.look_forward_twice and model.select_box_nums_for_evaluation == 100
    assert dict(cfg.optimizer.params.lr_multipliers) == {"sampling_offsets": 0.1}
    if lite:
        enc = model.encoder
        assert (enc.num_high_levels, enc.num_high_updates, enc.num_blocks) == (3, 2, 3)
        assert enc.attention == model.decoder.cross_attention == "key_aware"
        base = LazyConfig.load(os.path.join(PROJECTS, "lite_h_detr/configs/models/h_detr_r50.py"))
        assert _without(model, "encoder") == _without(base.model, "encoder")


def _without(model_cfg, *keys):
    """A model node as a plain dict without ``keys`` and its target, the decoder's attention
    type left out (KDA in the Lite versions)."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(model_cfg)
    for k in keys + ("_target_",):
        d.pop(k)
    d["decoder"].pop("cross_attention")
    return d


def test_content_queries_keep_the_embedding_init(build_tiny):
    """H-DETR's one-to-one + one-to-many content queries are an ``nn.Embedding`` outside the
    release's transformer: N(0, 1), not the Xavier scale of DINO's ``tgt_embed`` (inside its
    transformer; at full size, 1800 x 256, Xavier would be ~30x smaller)."""
    model = build_tiny()
    weight = model.tgt_embed.weight.detach()
    assert weight.shape == (60, 64)  # (20 + 40 queries, embed_dim 64)
    assert 0.9 < weight.std().item() < 1.1 and abs(weight.mean().item()) < 0.1
    assert weight.abs().max() > (6 / (60 + 64)) ** 0.5  # beyond any Xavier-uniform draw
    # the proposal projection is inside the release's transformer: Xavier, as before
    assert model.proposal_embed.pos_trans.weight.abs().max() <= (6 / (128 + 128)) ** 0.5
    dino = build_tiny("dino_r50")
    rows, dim = dino.tgt_embed.weight.shape
    assert dino.tgt_embed.weight.abs().max() <= (6 / (rows + dim)) ** 0.5
