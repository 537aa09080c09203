"""CCNet (Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019).

A dilated ResNet (output stride 8: the last two stages trade stride for dilation 2 and 4, as in DeepLab)
followed by the recurrent criss-cross attention (RCCA) head: the same criss-cross attention module applied
R = 2 times, which gives every pixel a path to every other pixel.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import ConvNormAct, SegmentationModel
from .ops import criss_cross_attention
from .registry import register_model


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvNormAct(in_channels, width, 1, norm_layer=norm_layer)
        self.conv2 = ConvNormAct(width, width, 3, stride, dilation, norm_layer=norm_layer)
        self.conv3 = ConvNormAct(width, out_channels, 1, norm_layer=norm_layer, act_layer=None)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvNormAct(in_channels, out_channels, 1, stride, norm_layer=norm_layer, act_layer=None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class DilatedResNet(nn.Module):
    """ResNet with a deep stem (three 3x3 convs, as CCNet's and PSPNet's backbones) and dilated stages 3-4.

    Returns the four stage outputs at strides 4, 8, 8, 8.
    """

    def __init__(self, layers: tuple[int, int, int, int], stem_width: int = 64, base_width: int = 64,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvNormAct(3, stem_width, 3, 2, norm_layer=norm_layer),
            ConvNormAct(stem_width, stem_width, 3, norm_layer=norm_layer),
            ConvNormAct(stem_width, stem_width * 2, 3, norm_layer=norm_layer),
            nn.MaxPool2d(3, 2, 1),
        )
        channels = stem_width * 2
        self.stages = nn.ModuleList()
        self.out_channels: list[int] = []
        for i, (depth, stride, dilation) in enumerate(zip(layers, (1, 2, 1, 1), (1, 1, 2, 4))):
            width = base_width * 2**i
            blocks = []
            for j in range(depth):
                # The first block of a dilated stage uses half the dilation, as in the DeepLab/PSPNet backbones.
                d = max(1, dilation // 2) if j == 0 and dilation > 1 else dilation
                blocks.append(Bottleneck(channels, width, stride if j == 0 else 1, d, norm_layer))
                channels = width * Bottleneck.expansion
            self.stages.append(nn.Sequential(*blocks))
            self.out_channels.append(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)  # (B, 2*stem, H/4, W/4)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features  # strides 4, 8, 8, 8


class CrissCrossAttention(nn.Module):
    """The criss-cross attention module: 1x1 query/key (C/8) and value (C) projections, then
    ``gamma * attention(q, k, v) + x`` with ``gamma`` learned and initialised to 0, as in the paper."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, channels // reduction, 1)
        self.key = nn.Conv2d(channels, channels // reduction, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = criss_cross_attention(self.query(x), self.key(x), self.value(x))  # (B, C, H, W)
        return self.gamma * out + x


class RCCAHead(nn.Module):
    """Recurrent criss-cross attention head: reduce, R passes of one shared attention module, fuse with the
    input, classify. Reads the last backbone feature; logits at stride 8."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, recurrence: int = 2,
                 dropout: float = 0.1, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.recurrence = recurrence
        self.reduce = ConvNormAct(in_channels, channels, 3, norm_layer=norm_layer)
        self.attention = CrissCrossAttention(channels)
        self.project = ConvNormAct(channels, channels, 3, norm_layer=norm_layer)
        self.fuse = ConvNormAct(in_channels + channels, channels, 3, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]  # (B, C_in, H/8, W/8)
        out = self.reduce(x)
        for _ in range(self.recurrence):
            out = self.attention(out)
        out = self.fuse(torch.cat([x, self.project(out)], dim=1))  # (B, channels, H/8, W/8)
        return self.classifier(self.dropout(out))


class FCNAuxHead(nn.Sequential):
    """The deep-supervision head on stage 3 that CCNet trains with (dropped at export)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256) -> None:
        super().__init__(ConvNormAct(in_channels, channels, 3), nn.Dropout2d(0.1), nn.Conv2d(channels, num_classes, 1))


def _ccnet(layers: tuple[int, int, int, int], num_classes: int, head_channels: int = 512,
           base_width: int = 64, stem_width: int = 64, recurrence: int = 2) -> SegmentationModel:
    backbone = DilatedResNet(layers, stem_width=stem_width, base_width=base_width)
    head = RCCAHead(backbone.out_channels[-1], num_classes, head_channels, recurrence)
    aux = FCNAuxHead(backbone.out_channels[2], num_classes, head_channels // 2)
    return SegmentationModel(backbone, head, num_classes, aux_heads=[aux], aux_indices=[2])


# Numerical tests: a quarter of the widths (the bottlenecks, stem and head keep every layer they have).
_NARROW = {"base_width": 16, "stem_width": 16, "head_channels": 128}


@register_model("ccnet", size_divisor=8, test_kwargs=_NARROW)
def ccnet(num_classes: int = 19, **kwargs) -> nn.Module:
    """CCNet, ResNet-50 backbone (output stride 8), RCCA head with R = 2."""
    return _ccnet((3, 4, 6, 3), num_classes, **kwargs)


@register_model("ccnet", size_divisor=8, test_kwargs=_NARROW)
def ccnet_r101(num_classes: int = 19, **kwargs) -> nn.Module:
    """CCNet, ResNet-101 backbone (output stride 8), RCCA head with R = 2: the paper's configuration."""
    return _ccnet((3, 4, 23, 3), num_classes, **kwargs)
