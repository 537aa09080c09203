"""ICNet (Zhao, Qi, Shen, Shi, Jia, "ICNet for Real-Time Semantic Segmentation on High-Resolution Images",
ECCV 2018, https://arxiv.org/abs/1704.08545).

An image cascade: the heavy network sees only a quarter-resolution image, light branches add the detail of the
half- and full-resolution images, and cascade feature fusion (CFF) joins them from coarse to fine.

- **1/4 resolution** (-> 1/32): the half-resolution image goes through the stem and stages 1-2 of the shared
  ResNet-50 (deep stem, as PSPNet), the result (1/16 of the full input) is downsampled x2 and runs through the
  dilated stages 3-4, which keep the resolution. A light pyramid pooling adds the bin averages (1, 2, 3, 6)
  to the map instead of concatenating them, and a 1x1 conv-BN-ReLU reduces it to 256 channels (the official
  prototxt's ``conv5_3_sum`` and ``conv5_4_k1``).
- **1/2 resolution** (-> 1/16): the stage-2 output, computed once and shared with the 1/4 branch.
- **Full resolution** (-> 1/8): three 3x3 stride-2 conv-BN-ReLU (32, 32, 64 channels).
- **CFF**: the lower-resolution map upsampled x2 (bilinear, to the higher-resolution map's size), a 3x3 conv
  of dilation 2 + BN; the higher-resolution map through a 1x1 conv + BN; sum, ReLU; 128 channels.
- **Classifier**: the last fusion (1/8) upsampled x2, a 1x1 conv: logits at stride 4.

Cascade label guidance (training only): a 1x1 classifier on each CFF's upsampled low-resolution input, the
paper's auxiliary losses at 1/16 and 1/8. ``ICNetBackbone`` returns those two inputs with the last fusion, so
``SegmentationModel``'s auxiliary heads reach them and the exported graph holds none of it.

Sources and deviations. Channels and layer order follow the official deployment prototxt
(hszhao/ICNet, evaluation/prototxt/icnet_cityscapes_bnnomerge.prototxt). The trunk, like mmsegmentation's
ICNet (mmseg/models/backbones/icnet.py, configs/_base_/models/icnet_r50-d8.py), is the full-width ResNet-50
with contracted dilation, split after the whole of stage 2 and downsampled bilinearly (``align_corners=False``;
at exactly half size this is 2x2 average pooling). The prototxt's trunk is the paper's compressed one: half
the widths (stem 32-32-64, stage widths 32-256), the 1/4 branch split off after the first block of stage 2
(``conv3_1`` -> ``conv3_1_sub4``), dilation 2 and 4 in every block of stages 3 and 4, Caffe's corner-aligned ``Interp`` for
every resize and pyramid pooling windows baked for a 1025x2049 input. mmsegmentation differs from the
prototxt in the 1/4 branch (PSPNet's concatenating pyramid, 3x3 fusion to 512, 1x1 to 256), an extra 1x1
conv on the 1/2 branch and a ReLU on each CFF's branches; this follows the prototxt there. Here the pyramid
pooling is ``seg::adaptive_avg_pool`` (models/heads/psp.py), exact at any size, so one graph serves every H, W.

No parameter count is published for this configuration (mmsegmentation's ICNet model table lists none).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.resnet import DEPTHS, ResNet
from .base import ConvNormAct, SegmentationModel, init_conv_bn
from .heads.psp import BINS, adaptive_avg_pool
from .registry import register_model


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class LightPyramidPooling(nn.Module):
    """``x + sum over bins of upsample(adaptive_avg_pool(x, bins))``: the pyramid of PSPNet without its
    reductions and concatenation, as ICNet's prototxt sums it (``conv5_3_sum``). No parameters."""

    def __init__(self, bins: tuple[int, ...] = BINS) -> None:
        super().__init__()
        self.bins = tuple(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        out = x
        for bins in self.bins:
            out = out + _resize(adaptive_avg_pool(x, bins), size)  # (B, C, h, w)
        return out


class CascadeFeatureFusion(nn.Module):
    """CFF: ``relu(BN(dilated_conv3x3(up(low))) + BN(conv1x1(high)))`` at the high-resolution map's size.
    Returns the fusion and ``up(low)``, the map the cascade label guidance classifies."""

    def __init__(self, low_channels: int, high_channels: int, channels: int,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv_low = ConvNormAct(low_channels, channels, 3, dilation=2, norm_layer=norm_layer, act_layer=None)
        self.conv_high = ConvNormAct(high_channels, channels, 1, norm_layer=norm_layer, act_layer=None)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = _resize(low, high.shape[-2:])  # (B, C_low, h, w): x2
        return F.relu(self.conv_low(low) + self.conv_high(high)), low  # (B, channels, h, w)


class ICNetBackbone(nn.Module):
    """The three branches and the two fusions. Returns ``[up(sub4), up(sub24), sub124]``: the inputs of the
    label guidance at 1/16 and 1/8 (strides of the full input) and the last fusion at 1/8."""

    def __init__(self, layers: tuple[int, int, int, int] = DEPTHS[50], base_width: int = 64, stem_width: int = 64,
                 branch_channels: tuple[int, int, int] = (32, 32, 64), pool_channels: int = 256,
                 channels: int = 128, bins: tuple[int, ...] = BINS,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.resnet = ResNet(layers, output_stride=8, deep_stem=True, stem_width=stem_width, base_width=base_width,
                             norm_layer=norm_layer)
        c1, c2, c3 = branch_channels
        self.sub1 = nn.Sequential(
            ConvNormAct(3, c1, 3, 2, norm_layer=norm_layer),
            ConvNormAct(c1, c2, 3, 2, norm_layer=norm_layer),
            ConvNormAct(c2, c3, 3, 2, norm_layer=norm_layer),
        )
        self.pyramid = LightPyramidPooling(bins)
        self.reduce = ConvNormAct(self.resnet.out_channels[3], pool_channels, 1, norm_layer=norm_layer)
        self.cff24 = CascadeFeatureFusion(pool_channels, self.resnet.out_channels[1], channels, norm_layer)
        self.cff12 = CascadeFeatureFusion(channels, c3, channels, norm_layer)
        self.out_channels = [pool_channels, channels, channels]
        self.strides = [16, 8, 8]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        h, w = images.shape[-2:]
        sub1 = self.sub1(images)  # (B, 64, H/8, W/8)
        x = _resize(images, (h // 2, w // 2))  # (B, 3, H/2, W/2)
        x = self.resnet.stem(x)  # (B, 128, H/8, W/8)
        sub2 = self.resnet.stages[1](self.resnet.stages[0](x))  # (B, 512, H/16, W/16)
        x = _resize(sub2, (sub2.shape[-2] // 2, sub2.shape[-1] // 2))  # (B, 512, H/32, W/32)
        x = self.resnet.stages[3](self.resnet.stages[2](x))  # (B, 2048, H/32, W/32): dilated, stride kept
        sub4 = self.reduce(self.pyramid(x))  # (B, 256, H/32, W/32)
        sub24, guide16 = self.cff24(sub4, sub2)  # (B, 128, H/16, W/16); (B, 256, H/16, W/16)
        sub124, guide8 = self.cff12(sub24, sub1)  # (B, 128, H/8, W/8); (B, 128, H/8, W/8)
        return [guide16, guide8, sub124]


class ICHead(nn.Module):
    """The last fusion (``features[-1]``, stride 8) upsampled x2 and classified by a 1x1 conv: logits at
    stride 4."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]  # (B, C, H/8, W/8)
        x = _resize(x, (2 * x.shape[-2], 2 * x.shape[-1]))  # (B, C, H/4, W/4)
        return self.classifier(x)  # (B, num_classes, H/4, W/4)


def _icnet(layers: tuple[int, int, int, int], num_classes: int, **kwargs) -> SegmentationModel:
    backbone = ICNetBackbone(layers, **kwargs)
    head = ICHead(backbone.out_channels[-1], num_classes)
    # Cascade label guidance: a 1x1 classifier on each CFF's upsampled low-resolution input.
    aux = [nn.Conv2d(c, num_classes, 1) for c in backbone.out_channels[:2]]
    model = SegmentationModel(backbone, head, num_classes, aux_heads=aux, aux_indices=[0, 1])
    model.apply(init_conv_bn)  # mmsegmentation's ICNet init: Kaiming (fan-out) convs, unit BatchNorm
    return model


# Numerical tests: a quarter of the trunk's widths, the branches and fusions narrower; every block kept.
_NARROW = {"base_width": 16, "stem_width": 16, "branch_channels": (8, 8, 16), "pool_channels": 64, "channels": 32}


@register_model("icnet", size_divisor=32, output_stride=4, test_kwargs=_NARROW, custom_ops=("adaptive_avg_pool",))
def icnet_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """ICNet, ResNet-50 trunk (deep stem, dilated stages 3-4), branches at 1/4, 1/2 and full resolution
    fused by two CFFs (128 channels)."""
    return _icnet(DEPTHS[50], num_classes, **kwargs)
