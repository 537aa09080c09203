"""The FCN head (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
as mmsegmentation's FCNHead with one conv): 3x3 conv-BN-ReLU, dropout, 1x1 classifier. Also the auxiliary
(deep-supervision) head that PSPNet, CCNet and most dilated-ResNet models train on stage 3."""
from __future__ import annotations

from torch import nn

from ..base import ConvNormAct


class FCNHead(nn.Sequential):
    """One map (B, in_channels, h, w) -> logits (B, num_classes, h, w)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__(ConvNormAct(in_channels, channels, 3, norm_layer=norm_layer), nn.Dropout2d(dropout),
                         nn.Conv2d(channels, num_classes, 1))
