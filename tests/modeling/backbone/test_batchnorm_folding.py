"""BatchNorm folded into the backbone's convs at inference: same outputs as unfolded (float
tolerance), training untouched, state dict and checkpoints unchanged, the cache follows weight
changes."""

import copy
import io

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling.backbone import BasicStem, ResNet
from torch import nn

from lite_detr.modeling.backbone import (
    fold_batchnorm_at_inference,
    make_resnet_stages,
)


def randomize_norms(model, seed=0):
    """Statistics and affine parameters far from the init's identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def resnet18(norm="FrozenBN", freeze_at=2, seed=0):
    torch.manual_seed(seed)
    model = ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm=norm),
        stages=make_resnet_stages(depth=18, norm=norm),
        out_features=["res3", "res4", "res5"],
        freeze_at=freeze_at,
    )
    randomize_norms(model, seed)
    return model


def run(model, x, fold, channels_last=True):
    fold_batchnorm_at_inference(model, fold=fold, channels_last=channels_last)
    return model(x)


def assert_features_close(actual, expected):
    assert actual.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(
            actual[k], expected[k], rtol=1e-4, atol=1e-4 * expected[k].abs().max()
        )


def test_every_batchnorm_conv_is_converted_and_nothing_else():
    model = resnet18()
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    # stem + 8 blocks x 2 convs + 3 projection shortcuts
    assert fold_batchnorm_at_inference(model) == 20
    assert all(type(m) is not Conv2d for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires_grad
    # a conv without a BatchNorm (the neck's GroupNorm convs, a plain conv) keeps its class
    other = nn.Sequential(
        Conv2d(3, 8, 1, norm=nn.GroupNorm(2, 8)), Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
    )
    assert fold_batchnorm_at_inference(other) == 0
    assert [type(m) for m in other] == [Conv2d, Conv2d, nn.Conv2d]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_folded_equals_unfolded_at_inference(norm, channels_last):
    model = resnet18(norm).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = run(model, x, fold=False)
        folded = run(model, x, fold=True, channels_last=channels_last)
        cached = model(x)  # from the cache
    assert_features_close(folded, expected)
    for k in expected:
        assert not torch.equal(folded[k], expected[k])  # the folded path did run
        assert folded[k].is_contiguous(memory_format=torch.channels_last) == channels_last
        assert torch.equal(cached[k], folded[k])


def test_folding_with_autograd_reaches_the_weights():
    """In eval mode with autograd on (e.g. gradients w.r.t. the input), the folded weights are
    recomputed each call: the gradients equal the unfolded ones."""
    model = resnet18(freeze_at=0).eval()
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for fold in (False, True):
        model.zero_grad()
        run(model, x, fold)["res5"].square().mean().backward()
        grads.append(model.res3[0].conv1.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-3 * grads[0].abs().max())


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_training_mode_is_not_folded(norm):
    """Training runs the original conv + norm: same outputs, gradients and (trainable BN)
    running statistics as an unconverted copy, bit for bit."""
    model = resnet18(norm, freeze_at=0).train()
    plain = copy.deepcopy(model)
    fold_batchnorm_at_inference(model)
    x = torch.randn(2, 3, 64, 64)
    out, ref = model(x), plain(x)
    for k in ref:
        assert torch.equal(out[k], ref[k])
        assert out[k].is_contiguous()  # not channels-last
    sum(o.sum() for o in out.values()).backward()
    sum(o.sum() for o in ref.values()).backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad), name
    for (name, b), c in zip(model.named_buffers(), plain.buffers()):
        assert torch.equal(b, c), name


def test_state_dict_and_checkpoints_are_unchanged():
    model = resnet18()
    plain = copy.deepcopy(model)
    fold_batchnorm_at_inference(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.eval()(x)  # fills the folded-weight cache: it must not reach the state dict
    state, ref = model.state_dict(), plain.state_dict()
    assert list(state) == list(ref)
    assert all(torch.equal(state[k], ref[k]) and state[k].stride() == ref[k].stride() for k in ref)
    # a checkpoint of the folded model loads into an unconverted one and back
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = resnet18(seed=1)
    fresh.load_state_dict(torch.load(buf))
    fold_batchnorm_at_inference(fresh)
    with torch.no_grad():
        assert_features_close(fresh.eval()(x), plain.eval()(x))


def test_cache_follows_weight_changes():
    model = resnet18().eval()
    fold_batchnorm_at_inference(model)
    other = resnet18(seed=1).eval()
    x = torch.randn(1, 3, 64, 64)
    conv = model.res3[0].conv1
    with torch.no_grad():
        model(x)
        first = conv._folded_cache[2][0]
        # in-place changes (an optimizer step, load_state_dict) of a weight and of a statistic
        model.load_state_dict(other.state_dict())
        assert_features_close(model(x), run(copy.deepcopy(model), x, fold=False))
        assert not torch.equal(conv._folded_cache[2][0], first)
        model.res4[1].conv2.norm.running_var.mul_(4.0)
        assert_features_close(model(x), run(copy.deepcopy(model), x, fold=False))
        # a replaced tensor
        conv.weight.data = conv.weight.data * 2
        assert_features_close(model(x), run(copy.deepcopy(model), x, fold=False))
        # the switch: a changed memory format
        fold_batchnorm_at_inference(model, channels_last=False)
        assert model(x)["res3"].is_contiguous()
