"""Semantic FPN (Kirillov, Girshick, He, Dollár, "Panoptic Feature Pyramid Networks", CVPR 2019,
https://arxiv.org/abs/1901.02446): the feature pyramid neck (Lin et al., "Feature Pyramid Networks for Object
Detection", CVPR 2017) and the semantic head that merges its levels at stride 4, as mmsegmentation's ``FPN``
neck and ``FPNHead`` build them (the configuration PointRend's semantic model uses).

- ``FPN``: a 1x1 lateral conv per level, top-down addition of the coarser level upsampled by nearest
  neighbour to the finer level's size, then a 3x3 conv per level; convs with bias, no normalisation or
  activation (mmseg's defaults: ``norm_cfg=None``, ``act_cfg=None``).
- ``FPNHead``: per level a stack of max(1, log2(stride / stride_0)) 3x3 conv-BN-ReLU, each followed by x2
  bilinear upsampling (``align_corners=False``) on levels coarser than the first; the stacks are summed at
  the first level's size and classified by a 1x1 conv. No dropout (PointRend's config: ``dropout_ratio=-1``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import ConvNormAct


class FPN(nn.Module):
    """Feature list (B, C_i, H/s_i, W/s_i) -> the pyramid, every level with ``channels`` channels."""

    def __init__(self, in_channels: list[int], channels: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.out_channels = [channels] * len(in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]  # (B, channels, H/s_i, W/s_i)
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]


class FPNHead(nn.Module):
    """The pyramid (first level finest) -> logits (B, num_classes, H/s_0, W/s_0)."""

    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 128,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for c, stride in zip(in_channels, strides):
            length = max(1, int(math.log2(stride) - math.log2(strides[0])))
            layers: list[nn.Module] = []
            for k in range(length):
                layers.append(ConvNormAct(c if k == 0 else channels, channels, 3, norm_layer=norm_layer))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.scale_heads[0](features[0])  # (B, channels, H/s_0, W/s_0)
        for head, feature in zip(self.scale_heads[1:], features[1:]):
            x = x + F.interpolate(head(feature), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(x)
