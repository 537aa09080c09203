"""PSANet (Zhao et al., "PSANet: Point-wise Spatial Attention Network for Scene Parsing", ECCV 2018).

The shared dilated ResNet with a deep stem (models/backbones/resnet.py, output stride 8) followed by the
bi-directional point-wise spatial attention head, arranged as mmsegmentation's ``PSAHead``
(``psa_type='bi-direction'``, ``compact=False``, ``shrink_factor=2``, ``psa_softmax=True``):

- two branches, collect and distribute, each: 1x1 reduce (2048 -> 512), bilinear shrink to half the feature
  size, an attention conv (1x1 conv-BN-ReLU, then 1x1 to ``mask_h * mask_w`` channels: one weight per cell of
  the window around each position), the PSA mask (the ``psa_mask`` custom op places each window into the
  H x W map; distribute transposes it), a softmax over all H*W positions (the zeros outside the window
  included, as mmseg), and the aggregation ``value (C, HW) @ attention (HW, HW)``;
- the two results concatenated, projected back to the input width, resized to the feature size, fused with
  the feature by a 3x3 bottleneck, classified.

The window (``mask_size``) fixes the attention conv's output channels, so it is a build-time constant; the
paper's over-completed map is (2H-1) x (2W-1) of the (shrunk) feature. mmseg's Cityscapes configs use
(97, 97), over-complete for its 769x769 crops (49x49 after shrinking). The op is valid at every size: at
larger inputs the window is local, at smaller ones it is clipped at the borders. Auxiliary FCN head on
stage 3, training only.

The ``_v1c`` variants have mmsegmentation's ResNetV1c stem (32-32-64 where ours is 64-64-128), the only
difference from its Cityscapes and VOC12+Aug ``psanet_r{50,101}-d8`` networks (97 x 97), whose files import.
Its ADE20K configs set ``mask_size=(66, 66)``, a different attention conv (66 * 66 output channels): the
``_v1c_ade20k`` variants. An even window is not centred: half = (66 - 1) // 2 = 32 cells before a position,
33 after, as mmcv's kernel; the op and its lowering compute that offset from the window, nothing else changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.resnet import DEPTHS
from .base import ConvNormAct
from .heads.context import MMSEG_D8_CONFIG, MMSEG_DILATED_RESNET_KEYS, dilated_resnet_model
from .keymaps import KeyMap, conv_norm
from .ops.psa_mask import psa_mask
from .registry import register_model


class PointwiseSpatialAttention(nn.Module):
    """One PSA branch: reduce, shrink, predict each position's window of weights, place it (collect or
    distribute), softmax over positions, aggregate. (B, C_in, H, W) -> (B, channels, H // 2, W // 2)."""

    def __init__(self, in_channels: int, channels: int, mask_size: tuple[int, int], distribute: bool,
                 shrink_factor: int = 2, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.mask_size, self.distribute, self.shrink_factor = tuple(mask_size), int(distribute), shrink_factor
        self.reduce = ConvNormAct(in_channels, channels, 1, norm_layer=norm_layer)
        self.attention = nn.Sequential(ConvNormAct(channels, channels, 1, norm_layer=norm_layer),
                                       nn.Conv2d(channels, mask_size[0] * mask_size[1], 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = self.reduce(x)  # (B, C, H, W)
        # mmseg shrinks to floor(H / 2) with align_corners=False, except when H and W are both odd; one rule
        # here (mmseg's for every size with an even side), since a dynamic graph cannot branch on parity. The
        # parity, not the head's align_corners option, picks the mode (psa_head.py, PSAHead.forward): with
        # shrink_factor 2, mmseg's option reaches only the model's final upsampling, as here.
        h, w = value.shape[-2] // self.shrink_factor, value.shape[-1] // self.shrink_factor
        value = F.interpolate(value, size=(h, w), mode="bilinear", align_corners=False)  # (B, C, h, w)
        logits = psa_mask(self.attention(value), *self.mask_size, self.distribute)  # (B, hw, h, w)
        attention = torch.softmax(logits, dim=1).flatten(2)  # (B, hw_source, hw_target)
        out = torch.bmm(value.flatten(2), attention)  # (B, C, hw)
        return out.view_as(value)


class PSAHead(nn.Module):
    """Bi-directional PSA head: collect and distribute branches, concatenated, projected, fused with the
    input by a 3x3 bottleneck, classified. Reads the last backbone feature; logits at stride 8."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512,
                 mask_size: tuple[int, int] = (97, 97), dropout: float = 0.1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.collect = PointwiseSpatialAttention(in_channels, channels, mask_size, False, norm_layer=norm_layer)
        self.distribute = PointwiseSpatialAttention(in_channels, channels, mask_size, True, norm_layer=norm_layer)
        # padding=1 on a 1x1 conv, as mmseg's PSAHead: the map grows by one pixel a side before it is resized
        # to the feature size, which its checkpoints were trained with.
        self.project = nn.Sequential(nn.Conv2d(2 * channels, in_channels, 1, padding=1, bias=False),
                                     norm_layer(in_channels), nn.ReLU(inplace=True))
        self.bottleneck = ConvNormAct(2 * in_channels, channels, 3, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]  # (B, C_in, H/8, W/8)
        out = self.project(torch.cat([self.collect(x), self.distribute(x)], dim=1))  # (B, C_in, h + 2, w + 2)
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = self.bottleneck(torch.cat([x, out], dim=1))  # (B, channels, H/8, W/8)
        return self.classifier(self.dropout(out))


def _psanet(layers: tuple[int, int, int, int], num_classes: int, head_channels: int = 512,
            mask_size: tuple[int, int] = (97, 97), **backbone) -> nn.Module:
    def head(channels: list[int]) -> PSAHead:
        return PSAHead(channels[-1], num_classes, head_channels, mask_size)

    return dilated_resnet_model(layers, num_classes, head, head_channels // 2, **backbone)


# Numerical tests: a quarter of the widths, and a 7 x 7 window: over-complete for the 4 x 4 attention map of a
# 64 x 64 input, clipped (local) on the 4 x 6 map of a 64 x 96 one. The _v1c variants differ only in their
# full-size stem, the _ade20k ones also in their full-size window, so at these widths all are psanet_r50 (r101 aside).
_NARROW = {"base_width": 16, "stem_width": 16, "head_channels": 128, "mask_size": (7, 7)}

# mmsegmentation's psanet_r50-d8 / psanet_r101-d8 checkpoints (configs/_base_/models/psanet_r50-d8.py, 3f8d34e:
# ResNetV1c, PSAHead with channels 512, mask_size (97, 97), bi-direction, compact off, shrink_factor 2,
# normalization_factor 1.0, psa_softmax). PSAHead (psa_head.py, 3f8d34e): reduce and attention (ConvModule, conv
# without bias) collect, reduce_p and attention_p distribute; proj (ConvModule 1x1, padding 1), bottleneck.
MMSEG_KEYS = KeyMap("mmseg", (
    *MMSEG_DILATED_RESNET_KEYS,
    *conv_norm(r"decode_head\.reduce", "head.collect.reduce"),
    *conv_norm(r"decode_head\.attention\.0", "head.collect.attention.0"),
    (r"decode_head\.attention\.1\.weight", "head.collect.attention.1.weight"),
    *conv_norm(r"decode_head\.reduce_p", "head.distribute.reduce"),
    *conv_norm(r"decode_head\.attention_p\.0", "head.distribute.attention.0"),
    (r"decode_head\.attention_p\.1\.weight", "head.distribute.attention.1.weight"),
    *conv_norm(r"decode_head\.proj", "head.project"),
    *conv_norm(r"decode_head\.bottleneck", "head.bottleneck"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.classifier.\1"),
), config=MMSEG_D8_CONFIG, note="mmsegmentation PSAHead on ResNetV1c (configs/_base_/models/psanet_r50-d8.py)")


@register_model("psanet", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("psa_mask",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def psanet_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSANet, ResNet-50 backbone (output stride 8), bi-directional PSA head with mmseg's Cityscapes 97 x 97
    window."""
    return _psanet(DEPTHS[50], num_classes, **kwargs)


@register_model("psanet", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("psa_mask",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def psanet_r50_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSANet on mmsegmentation's ResNetV1c-50 (deep stem 32-32-64), 97 x 97 window: its Cityscapes
    and VOC12+Aug psanet_r50-d8 checkpoints load here."""
    return _psanet(DEPTHS[50], num_classes, **{"stem_width": 32, **kwargs})


@register_model("psanet", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("psa_mask",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def psanet_r101_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSANet on mmsegmentation's ResNetV1c-101 (deep stem 32-32-64), 97 x 97 window: its Cityscapes
    and VOC12+Aug psanet_r101-d8 checkpoints load here."""
    return _psanet(DEPTHS[101], num_classes, **{"stem_width": 32, **kwargs})


# mmsegmentation's ADE20K PSANet configs change the head's window and the class count, nothing else:
# configs/psanet/psanet_r50-d8_4xb4-160k_ade20k-512x512.py (e663aca; 0.x psanet_r50-d8_512x512_80k_ade20k.py,
# 4e726a2) set decode_head=dict(mask_size=(66, 66), num_classes=150), auxiliary_head=dict(num_classes=150); the r101
# files only set depth=101 on top (psanet_r101-d8_4xb4-80k_ade20k-512x512.py, 152f43b). The VOC12+Aug configs keep
# the base's (97, 97) (psanet_r50-d8_4xb4-20k_voc12aug-512x512.py, a3a144a). The class
# count comes with the file (meta), so the default stays this registry's 19; the window is a keyword argument, so
# the numerical tests' 7 x 7 (_NARROW) overrides it and these small networks are the _v1c ones.
_ADE20K_MASK = (66, 66)


@register_model("psanet", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("psa_mask",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def psanet_r50_v1c_ade20k(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSANet on mmsegmentation's ResNetV1c-50 with its ADE20K 66 x 66 window: its ADE20K psanet_r50-d8
    checkpoints (150 classes) load here."""
    return psanet_r50_v1c(num_classes, **{"mask_size": _ADE20K_MASK, **kwargs})


@register_model("psanet", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("psa_mask",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def psanet_r101_v1c_ade20k(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSANet on mmsegmentation's ResNetV1c-101 with its ADE20K 66 x 66 window: its ADE20K psanet_r101-d8
    checkpoints (150 classes) load here."""
    return psanet_r101_v1c(num_classes, **{"mask_size": _ADE20K_MASK, **kwargs})
