"""Neck mapping backbone features to the multi-scale inputs of a deformable transformer."""

from typing import Dict, List, Sequence

import torch
from detectron2.layers import ShapeSpec
from torch import nn

__all__ = ["MultiScaleNeck"]


class MultiScaleNeck(nn.Module):
    """
    The input projection of Deformable DETR and DINO (docs/model.md, section 2): each selected
    backbone map goes through a 1x1 conv + GroupNorm to ``out_channels``; each extra level is a
    3x3 stride-2 conv + GroupNorm, the first on the last *input* feature (C5, not its
    projection), the following ones on the previous extra level. With res3/res4/res5 and
    ``num_outs=4`` this gives strides 8, 16, 32, 64.
    """

    def __init__(
        self,
        input_shapes: Dict[str, ShapeSpec],
        in_features: Sequence[str] = ("res3", "res4", "res5"),
        out_channels: int = 256,
        num_outs: int = 4,
        num_groups: int = 32,
    ):
        """
        Args:
            input_shapes (dict[str, ShapeSpec]): backbone outputs (``backbone.output_shape()``);
                ``channels`` of each used feature is required, ``stride`` is used for
                :meth:`output_shape`.
            in_features (list[str]): backbone features to use, fine-to-coarse.
            out_channels (int): channels of every output level; divisible by ``num_groups``.
            num_outs (int): output levels, ``>= len(in_features)``; the extra ones are added by
                stride-2 convs.
            num_groups (int): GroupNorm groups.
        """
        super().__init__()
        in_features = list(in_features)
        if not in_features:
            raise ValueError("MultiScaleNeck: in_features must name at least one feature")
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"MultiScaleNeck: in_features {missing} are not in input_shapes "
                f"(available: {sorted(input_shapes)})"
            )
        if num_outs < len(in_features):
            raise ValueError(
                f"MultiScaleNeck: num_outs ({num_outs}) must be >= len(in_features) "
                f"({len(in_features)})"
            )
        if num_groups < 1 or out_channels % num_groups != 0:
            raise ValueError(
                f"MultiScaleNeck: out_channels ({out_channels}) must be divisible by num_groups "
                f"({num_groups})"
            )
        self.in_features = in_features
        self.out_channels = out_channels
        self.num_outs = num_outs

        self.input_convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(input_shapes[f].channels, out_channels, kernel_size=1),
                nn.GroupNorm(num_groups, out_channels),
            )
            for f in in_features
        )
        extra_in = input_shapes[in_features[-1]].channels
        self.extra_convs = nn.ModuleList()
        for _ in range(num_outs - len(in_features)):
            self.extra_convs.append(
                nn.Sequential(
                    nn.Conv2d(extra_in, out_channels, kernel_size=3, stride=2, padding=1),
                    nn.GroupNorm(num_groups, out_channels),
                )
            )
            extra_in = out_channels

        strides = [input_shapes[f].stride for f in in_features]
        for _ in self.extra_convs:
            strides.append(None if strides[-1] is None else strides[-1] * 2)
        self._strides = strides
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform convs with zero bias, as in Deformable DETR's input projection."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, gain=1)
                nn.init.constant_(m.bias, 0)

    def output_shape(self) -> List[ShapeSpec]:
        """ShapeSpec of each output level, fine-to-coarse."""
        return [ShapeSpec(channels=self.out_channels, stride=s) for s in self._strides]

    def forward(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            features (dict[str, Tensor]): backbone outputs, each (N, C_f, H_f, W_f).

        Returns:
            list[Tensor]: ``num_outs`` maps (N, out_channels, H_l, W_l), fine-to-coarse.
        """
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise ValueError(
                f"MultiScaleNeck: features {missing} missing from the backbone outputs "
                f"(got {sorted(features)})"
            )
        outs = [conv(features[f]) for f, conv in zip(self.in_features, self.input_convs)]
        x = features[self.in_features[-1]]
        for conv in self.extra_convs:
            x = conv(x)
            outs.append(x)
        return outs
