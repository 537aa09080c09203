"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015, https://arxiv.org/abs/1411.4038) on VGG16.

VGG16's classifier recast as convolutions (fc6 7x7, fc7 1x1: ``models.backbones.vgg.vgg16_fcn``) scores every
position at stride 32 (``score_fr``, 1x1). FCN-32s upsamples those scores 32x in one step; FCN-16s first
upsamples them 2x and adds scores from pool4 (stride 16), then upsamples 16x; FCN-8s adds pool3's scores too
(stride 8) before an 8x step. Each upsampling is a transposed convolution initialised to bilinear
interpolation (``models.upsampling.TransposedConvUpsample``), the skip scores are 1x1 convs initialised to
zero, so that training starts from the coarser net's output, as the paper does (Sec. 4.2).

Parameters: 134M for each (the paper's Table 1, FCN-VGG16: the VGG16 backbone with 21 classes; the skips
add 11k each). The reference's upsampling layers (fcn.berkeleyvision.org, ``voc-fcn*s/net.py``) are full
class-to-class deconvolutions that are bilinear on the diagonal and zero elsewhere, 1.8M parameters for the
64x64 one, which the paper's count does not include; here each class has its own learned kernel (a grouped
transposed conv), the same function at initialisation. The reference freezes the final upsampling
(``lr_mult: 0``); here it is learnable, and a trainer may freeze it.

Not reproduced: conv1_1's 100-pixel padding and the crops it forces (models/backbones/vgg.py says why);
every map here is exactly input / stride, so input sizes must be multiples of 32.

mmsegmentation's FCN is another network of the same idea (``fcn_r18_v1c``, ``fcn_r50_v1c``, ``fcn_r101_v1c``,
whose ``fcn_r{18,50,101}-d8`` files import): the dilated ResNetV1c (output stride 8) with its FCNHead of two 3x3
conv-BN-ReLU, concatenated with the backbone feature, a 3x3 fusion conv-BN-ReLU, dropout and a 1x1 classifier
(``models.heads.context.ContextHead`` with no block); an FCN head on stage 3 trains it (``aux_heads``).
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones.resnet import DEPTHS, BasicBlock
from .backbones.vgg import vgg16_fcn
from .base import SegmentationModel
from .heads.context import (
    MMSEG_CONTEXT_HEAD_KEYS,
    MMSEG_D8_CONFIG,
    MMSEG_DILATED_RESNET_KEYS,
    ContextHead,
    dilated_resnet_model,
)
from .keymaps import KeyMap
from .registry import register_model
from .upsampling import bilinear_kernel


class ClassUpsample(nn.ConvTranspose2d):
    """(B, K, h, w) scores -> (B, K, s*h, s*w): one learned kernel per class (kernel 2s, stride s, padding
    s/2, no bias), initialised to bilinear interpolation."""

    def __init__(self, num_classes: int, scale: int) -> None:
        super().__init__(num_classes, num_classes, 2 * scale, scale, scale // 2, groups=num_classes, bias=False)
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(1, 2 * scale).expand_as(self.weight))


def _zero_conv(in_channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FCNSkipHead(nn.Module):
    """Scores from fc7 and, for 16s and 8s, from pool4 and pool3, fused coarse to fine; logits at stride 1.

    ``skips``: 0 (FCN-32s), 1 (16s: pool4) or 2 (8s: pool4 and pool3). Reads the backbone's features
    ``[pool1, ..., pool5, fc7]``: pool3 is ``features[2]``, pool4 ``features[3]``, fc7 ``features[-1]``.
    """

    def __init__(self, in_channels: list[int], num_classes: int, skips: int = 2) -> None:
        super().__init__()
        if skips not in (0, 1, 2):
            raise ValueError(f"FCN skips={skips}: expected 0 (FCN-32s), 1 (16s) or 2 (8s)")
        self.skips = skips
        self.score_fr = nn.Conv2d(in_channels[-1], num_classes, 1)
        # From the coarsest: score_pool4, then score_pool3.
        self.score_pools = nn.ModuleList(_zero_conv(in_channels[3 - i], num_classes) for i in range(skips))
        self.upscore2 = nn.ModuleList(ClassUpsample(num_classes, 2) for _ in range(skips))
        self.upscore = ClassUpsample(num_classes, 32 // 2**skips)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        score = self.score_fr(features[-1])  # (B, K, H/32, W/32)
        for i, (score_pool, up) in enumerate(zip(self.score_pools, self.upscore2)):
            score = up(score) + score_pool(features[3 - i])  # (B, K, H/16, W/16), then (B, K, H/8, W/8)
        return self.upscore(score)  # (B, K, H, W)


def _fcn(skips: int, num_classes: int, **backbone) -> SegmentationModel:
    encoder = vgg16_fcn(**backbone)
    return SegmentationModel(encoder, FCNSkipHead(encoder.out_channels, num_classes, skips), num_classes)


# Numerical tests: every conv kept, 8x narrower, fc6/fc7 at 64 channels.
_NARROW = {"channels": (8, 16, 32, 64, 64), "fc_channels": 64}


@register_model("fcn", size_divisor=32, output_stride=1, test_kwargs=_NARROW)
def fcn32s(num_classes: int = 21, **kwargs) -> nn.Module:
    """FCN-32s on VGG16: fc7 scores upsampled 32x in one step."""
    return _fcn(0, num_classes, **kwargs)


@register_model("fcn", size_divisor=32, output_stride=1, test_kwargs=_NARROW)
def fcn16s(num_classes: int = 21, **kwargs) -> nn.Module:
    """FCN-16s on VGG16: fc7 scores 2x, plus pool4 scores, upsampled 16x."""
    return _fcn(1, num_classes, **kwargs)


@register_model("fcn", size_divisor=32, output_stride=1, test_kwargs=_NARROW)
def fcn8s(num_classes: int = 21, **kwargs) -> nn.Module:
    """FCN-8s on VGG16: fc7 scores 2x, plus pool4, 2x, plus pool3, upsampled 8x."""
    return _fcn(2, num_classes, **kwargs)


def _fcn_resnet(layers: tuple[int, int, int, int], num_classes: int, head_channels: int = 512,
                **backbone) -> SegmentationModel:
    """mmseg's FCNHead(num_convs=2, concat_input=True): ContextHead with no block; logits at stride 8."""
    def head(channels: list[int]) -> ContextHead:
        return ContextHead(channels[-1], num_classes, nn.Identity(), head_channels)

    return dilated_resnet_model(layers, num_classes, head, head_channels // 2, **backbone)


# Numerical tests: a quarter of the widths (the bottlenecks, stem and head keep every layer they have).
_NARROW_RESNET = {"base_width": 16, "stem_width": 16, "head_channels": 128}
# ResNet-18: a quarter of the widths, the V1c stem half the base width, the head a quarter of the full 128.
_NARROW_R18 = {"base_width": 16, "stem_width": 8, "head_channels": 32}

# mmsegmentation's fcn_r50-d8 / fcn_r101-d8 checkpoints (configs/_base_/models/fcn_r50-d8.py, 2fc821e: ResNetV1c,
# FCNHead with in_channels 2048, channels 512, num_convs 2, concat_input, dropout 0.1; auxiliary FCNHead 1024 ->
# 256). FCNHead (fcn_head.py, 0b5f81f): convs.0, convs.1, conv_cat, conv_seg. The fcn_r18-d8 files
# (configs/fcn/fcn_r18-d8_512x1024_80k_cityscapes.py, 57ac1a0, and its 769x769 twin) narrow the heads
# (decode 512 -> 128, auxiliary 256 -> 64) on BasicBlocks of the same key names.
MMSEG_KEYS = KeyMap("mmseg", (*MMSEG_DILATED_RESNET_KEYS, *MMSEG_CONTEXT_HEAD_KEYS), config=MMSEG_D8_CONFIG,
                    note="mmsegmentation FCNHead on ResNetV1c (configs/_base_/models/fcn_r50-d8.py)")


@register_model("fcn", size_divisor=8, output_stride=8, test_kwargs=_NARROW_R18,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def fcn_r18_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """mmsegmentation's FCN on dilated ResNetV1c-18 (its BasicBlock: only the first 3x3 conv dilated), heads
    128 and 64 wide: its fcn_r18-d8 checkpoints load here."""
    return _fcn_resnet(DEPTHS[18], num_classes, **{"stem_width": 32, "head_channels": 128, "block": BasicBlock,
                                                   "dilate_conv2": False, **kwargs})


@register_model("fcn", size_divisor=8, output_stride=8, test_kwargs=_NARROW_RESNET,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def fcn_r50_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """mmsegmentation's FCN: dilated ResNetV1c-50 (output stride 8, deep stem 32-32-64), FCNHead with two convs
    and the input concatenated: its fcn_r50-d8 checkpoints load here."""
    return _fcn_resnet(DEPTHS[50], num_classes, **{"stem_width": 32, **kwargs})


@register_model("fcn", size_divisor=8, output_stride=8, test_kwargs=_NARROW_RESNET,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def fcn_r101_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """mmsegmentation's FCN: dilated ResNetV1c-101 (output stride 8, deep stem 32-32-64), FCNHead with two convs
    and the input concatenated: its fcn_r101-d8 checkpoints load here."""
    return _fcn_resnet(DEPTHS[101], num_classes, **{"stem_width": 32, **kwargs})
