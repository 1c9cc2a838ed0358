"""The detectors' own inference speed-ups (issue 16), which change no output: no key padding mask
for an unpadded batch; the two-stage box head on the selected tokens only. (Those that change the
rounding are a deployment step: tests/test_deploy.py.)"""

import torch

from lite_detr.modeling.meta_arch.two_stage import has_padding


def test_has_padding(build_tiny):
    model = build_tiny().eval()
    same = model.preprocess_image([{"image": torch.rand(3, 32, 48)}] * 2)
    mixed = model.preprocess_image(
        [{"image": torch.rand(3, 32, 48)}, {"image": torch.rand(3, 32, 40)}]
    )
    assert not has_padding(same) and has_padding(mixed)


def test_no_padding_mask_gives_the_same_outputs(build_tiny):
    """An unpadded batch runs the attention without a key padding mask; it would be all False,
    so the encoder memory and the decoder outputs are those with the mask, bit for bit."""
    model = build_tiny().eval()
    images = model.preprocess_image([{"image": torch.rand(3, 64, 96) * 255}] * 2)
    outs = []
    with torch.no_grad():
        for padded in (True, False):
            enc = model.encode(*model.extract_features(images), padded=padded)
            assert (enc["key_padding_mask"] is None) == (not padded)
            content, ref_unsig, _ = model.select_queries(enc)
            outs.append((enc["memory"], *model.decode(enc, content, ref_unsig)))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_forward_passes_the_mask_only_for_padded_batches(build_tiny):
    model = build_tiny().eval()
    seen = []
    model.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[5]))
    small, large = torch.rand(3, 48, 64) * 255, torch.rand(3, 64, 96) * 255
    with torch.no_grad():
        model([{"image": large}, {"image": large}])
        model([{"image": small}, {"image": large}])
    assert seen[0] is None
    # the padded image's tokens are masked, the other's not
    assert seen[1] is not None and seen[1][0].any() and not seen[1][1].any()


def test_box_head_on_the_selected_tokens_gives_the_all_token_proposals(build_tiny):
    """Two-stage selection runs the box head on the Q selected tokens, not all S: the same
    reference boxes, encoder-loss outputs and gradients as every token's proposal gathered."""
    model = build_tiny()  # Lite-DINO: class-wise proposals, top-k
    assert not model.binary_proposals
    images = model.preprocess_image(
        [{"image": torch.rand(3, 64, 96) * 255}, {"image": torch.rand(3, 48, 80) * 255}]
    )
    enc = model.encode(*model.extract_features(images), padded=True)
    grads = []
    for selected_only in (True, False):
        if selected_only:
            ref_unsig, interm = model.select_proposals(enc)
        else:
            logits, coords_unsig = model.proposals(enc)
            ref_unsig, interm = model.gather_proposals(
                logits, coords_unsig, model.top_tokens(logits, model.num_queries)
            )
        params = list(model.enc_bbox_embed.parameters())
        grads.append(
            (
                ref_unsig,
                interm,
                torch.autograd.grad(interm["pred_boxes"].sum(), params, retain_graph=True),
            )
        )
    (ref, interm, grad), (ref_all, interm_all, grad_all) = grads
    assert ref.shape == (2, model.num_queries, 4) and not ref.requires_grad
    torch.testing.assert_close(ref, ref_all)
    assert interm.keys() == interm_all.keys()
    for key in interm:
        torch.testing.assert_close(interm[key], interm_all[key])
    for g, g_all in zip(grad, grad_all):
        torch.testing.assert_close(g, g_all)
