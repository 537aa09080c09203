"""Non-local network (Wang, Girshick, Gupta & He, "Non-local Neural Networks", CVPR 2018,
https://arxiv.org/abs/1711.07971) as a segmentation head on the shared dilated ResNet-50 with the deep stem
(models/backbones/resnet.py, output stride 8), in mmsegmentation's NLHead arrangement: 3x3 conv-BN-ReLU
reduction to 512 channels, one embedded-Gaussian non-local block, 3x3 conv-BN-ReLU, concatenation with the
backbone feature, 3x3 fusion conv-BN-ReLU, dropout, 1x1 classifier. Deep supervision trains an FCN head on
stage 3 (``aux_heads``, never exported).

The non-local block is the paper's embedded-Gaussian instantiation:
``y_i = sum_j softmax_j(theta(x_i)^T phi(x_j) / sqrt(C')) g(x_j)``, ``z = W_z y + x``, with theta, phi, g 1x1
convs to C' = C / 2 (reduction 2) and W_z a 1x1 conv followed by BatchNorm. The 1/sqrt(C') scaling
(``use_scale``) is mmsegmentation's (mmcv NonLocal2d), not the paper's; there is no sub-sampling of phi and g.
The paper initialises W_z's BatchNorm scale to zero so that the block starts as the identity; that is a
training recipe and is left to training (the conformance tests need the block to contribute). No
parameter count for this segmentation model is published (mmsegmentation's model zoo lists memory, speed
and mIoU only; the paper reports video and COCO models).
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones.resnet import DEPTHS, ResNet
from .base import ConvNormAct, SegmentationModel
from .heads.fcn import FCNHead
from .registry import register_model


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block: every position attends to every other, ``x + W_z(attention)``."""

    def __init__(self, channels: int, reduction: int = 2, use_scale: bool = True,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        inter = channels // reduction
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.conv_out = ConvNormAct(inter, channels, 1, norm_layer=norm_layer, act_layer=None)  # W_z
        self.scale = inter**-0.5 if use_scale else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        phi = self.phi(x).flatten(2)  # (B, C', HW)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        attention = torch.softmax(torch.matmul(theta, phi) * self.scale, dim=-1)  # (B, HW, HW)
        y = torch.matmul(attention, g).transpose(1, 2)  # (B, C', HW)
        y = y.reshape(x.shape[0], -1, x.shape[2], x.shape[3])  # (B, C', H, W)
        return x + self.conv_out(y)


class NLHead(nn.Module):
    """reduce -> non-local block -> project -> concat with the input -> fuse -> classify; logits at the
    input feature's stride (8)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, reduction: int = 2,
                 use_scale: bool = True, dropout: float = 0.1, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.reduce = ConvNormAct(in_channels, channels, 3, norm_layer=norm_layer)
        self.attention = NonLocalBlock(channels, reduction, use_scale, norm_layer)
        self.project = ConvNormAct(channels, channels, 3, norm_layer=norm_layer)
        self.fuse = ConvNormAct(in_channels + channels, channels, 3, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]  # (B, C_in, H/8, W/8)
        out = self.project(self.attention(self.reduce(x)))  # (B, channels, H/8, W/8)
        out = self.fuse(torch.cat([x, out], dim=1))  # (B, channels, H/8, W/8)
        return self.classifier(self.dropout(out))


def _nonlocal(layers: tuple[int, int, int, int], num_classes: int, head_channels: int = 512,
              base_width: int = 64, stem_width: int = 64) -> SegmentationModel:
    backbone = ResNet(layers, output_stride=8, deep_stem=True, stem_width=stem_width, base_width=base_width)
    head = NLHead(backbone.out_channels[-1], num_classes, head_channels)
    aux = FCNHead(backbone.out_channels[2], num_classes, head_channels // 2)  # deep supervision on stage 3
    return SegmentationModel(backbone, head, num_classes, aux_heads=[aux], aux_indices=[2])


# Numerical tests: a quarter of the widths (the bottlenecks, stem and head keep every layer they have).
_NARROW = {"base_width": 16, "stem_width": 16, "head_channels": 128}


@register_model("nonlocal", size_divisor=8, output_stride=8, test_kwargs=_NARROW)
def nonlocal_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """Non-local network, dilated ResNet-50 (output stride 8), embedded-Gaussian non-local head."""
    return _nonlocal(DEPTHS[50], num_classes, **kwargs)
