"""Xception39, the light context-path backbone of BiSeNet (Yu et al., "BiSeNet: Bilateral Segmentation Network
for Real-time Semantic Segmentation", ECCV 2018, https://arxiv.org/abs/1808.00897).

The paper names the network but gives no layer table; this follows the authors' released code, ycszen/TorchSeg
``furnace/base_model/xception.py`` (``xception39``: ``Xception(Block, [4, 8, 4], [16, 32, 64])``):

- stem: 3x3 conv-BN-ReLU with stride 2 to 8 channels, then 3x3 max pooling with stride 2 (stride 4);
- three stages of 4, 8 and 4 blocks at strides 8, 16 and 32, whose outputs are 4x their widths 16, 32, 64
  (64, 128, 256 channels). Each block is three separable convs (a depth-wise 3x3 without norm or activation,
  then a 1x1 conv-BN, ReLU after the first two), width -> width -> 4 x width, added to the shortcut and
  followed by ReLU. The first block of a stage carries the stride on its first separable conv and on its
  shortcut, which is itself a separable conv (no ReLU) to the stage's output width; the others add the identity.

``forward`` returns the three stage outputs; ``out_channels`` and ``strides`` describe them.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import ConvNormAct


class SeparableConvNormAct(nn.Sequential):
    """Depth-wise 3x3 conv (no bias, norm or activation) -> 1x1 conv -> norm -> activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d, act_layer: type[nn.Module] | None = nn.ReLU) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer),
        )


class XceptionBlock(nn.Module):
    """Three separable convs, width -> width -> 4 x width, plus a shortcut (a separable conv when the block
    downsamples, else the identity), then ReLU."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.residual = nn.Sequential(
            SeparableConvNormAct(in_channels, width, stride, norm_layer),
            SeparableConvNormAct(width, width, 1, norm_layer),
            SeparableConvNormAct(width, out_channels, 1, norm_layer, act_layer=None),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1:
            self.shortcut = SeparableConvNormAct(in_channels, out_channels, stride, norm_layer, act_layer=None)
        elif in_channels != out_channels:
            raise ValueError(f"an identity shortcut needs in_channels == 4 * width; got {in_channels} and {width}")
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x) + self.shortcut(x))


class Xception39(nn.Module):
    """Stem (stride 4) and three stages of Xception blocks at strides 8, 16 and 32."""

    def __init__(self, depths: tuple[int, int, int] = (4, 8, 4), widths: tuple[int, int, int] = (16, 32, 64),
                 stem_width: int = 8, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvNormAct(3, stem_width, 3, 2, norm_layer=norm_layer), nn.MaxPool2d(3, 2, 1))
        channels = stem_width
        self.stages = nn.ModuleList()
        for depth, width in zip(depths, widths):
            blocks = []
            for j in range(depth):
                blocks.append(XceptionBlock(channels, width, 2 if j == 0 else 1, norm_layer))
                channels = width * XceptionBlock.expansion
            self.stages.append(nn.Sequential(*blocks))
        self.out_channels = [w * XceptionBlock.expansion for w in widths]
        self.strides = [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)  # (B, stem_width, H/4, W/4)
        features = []
        for stage in self.stages:
            x = stage(x)  # (B, 4 * width_i, H/s_i, W/s_i)
            features.append(x)
        return features
