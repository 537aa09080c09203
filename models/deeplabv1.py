"""DeepLab v1, LargeFOV (Chen, Papandreou, Kokkinos, Murphy & Yuille, "Semantic Image Segmentation with Deep
Convolutional Nets and Fully Connected CRFs", ICLR 2015, https://arxiv.org/abs/1412.7062).

VGG16 at output stride 8: pool4 and pool5 keep the resolution (3x3, stride 1) and conv5 dilates by 2
("atrous" convolution, the paper's "hole algorithm"); fc6 is a 3x3 conv at dilation 12 with 1024 channels and
fc7 a 1x1 conv of 1024 (the LargeFOV configuration of Table 2: 20.5M parameters with 21 classes), each
followed by ReLU and dropout; fc8 classifies with a 1x1 conv. The shared backbone is
``models.backbones.vgg.vgg16_largefov``; the logits at stride 8 are upsampled bilinearly to the input, as in
the paper.

Not in the engine: the fully connected CRF (DenseCRF) the paper applies to the upsampled scores. It is an
iterative mean-field post-process on the CPU (Krahenbuhl & Koltun, NIPS 2011) outside the network; the engine's
output is the paper's "DeepLab" row, not "DeepLab-CRF".
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones.vgg import vgg16_largefov
from .base import SegmentationModel
from .registry import register_model


class ScoreHead(nn.Conv2d):
    """fc8: a 1x1 conv on the last feature map, (B, C, h, w) -> (B, num_classes, h, w)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes, 1)
        nn.init.normal_(self.weight, std=0.01)  # the paper's prototxt: gaussian std 0.01, bias 0
        nn.init.zeros_(self.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(features[-1])


@register_model("deeplabv1", size_divisor=8, output_stride=8,
                test_kwargs={"channels": (8, 16, 32, 64, 64), "fc_channels": 64})
def deeplabv1_largefov(num_classes: int = 21, **kwargs) -> nn.Module:
    """DeepLab v1 LargeFOV: VGG16 at output stride 8, fc6 3x3 at dilation 12 (1024), fc7 1x1, fc8 classifier."""
    backbone = vgg16_largefov(**kwargs)
    return SegmentationModel(backbone, ScoreHead(backbone.out_channels[-1], num_classes), num_classes)
