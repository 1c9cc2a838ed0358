import pytest
import torch
from torchvision.ops import box_iou

from lite_detr.modeling import DINO, InterleavedEncoder


def test_named_modules(build_tiny):
    model = build_tiny()  # Lite-DINO: DINO with the interleaved encoder
    assert type(model) is DINO and isinstance(model.encoder, InterleavedEncoder)
    for name in ("backbone", "neck", "encoder", "decoder"):
        assert isinstance(getattr(model, name), torch.nn.Module)
    assert model.variant_tag.tags == {"encoder": "H3L1-(2+1)x3/key_aware", "decoder": "key_aware"}
    assert model.device == torch.device("cpu")
    assert "pixel_mean" not in model.state_dict()  # non-persistent


def test_train_and_eval_on_images_of_different_sizes(build_tiny, make_input):
    model = build_tiny()
    batch = [
        make_input(96, 128, [[10, 12, 60, 70], [50, 40, 120, 90]], [0, 2], out_hw=(192, 256)),
        make_input(80, 64, [[5, 5, 30, 40]], [1], seed=1),
    ]
    model.train()
    losses = model(batch)
    suffixes = ["", "_0", "_enc", "_dn", "_dn_0"]
    assert set(losses) == {
        b + s for b in ("loss_class", "loss_bbox", "loss_giou") for s in suffixes
    }
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []

    model.eval()
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 2
    r0, r1 = results[0]["instances"], results[1]["instances"]
    assert r0.image_size == (192, 256) and r1.image_size == (80, 64)  # "height"/"width" or own size
    assert 0 < len(r0) <= 30 and len(r1) <= 30
    assert r0.scores.shape == r0.pred_classes.shape == (len(r0),)
    assert (r0.pred_classes < 3).all() and ((r0.scores >= 0) & (r0.scores <= 1)).all()
    b = r0.pred_boxes.tensor
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 256).all() and (b[:, 3] <= 192).all()


def test_images_without_ground_truth(build_tiny, make_input):
    model = build_tiny().train()
    empty = [make_input(64, 64, [], []), make_input(64, 80, [], [], seed=1)]
    losses = model(empty)
    assert "loss_class_dn" in losses and losses["loss_bbox"].item() == 0.0
    sum(losses.values()).backward()
    assert model.denoising.label_enc.weight.grad is not None  # DDP needs a gradient everywhere
    mixed = model([make_input(64, 64, [[4, 4, 40, 40]], [2]), empty[1]])
    assert set(mixed) == set(losses)


def test_deformable_baseline_and_kda_off_overrides(build_tiny, make_input):
    dino = build_tiny("dino_r50")
    assert type(dino) is DINO and dino.variant_tag.tags["encoder"] == "deformable6/deformable"
    # the decoder's attention is its own choice: swapping the encoder's leaves it as it is
    encoder_off = build_tiny(overrides=["model.encoder.attention=deformable"])
    assert encoder_off.variant_tag.tags == {
        "encoder": "H3L1-(2+1)x3/deformable",
        "decoder": "key_aware",
    }
    kda_off = build_tiny(
        overrides=["model.encoder.attention=deformable", "model.decoder.cross_attention=deformable"]
    )
    assert kda_off.variant_tag.tags["decoder"] == "deformable"
    assert not any("query_proj" in n for n, _ in kda_off.named_parameters())
    swapped = build_tiny(
        overrides=["model.encoder=${baseline_encoder}", "baseline_encoder.feedforward_dim=128"]
    )
    assert swapped.variant_tag.tags == {"encoder": "deformable6/deformable", "decoder": "key_aware"}
    swapped.eval()
    with torch.no_grad():
        assert len(swapped([make_input(64, 64, [], [])])[0]["instances"]) > 0


def test_bad_inputs_raise_clear_errors(build_tiny, make_input):
    model = build_tiny()
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        model.eval()([{"image": torch.zeros(64, 64)}])
    model.train()
    with pytest.raises(ValueError, match="instances"):
        model([{"image": torch.zeros(3, 64, 64)}])
    with pytest.raises(ValueError, match="gt_classes"):
        model([make_input(64, 64, [[1, 1, 20, 20]], [7])])
    with pytest.raises(ValueError, match="500 queries exceed"):
        build_tiny(overrides=["model.num_queries=500"]).eval()([make_input(32, 32, [], [])])
    with pytest.raises(ValueError, match="embed_dim"):
        build_tiny(overrides=["model.position_embedding.num_pos_feats=16"])


def test_overfits_one_image(build_tiny, make_input):
    """A tiny model learns one image with two objects: the matching loss falls by a large factor
    and the top-scoring box of each class then matches its ground truth. The random backbone is
    frozen (its features suffice, and the backward pass is cheaper)."""
    overrides = [
        "model.backbone.freeze_at=5",
        "model.num_queries=10",
        "model.denoising.num_dn_queries=4",
    ]
    model = build_tiny(overrides=overrides, seed=0).train()
    gt = torch.tensor([[8.0, 10.0, 30.0, 34.0], [34.0, 30.0, 60.0, 54.0]])
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    img[0, 10:34, 8:30] = 255
    img[2, 30:54, 34:60] = 255
    x = make_input(64, 64, gt, [0, 2])
    x["image"] = img
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    history = []
    for _ in range(50):
        losses = model([x])
        history.append(sum(losses[k].item() for k in ("loss_class", "loss_bbox", "loss_giou")))
        opt.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    assert min(history[-5:]) < history[0] / 5, history
    model.eval()
    with torch.no_grad():
        r = model([{"image": img}])[0]["instances"]
    for cls, box in zip((0, 2), gt):
        sel = r[r.pred_classes == cls]
        best = int(sel.scores.argmax())
        iou = box_iou(sel.pred_boxes.tensor[best : best + 1], box[None]).item()
        assert iou > 0.5, (cls, iou, sel.pred_boxes.tensor[best])


@pytest.mark.parametrize("name", ["dino_r50", "lite_dino_r50"])
def test_trains_under_autocast(build_tiny, make_input, name):
    """Mixed precision (train.amp): autocast hands the attention float16/bfloat16 values beside
    float32 sampling locations; the ops run in float32 and the step gives finite gradients."""
    model = build_tiny(name).train()
    batch = [make_input(96, 128, [[10, 12, 60, 70]], [0])]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["dino_r50", "lite_dino_r50"])
def test_encoder_and_decoder_compile_without_host_reads(build_tiny, make_input, name):
    """torch.compile(fullgraph=True) refuses .item()/.tolist() and other host reads of tensor
    data: the encoder and the decoder (with their attention layers) compile whole and compute
    what they compute eagerly."""
    model = build_tiny(name).eval()
    calls = {}
    for part in ("encoder", "decoder"):
        getattr(model, part).register_forward_pre_hook(
            lambda m, args, kwargs, part=part: calls.setdefault(part, (args, kwargs)),
            with_kwargs=True,
        )
    with torch.no_grad():
        model([make_input(96, 128, [[10, 12, 60, 70]], [0])])
    for part, (args, kwargs) in calls.items():
        module = getattr(model, part)
        torch._dynamo.reset()
        compiled = torch.compile(module, backend="eager", fullgraph=True)
        with torch.no_grad():
            got, expected = compiled(*args, **kwargs), module(*args, **kwargs)
        torch.testing.assert_close(got, expected)


def test_ranking_only_rows(build_tiny, make_input):
    """Class heads with U ranking-only rows after the K classes (converted release weights):
    the query selection and the top-k rank over all rows, their detections are dropped, the
    losses see the K classes only, and the variant tag records U."""
    with pytest.raises(ValueError, match="decoder.num_ranking_only_classes=0"):
        rows = ["model.num_ranking_only_classes=2", "model.decoder.num_ranking_only_classes=0"]
        build_tiny(overrides=rows)
    model = build_tiny(overrides=["model.num_ranking_only_classes=2"])
    assert model.enc_class_embed.out_features == model.decoder.class_embed[0].out_features == 5
    assert model.variant_tag.tags["ranking_only_classes"] == "2"
    with torch.no_grad():  # the two ranking-only rows win everywhere
        model.enc_class_embed.bias[3:] += 10.0
        model.decoder.class_embed[0].bias[3:] += 10.0
        model.decoder.class_embed[0].bias[1] += 7.0  # the best class, still below
    batch = [make_input(96, 128, [[10, 12, 60, 70]], [2])]
    model.train()
    losses = model(batch)
    assert torch.isfinite(sum(losses.values()))  # the criterion takes (..., K) logits
    model.eval()
    with torch.no_grad():
        enc = model.encode(*model.extract_features(model.preprocess_image(batch)), padded=False)
        logits, _ = model.proposals(enc)
        selected = model.top_tokens(logits, model.num_queries)
        inst = model(batch)[0]["instances"]
    assert torch.equal(selected, torch.topk(logits[..., 3:].max(-1)[0], 20, dim=1)[1])
    # the top-30 of 20 queries x 5 rows: the 2 x 20 ranking-only pairs fill it, none reported
    assert len(inst) == 0
