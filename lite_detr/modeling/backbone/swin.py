"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021) as a detectron2 backbone for DETR-style detectors.

The detection variant that DINO and Lite-DINO use: the window size stays fixed at every stage and
input size (feature maps are zero-padded to whole windows inside each block), stage outputs are
taken before patch merging and each goes through its own LayerNorm (``norm{i}``, trained from
scratch; the ImageNet file has only a final ``norm``). Parameter names are those of the official
ImageNet checkpoints (``swin_tiny_patch4_window7_224.pth``: ``patch_embed.*``,
``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*``), so those files load by a prefix
(``tools/convert_swin_checkpoint.py``).

Everything that depends on the input size (padding, the shifted-window mask) is computed from the
feature's shape with tensor ops, so ``torch.export`` keeps H and W dynamic; the attention is two
explicit matmuls, which fvcore counts.
"""

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from detectron2.modeling import Backbone
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["SwinTransformer", "shifted_window_mask"]

# added to the attention logits between tokens that the cyclic shift made neighbours (official
# value: exp(-100) is zero in float16 and float32 alike)
_MASK_VALUE = -100.0


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): in training, zero the residual branch of a whole
    sample with probability ``p`` and scale the kept ones by 1 / (1 - p); identity in eval."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _num_windows(size, window_size: int):
    """Windows along a side of ``size`` tokens (the last one zero-padded). The padded side is
    written ``num * window_size`` everywhere, so that torch.export can follow the reshapes into
    windows symbolically (a padded side computed as ``size + (-size) % window_size`` cannot be
    proven divisible and breaks the dynamic shapes)."""
    return (size + window_size - 1) // window_size


def window_partition(x: Tensor, window_size: int, nh, nw) -> Tensor:
    """(N, nh * ws, nw * ws, C) -> (N * nh * nw, ws * ws, C), windows in row-major order per
    image."""
    n, c = x.shape[0], x.shape[-1]
    x = x.reshape(n, nh, window_size, nw, window_size, c).permute(0, 1, 3, 2, 4, 5)
    # contiguous, then view: no stride reasoning on symbolic sizes (torch.export)
    return x.contiguous().view(n * nh * nw, window_size * window_size, c)


def window_merge(windows: Tensor, window_size: int, n, nh, nw) -> Tensor:
    """Inverse of :func:`window_partition`: (N * nh * nw, ws * ws, C) -> (N, nh * ws, nw * ws,
    C)."""
    c = windows.shape[-1]
    x = windows.reshape(n, nh, nw, window_size, window_size, c).permute(0, 1, 3, 2, 4, 5)
    return x.contiguous().view(n, nh * window_size, nw * window_size, c)


def shifted_window_mask(nh, nw, window_size: int, shift: int, device=None) -> Tensor:
    """
    Attention mask of the shifted windows on a map of ``nh`` x ``nw`` windows (padded): after the
    cyclic shift by ``shift``, the last window row and column hold tokens from opposite borders,
    which must not attend to each other.

    Rows fall in three regions (before the last window row, the last row's part that stays, the
    part that wrapped around), columns likewise; tokens attend only within their region pair.
    Built from ``arange`` comparisons, so ``nh`` and ``nw`` may be symbolic sizes (torch.export).

    Returns:
        Tensor: (nh * nw, ws * ws, ws * ws) float32, 0 within a region, -100 across.
    """
    h, w = nh * window_size, nw * window_size
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    region_h = (rows >= h - window_size).long() + (rows >= h - shift).long()
    region_w = (cols >= w - window_size).long() + (cols >= w - shift).long()
    region = region_h[:, None] * 3 + region_w[None, :]  # (h, w)
    windows = window_partition(region[None, :, :, None], window_size, nh, nw)[..., 0]
    different = windows[:, None, :] != windows[:, :, None]  # (nh * nw, ws * ws, ws * ws)
    return torch.zeros(different.shape, device=device).masked_fill(different, _MASK_VALUE)


def _relative_position_index(window_size: int) -> Tensor:
    """(ws*ws, ws*ws) int64: the row of the bias table of each (query, key) pair of a window, the
    relative offset (dy, dx) in [-(ws-1), ws-1]^2 numbered row-major."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(
        1
    )  # (2, ws*ws)
    rel = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # (2, N, N), >= 0
    return rel[0] * (2 * window_size - 1) + rel[1]


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, with a learned bias per relative position and
    head (Swin, section 3.2)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # recomputed, not loaded: the official files store it, the converter drops it
        self.register_buffer(
            "relative_position_index", _relative_position_index(window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """
        Args:
            x (Tensor): (B, N, C) tokens of B windows of N tokens (B = images * nW).
            mask (Tensor, optional): (nW, N, N) added to the logits of each image's windows.

        Returns:
            Tensor: (B, N, C).
        """
        b, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        # explicit matmuls (not SDPA): fvcore counts them, and the bias and mask add to the logits
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N, N, heads)
        attn = attn + bias.permute(2, 0, 1).to(attn.dtype)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, heads, n, n) + mask[None, :, None].to(attn.dtype)
            attn = attn.view(b, heads, n, n)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    """The block's feed-forward network: Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm transformer block with (shifted) window attention. The map is zero-padded to whole
    windows after ``norm1`` and cropped after the attention, as the detection Swin of DINO does
    (padded tokens are keys of the unshifted windows, as there)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
            x (Tensor): (N, H, W, C).
            mask (Tensor): :func:`shifted_window_mask` of the padded map (used by shifted blocks).

        Returns:
            Tensor: (N, H, W, C).
        """
        n, h, w, _ = x.shape
        ws = self.window_size
        nh, nw = _num_windows(h, ws), _num_windows(w, ws)
        y = F.pad(self.norm1(x), (0, 0, 0, nw * ws - w, 0, nh * ws - h))
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, ws, nh, nw), mask if self.shift else None)
        y = window_merge(y, ws, n, nh, nw)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        # crop the padding (a negative pad: torch.export cannot prove the bounds of a slice here)
        y = F.pad(y, (0, 0, 0, w - nw * ws, 0, h - nh * ws))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated (4C), normalised and projected to 2C: stride x2. Odd
    sides are zero-padded by one."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(N, H, W, C) -> (N, ceil(H/2), ceil(W/2), 2C)."""
        h, w = x.shape[1], x.shape[2]
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        x = F.pad(x, (0, 0, 0, 2 * w2 - w, 0, 2 * h2 - h))
        # (even row, even col), (odd, even), (even, odd), (odd, odd): the official order (the
        # ImageNet weights of ``reduction`` depend on it)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """``depth`` blocks alternating regular and shifted windows, then (optionally) patch
    merging. Returns the output before the merging (the stage's feature) and after it."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: Sequence[float],
        downsample: bool,
        use_checkpoint: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window_size,
                shift=0 if i % 2 == 0 else self.shift,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor):
        """(N, H, W, C) -> ((N, H, W, C), (N, ceil(H/2), ceil(W/2), 2C) or the same map)."""
        ws = self.window_size
        nh, nw = _num_windows(x.shape[1], ws), _num_windows(x.shape[2], ws)
        mask = shifted_window_mask(nh, nw, ws, self.shift, x.device)
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                # recompute the block in the backward pass instead of storing its activations
                # (the RNG state is restored, so drop path draws the same samples)
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x, (x if self.downsample is None else self.downsample(x))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches -> ``embed_dim`` tokens (a strided conv) + LayerNorm;
    the image is zero-padded on the right and bottom to whole patches."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, ceil(H/p), ceil(W/p), embed_dim)."""
        p = self.patch_size
        h, w = x.shape[-2:]
        x = F.pad(x, (0, _num_windows(w, p) * p - w, 0, _num_windows(h, p) * p - h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(Backbone):
    """
    Swin Transformer backbone (Liu et al., ICCV 2021), the detection variant of DINO / Lite-DINO.

    Stage ``i`` (0-based) outputs ``res{i+2}`` at stride ``patch_size * 2**i`` with
    ``embed_dim * 2**i`` channels: the ResNet names of the same strides, so that
    :class:`~lite_detr.modeling.backbone.MultiScaleNeck` takes ``res3``/``res4``/``res5`` from
    either backbone. Each output goes through its own LayerNorm ``norm{i}``. Stages after the
    last requested output are not built.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        out_features: Sequence[str] = ("res3", "res4", "res5"),
        use_checkpoint: bool = False,
        in_channels: int = 3,
    ):
        """
        Args:
            embed_dim (int): channels of stage 0 (doubled at every stage). Swin-T: 96.
            depths (list[int]): blocks per stage. Swin-T: 2, 2, 6, 2.
            num_heads (list[int]): attention heads per stage. Swin-T: 3, 6, 12, 24.
            window_size (int): side of the attention windows (tokens), fixed at every stage.
            patch_size (int): stride of the patch embedding.
            mlp_ratio (float): FFN hidden size / channels.
            qkv_bias (bool): bias in the query/key/value projection.
            drop_path_rate (float): stochastic depth of the last block; it rises linearly from 0
                over all blocks (0.2 for Swin-T in DINO / Lite-DINO).
            out_features (list[str]): outputs among ``res2`` .. ``res{len(depths)+1}``.
            use_checkpoint (bool): gradient checkpointing of every block (recomputed in the
                backward pass: less memory, ~1/3 more compute per training step).
            in_channels (int): image channels.
        """
        super().__init__()
        num_stages = len(depths)
        if num_stages == 0 or len(num_heads) != num_stages:
            raise ValueError(
                f"SwinTransformer: depths {list(depths)} and num_heads {list(num_heads)} must "
                "give one value per stage (Swin-T: depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24])"
            )
        dims = [embed_dim * 2**i for i in range(num_stages)]
        bad = [(d, h) for d, h in zip(dims, num_heads) if h < 1 or d % h]
        if bad:
            raise ValueError(
                f"SwinTransformer: stage channels must be divisible by num_heads, got "
                f"(channels, heads) {bad}"
            )
        names = [f"res{i + 2}" for i in range(num_stages)]
        out_features = list(out_features)
        unknown = [f for f in out_features if f not in names]
        if not out_features or unknown:
            raise ValueError(f"SwinTransformer: out_features {out_features} must be among {names}")
        if window_size < 1 or patch_size < 1:
            raise ValueError(
                f"SwinTransformer: window_size ({window_size}) and patch_size ({patch_size}) "
                "must be >= 1"
            )
        built = max(names.index(f) for f in out_features) + 1
        self.patch_size = patch_size
        self.window_size = window_size

        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        # stochastic depth rising linearly over all blocks of the full network (official rule)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i in range(built):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    dims[i],
                    depths[i],
                    num_heads[i],
                    window_size,
                    mlp_ratio,
                    qkv_bias,
                    drop_path=rates[start : start + depths[i]],
                    downsample=i < built - 1,
                    use_checkpoint=use_checkpoint,
                )
            )
        self._out_features = out_features
        self._out_feature_channels = {}
        self._out_feature_strides = {}
        self._stage_outputs = {}
        for f in out_features:
            i = names.index(f)
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i]))
            self._stage_outputs[i] = f
            self._out_feature_channels[f] = dims[i]
            self._out_feature_strides[f] = patch_size * 2**i
        self.apply(self._init_weights)
        for stage in self.layers:
            for block in stage.blocks:
                nn.init.trunc_normal_(block.attn.relative_position_bias_table, std=0.02)

    @property
    def min_export_side(self) -> int:
        """Smallest image side of a graph exported with dynamic H, W (``lite_detr.export``): two
        windows per side at every stage. torch.export traces the window reshapes for counts of
        at least 2; a count of 1 would need a graph of its own."""
        return self.patch_size * 2 ** (len(self.layers) - 1) * self.window_size + 1

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The official initialisation (for training without ImageNet weights)."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x (Tensor): (N, C_in, H, W) images, any H and W.

        Returns:
            dict[str, Tensor]: each requested ``res{i+2}``: (N, embed_dim * 2**i,
            ceil(H / (patch_size * 2**i)), ...) (odd sizes round up at every halving).
        """
        x = self.patch_embed(x)
        outs = {}
        for i, stage in enumerate(self.layers):
            out, x = stage(x)
            if i in self._stage_outputs:
                out = getattr(self, f"norm{i}")(out)
                outs[self._stage_outputs[i]] = out.permute(0, 3, 1, 2).contiguous()
        return outs
