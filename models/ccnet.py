"""CCNet (Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019).

The shared dilated ResNet with a deep stem (models/backbones/resnet.py, output stride 8: the last two stages
trade stride for dilation 2 and 4, as in DeepLab) followed by the recurrent criss-cross attention (RCCA)
head: the same criss-cross attention module applied R = 2 times, which gives every pixel a path to every
other pixel.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones.resnet import DEPTHS
from .heads.context import MMSEG_D8_CONFIG, MMSEG_DILATED_RESNET_KEYS, ContextHead, dilated_resnet_model
from .keymaps import KeyMap, conv_norm
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


def _ccnet(layers: tuple[int, int, int, int], num_classes: int, head_channels: int = 512, recurrence: int = 2,
           **backbone) -> nn.Module:
    """The recurrent criss-cross attention (RCCA) head: one attention module applied ``recurrence`` times with
    shared weights inside mmseg's reduce / project / fuse arrangement (``ContextHead``); logits at stride 8."""
    def head(channels: list[int]) -> ContextHead:
        return ContextHead(channels[-1], num_classes, CrissCrossAttention(head_channels), head_channels, recurrence)

    return dilated_resnet_model(layers, num_classes, head, head_channels // 2, **backbone)


# Numerical tests: a quarter of the widths (the bottlenecks, stem and head keep every layer they have).
_NARROW = {"base_width": 16, "stem_width": 16, "head_channels": 128}
_NARROW_V1C = {"base_width": 16, "stem_width": 8, "head_channels": 128}  # the stem half the base width, as V1c

# mmsegmentation's ccnet_r50-d8 / ccnet_r101-d8 checkpoints (configs/_base_/models/ccnet_r50-d8.py, 2fc821e:
# ResNetV1c, CCHead with channels 512 and recurrence 2). CCHead (mmseg/models/decode_heads/cc_head.py, 1cd613f) is
# an FCNHead with num_convs=2 and concat_input: convs.0 reduces, cca attends, convs.1 projects, conv_cat fuses
# cat([x, output]) in our order. mmcv's CrissCrossAttention has query_conv, key_conv, value_conv and gamma, a
# Scale whose parameter is 0-dim (ours (1,): reshaped on import).
# Every variant has the table: the zoo's files (ResNetV1c's default stem, 32-32-64) fit the _v1c ones;
# ccnet / ccnet_r101 (64-64-128) take mmseg models trained with stem_channels=128, and a zoo file there fails
# naming the stem's shapes.
MMSEG_KEYS = KeyMap("mmseg", (
    *MMSEG_DILATED_RESNET_KEYS,
    *conv_norm(r"decode_head\.convs\.0", "head.reduce"),
    (r"decode_head\.cca\.(query|key|value)_conv\.(\w+)", r"head.attention.\1.\2"),
    (r"decode_head\.cca\.gamma\.scale", "head.attention.gamma"),
    *conv_norm(r"decode_head\.convs\.1", "head.project"),
    *conv_norm(r"decode_head\.conv_cat", "head.fuse"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.classifier.\1"),
), config=MMSEG_D8_CONFIG, note="mmsegmentation CCHead on ResNetV1c (configs/_base_/models/ccnet_r50-d8.py)")


@register_model("ccnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                custom_ops=("criss_cross_attention",), checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def ccnet(num_classes: int = 19, **kwargs) -> nn.Module:
    """CCNet, ResNet-50 backbone (output stride 8), RCCA head with R = 2."""
    return _ccnet(DEPTHS[50], num_classes, **kwargs)


@register_model("ccnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                custom_ops=("criss_cross_attention",), checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def ccnet_r101(num_classes: int = 19, **kwargs) -> nn.Module:
    """CCNet, ResNet-101 backbone (output stride 8), RCCA head with R = 2: the paper's configuration."""
    return _ccnet(DEPTHS[101], num_classes, **kwargs)


@register_model("ccnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW_V1C,
                custom_ops=("criss_cross_attention",), checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def ccnet_r50_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """CCNet on mmsegmentation's ResNetV1c-50 (deep stem 32-32-64): its ccnet_r50-d8 checkpoints load here."""
    return _ccnet(DEPTHS[50], num_classes, **{"stem_width": 32, **kwargs})


@register_model("ccnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW_V1C,
                custom_ops=("criss_cross_attention",), checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def ccnet_r101_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """CCNet on mmsegmentation's ResNetV1c-101 (deep stem 32-32-64): its ccnet_r101-d8 checkpoints load here."""
    return _ccnet(DEPTHS[101], num_classes, **{"stem_width": 32, **kwargs})
