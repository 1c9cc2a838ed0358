"""SwinTransformer: shapes at odd sizes, batch independence, the shifted-window mask, drop path,
gradient checkpointing, fvcore's count of the attention, and the official checkpoint's keys."""

import importlib.util
import os

import pytest
import torch
from detectron2.structures import ImageList

from lite_detr.modeling.backbone import SwinTransformer
from lite_detr.modeling.backbone.swin import shifted_window_mask

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
TOOL = os.path.join(ROOT, "tools", "convert_swin_checkpoint.py")

# a small Swin: every stage has a regular and a shifted block
TINY = {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4)}


def tiny(**kwargs):
    torch.manual_seed(0)
    return SwinTransformer(**{**TINY, **kwargs})


def test_output_shapes_and_strides_at_odd_sizes():
    model = tiny(out_features=("res2", "res3", "res4", "res5")).eval()
    shapes = model.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (16, 4),
        "res3": (32, 8),
        "res4": (64, 16),
        "res5": (128, 32),
    }
    with torch.no_grad():
        out = model(torch.randn(1, 3, 333, 517))
    # every halving rounds up: ceil(333 / stride), ceil(517 / stride)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 16, 84, 130),
        "res3": (1, 32, 42, 65),
        "res4": (1, 64, 21, 33),
        "res5": (1, 128, 11, 17),
    }
    # the default outputs, as the neck takes them; stages after res4 are not built
    assert list(tiny().output_shape()) == ["res3", "res4", "res5"]
    assert len(tiny(out_features=["res3", "res4"]).layers) == 3


def test_batch_with_padding_equals_each_padded_image():
    """No token of one image reaches another: the windows and the mask are per image."""
    model = tiny().eval()
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 101, 150, generator=g), torch.randn(3, 90, 163, generator=g)]
    batch = ImageList.from_tensors(images).tensor  # (2, 3, 101, 163), zero padded
    with torch.no_grad():
        together = model(batch)
        for i in range(2):
            alone = model(batch[i : i + 1])
            for k in together:
                torch.testing.assert_close(together[k][i : i + 1], alone[k], atol=1e-5, rtol=1e-5)


def _reference_mask(hp, wp, ws, shift):
    """The official construction: label the 3 x 3 slice regions of the padded map."""
    img = torch.zeros(hp, wp)
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[h, w] = cnt
            cnt += 1
    win = img.view(hp // ws, ws, wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@pytest.mark.parametrize("nh,nw,ws", [(1, 1, 7), (3, 5, 7), (2, 4, 4), (4, 2, 3)])
def test_shifted_window_mask_equals_official(nh, nw, ws):
    expected = _reference_mask(nh * ws, nw * ws, ws, ws // 2)
    assert torch.equal(shifted_window_mask(nh, nw, ws, ws // 2), expected)


def test_drop_path_only_in_training():
    model = tiny(drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 96)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    model.train()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.equal(c["res5"], d["res5"])


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = tiny(drop_path_rate=0.3).double().train()
    ckpt = tiny(drop_path_rate=0.3, use_checkpoint=True).double().train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 61, 90, dtype=torch.float64)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same drop path samples (restored again for the recompute)
        out = model(x)
        sum(
            (v * torch.linspace(-1, 1, v.numel(), dtype=v.dtype).view_as(v)).sum()
            for v in out.values()
        ).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-10, atol=1e-12, msg=n)


def test_fvcore_counts_the_window_attention():
    from fvcore.nn import FlopCountAnalysis

    model = tiny().eval()
    h, w = 96, 128  # stride-4 map 24 x 32: windows of 7 with padding to 28 x 35
    flops = FlopCountAnalysis(model, (torch.randn(1, 3, h, w),))
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_module = flops.by_module()
    side_h, side_w = h // 4, w // 4
    for i, stage in enumerate(model.layers):
        dim = TINY["embed_dim"] * 2**i
        windows = -(-side_h // 7) * -(-side_w // 7)
        n = 49
        # qkv, q k^T, attention x v, output projection (multiply-adds), per window
        analytic = windows * (n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim)
        for j in range(len(stage.blocks)):
            counted = by_module[f"layers.{i}.blocks.{j}.attn"]
            assert counted > 0
            assert abs(counted - analytic) <= 0.05 * analytic, (i, j, counted, analytic)
        side_h, side_w = -(-side_h // 2), -(-side_w // 2)


def official_swin_t_state_dict():
    """Keys and shapes of the official ``swin_tiny_patch4_window7_224.pth`` ("model"), written
    out from the Swin-T definition (not from our module), random values."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        "patch_embed.proj.weight": (96, 3, 4, 4),
        "patch_embed.proj.bias": (96,),
        "patch_embed.norm.weight": (96,),
        "patch_embed.norm.bias": (96,),
    }
    resolution = 56  # tokens per side at 224 px
    for i, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24))):
        c = 96 * 2**i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            shapes.update(
                {
                    p + "norm1.weight": (c,),
                    p + "norm1.bias": (c,),
                    p + "attn.relative_position_bias_table": (169, heads),
                    p + "attn.relative_position_index": (49, 49),
                    p + "attn.qkv.weight": (3 * c, c),
                    p + "attn.qkv.bias": (3 * c,),
                    p + "attn.proj.weight": (c, c),
                    p + "attn.proj.bias": (c,),
                    p + "norm2.weight": (c,),
                    p + "norm2.bias": (c,),
                    p + "mlp.fc1.weight": (4 * c, c),
                    p + "mlp.fc1.bias": (4 * c,),
                    p + "mlp.fc2.weight": (c, 4 * c),
                    p + "mlp.fc2.bias": (c,),
                }
            )
            # the classifier stores the mask of its shifted blocks (none at 7 x 7, no shift)
            if j % 2 == 1 and resolution > 7:
                shapes[p + "attn_mask"] = ((resolution // 7) ** 2, 49, 49)
        if i < 3:
            shapes[f"layers.{i}.downsample.reduction.weight"] = (2 * c, 4 * c)
            shapes[f"layers.{i}.downsample.norm.weight"] = (4 * c,)
            shapes[f"layers.{i}.downsample.norm.bias"] = (4 * c,)
        resolution //= 2
    shapes.update({"norm.weight": (768,), "norm.bias": (768,)})
    shapes.update({"head.weight": (1000, 768), "head.bias": (1000,)})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def _convert(tmp_path, capsys, state):
    """Run the tool on ``state`` saved as the official file; (exit code, stdout, stderr, output)."""
    src = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": state}, src)
    out = tmp_path / "out.pth"
    spec = importlib.util.spec_from_file_location("convert_swin_checkpoint", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    code = tool.main([str(src), str(out)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out


def test_official_checkpoint_converts_and_loads_strictly(tmp_path, capsys):
    state = official_swin_t_state_dict()
    code, stdout, stderr, out = _convert(tmp_path, capsys, state)
    assert code == 0, stderr
    assert "dropped   2     classification head" in stdout
    assert "dropped  12     relative position index" in stdout
    converted = torch.load(out, weights_only=True)["model"]
    assert all(k.startswith("backbone.") for k in converted)
    assert not any(k.endswith(("attn_mask", "relative_position_index")) for k in converted)
    assert "backbone.head.weight" not in converted and "backbone.norm.weight" not in converted

    backbone = SwinTransformer()  # Swin-T, the configs' backbone
    ours = backbone.state_dict()
    new = {k: v for k, v in ours.items() if k.split(".")[0] in ("norm1", "norm2", "norm3")}
    assert len(new) == 6  # the per-output LayerNorms are the only keys the file cannot have
    loaded = {k[len("backbone.") :]: v for k, v in converted.items()}
    backbone.load_state_dict({**loaded, **new}, strict=True)
    for k in loaded:
        assert torch.equal(backbone.state_dict()[k], state[k])


@pytest.mark.parametrize(
    "change,word",
    [
        (lambda s: s.pop("layers.2.blocks.5.mlp.fc2.weight"), "layers.2.blocks.5.mlp.fc2.weight"),
        (
            lambda s: s.update({"layers.1.downsample.reduction.weight": torch.zeros(384, 192)}),
            "layers.1.downsample.reduction.weight has shape (384, 192)",
        ),
        (lambda s: s.update({"layers.2.blocks.6.norm1.weight": torch.zeros(384)}), "blocks.6"),
    ],
)
def test_missing_or_misshapen_key_is_refused_by_name(tmp_path, capsys, change, word):
    state = official_swin_t_state_dict()
    change(state)
    code, _, err, out = _convert(tmp_path, capsys, state)
    assert code == 2
    err = err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("convert_swin_checkpoint.py: error: ")
    assert word in err, err
    assert not out.exists() and not list(tmp_path.glob(".tmp*"))


def test_runs_under_cpu_autocast():
    model = tiny().eval()
    x = torch.randn(1, 3, 75, 110)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    for k in full:
        assert low[k].shape == full[k].shape and torch.isfinite(low[k]).all()
        # bfloat16 has 8 bits of mantissa: outputs of unit scale agree to a few 1e-2
        assert (low[k].float() - full[k]).abs().mean() < 0.05
