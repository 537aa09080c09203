"""CCNet (Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019).

The shared dilated ResNet with a deep stem (models/backbones/resnet.py, output stride 8: the last two stages
trade stride for dilation 2 and 4, as in DeepLab) followed by the recurrent criss-cross attention (RCCA)
head: the same criss-cross attention module applied R = 2 times, which gives every pixel a path to every
other pixel.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones.resnet import DEPTHS, ResNet
from .base import ConvNormAct, SegmentationModel
from .heads.fcn import FCNHead
from .ops.criss_cross import criss_cross_attention
from .registry import register_model


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


def _ccnet(layers: tuple[int, int, int, int], num_classes: int, head_channels: int = 512,
           base_width: int = 64, stem_width: int = 64, recurrence: int = 2) -> SegmentationModel:
    backbone = ResNet(layers, output_stride=8, deep_stem=True, stem_width=stem_width, base_width=base_width)
    head = RCCAHead(backbone.out_channels[-1], num_classes, head_channels, recurrence)
    aux = FCNHead(backbone.out_channels[2], num_classes, head_channels // 2)  # deep supervision on stage 3
    return SegmentationModel(backbone, head, num_classes, aux_heads=[aux], aux_indices=[2])


# Numerical tests: a quarter of the widths (the bottlenecks, stem and head keep every layer they have).
_NARROW = {"base_width": 16, "stem_width": 16, "head_channels": 128}


@register_model("ccnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                custom_ops=("criss_cross_attention",))
def ccnet(num_classes: int = 19, **kwargs) -> nn.Module:
    """CCNet, ResNet-50 backbone (output stride 8), RCCA head with R = 2."""
    return _ccnet(DEPTHS[50], num_classes, **kwargs)


@register_model("ccnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                custom_ops=("criss_cross_attention",))
def ccnet_r101(num_classes: int = 19, **kwargs) -> nn.Module:
    """CCNet, ResNet-101 backbone (output stride 8), RCCA head with R = 2: the paper's configuration."""
    return _ccnet(DEPTHS[101], num_classes, **kwargs)
