"""The FCN head (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
as mmsegmentation's FCNHead with one conv): 3x3 conv-BN-ReLU, dropout, 1x1 classifier. Also the auxiliary
(deep-supervision) head that PSPNet, CCNet and most dilated-ResNet models train on stage 3."""
from __future__ import annotations

import torch
from torch import nn

from ..base import ConvNormAct


class FCNHead(nn.Sequential):
    """One map (B, in_channels, h, w) -> logits (B, num_classes, h, w)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__(ConvNormAct(in_channels, channels, 3, norm_layer=norm_layer), nn.Dropout2d(dropout),
                         nn.Conv2d(channels, num_classes, 1))


class FCNHeadOn(nn.Module):
    """An FCNHead reading one map of the backbone's feature list (mmsegmentation's ``in_index``): logits at
    that map's stride. Its FCNHead is ``seg`` (0: conv-BN-ReLU, 1: dropout, 2: classifier)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int, index: int = -1, dropout: float = 0.1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.index = index
        self.seg = FCNHead(in_channels, num_classes, channels, dropout, norm_layer)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.seg(features[self.index])  # (B, num_classes, h, w)
