"""GCNet (Cao, Xu, Lin, Wei & Hu, "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
ICCV Workshops 2019, https://arxiv.org/abs/1904.11492; full version "Global Context Networks", TPAMI 2020,
https://arxiv.org/abs/2012.13375) as a segmentation head on the shared dilated ResNet-50 with the deep stem
(output stride 8), in mmsegmentation's GCHead arrangement: 3x3 conv-BN-ReLU reduction to 512 channels, one
global context block, 3x3 conv-BN-ReLU, concatenation with the backbone feature, 3x3 fusion conv-BN-ReLU,
dropout, 1x1 classifier. Deep supervision trains an FCN head on stage 3 (``aux_heads``, never exported). The
``_v1c`` variants have mmsegmentation's ResNetV1c stem (32-32-64 where ours is 64-64-128), the only difference
from its ``gcnet_r{50,101}-d8`` networks, whose files import.

The global context block is the paper's: context modelling by attention pooling (a 1x1 conv to one channel,
softmax over all HW positions, the weighted sum of the features: one context vector per image, the same for
every query, which is the paper's simplification of the non-local block), a bottleneck transform 1x1 conv
(ratio 1/4) -> LayerNorm -> ReLU -> 1x1 conv, and fusion by broadcast addition. The LayerNorm normalises the
(C/4, 1, 1) context vector over all three axes as mmcv's ContextBlock; it exports as one opset-17
``LayerNormalization`` (axis -3), which TensorRT 10.3 and 11.1 import. The last transform conv starts at
zero, as mmcv's ContextBlock initialises it, so that the block starts as the identity. No parameter count for this segmentation model is published (mmsegmentation's model zoo lists
memory, speed and mIoU only).
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones.resnet import DEPTHS
from .heads.context import (
    MMSEG_CONTEXT_HEAD_KEYS,
    MMSEG_D8_CONFIG,
    MMSEG_DILATED_RESNET_KEYS,
    ContextHead,
    dilated_resnet_model,
)
from .keymaps import KeyMap
from .registry import register_model


class GlobalContextBlock(nn.Module):
    """Attention pooling to one context vector, bottleneck transform, add to every position."""

    def __init__(self, channels: int, ratio: float = 1 / 4) -> None:
        super().__init__()
        planes = int(channels * ratio)
        self.mask = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, planes, 1),
            nn.LayerNorm([planes, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, channels, 1),
        )
        nn.init.zeros_(self.transform[-1].weight)  # the block starts as the identity (mmcv's last_zero_init)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.mask(x).flatten(2), dim=-1)  # (B, 1, HW)
        context = torch.matmul(x.flatten(2), weights.transpose(1, 2))  # (B, C, 1)
        context = context.unsqueeze(-1)  # (B, C, 1, 1)
        return x + self.transform(context)  # (B, C, H, W)


def _gcnet(layers: tuple[int, int, int, int], num_classes: int, head_channels: int = 512, ratio: float = 1 / 4,
           **backbone) -> nn.Module:
    """mmseg's GCHead: the global context block inside the reduce / project / fuse arrangement
    (``ContextHead``); logits at stride 8."""
    def head(channels: list[int]) -> ContextHead:
        return ContextHead(channels[-1], num_classes, GlobalContextBlock(head_channels, ratio), head_channels)

    return dilated_resnet_model(layers, num_classes, head, head_channels // 2, **backbone)


# Numerical tests: a quarter of the widths (the bottlenecks, stem and head keep every layer they have). The
# _v1c variants differ only in their full-size stem, so at these widths gcnet_r50_v1c is gcnet_r50.
_NARROW = {"base_width": 16, "stem_width": 16, "head_channels": 128}

# mmsegmentation's gcnet_r50-d8 / gcnet_r101-d8 checkpoints (configs/_base_/models/gcnet_r50-d8.py, 3f8d34e:
# ResNetV1c, GCHead with channels 512, ratio 1/4, pooling 'att', fusion ('channel_add',)). GCHead (gc_head.py,
# 1cd613f) is an FCNHead with num_convs=2 and concat_input around gc_block, mmcv's ContextBlock
# (mmcv/cnn/bricks/context_block.py, 1d7b818): conv_mask, and channel_add_conv = (1x1 conv, LayerNorm([C/4, 1, 1]),
# ReLU, 1x1 conv), ours transform with the same indices.
MMSEG_KEYS = KeyMap("mmseg", (
    *MMSEG_DILATED_RESNET_KEYS,
    *MMSEG_CONTEXT_HEAD_KEYS,
    (r"decode_head\.gc_block\.conv_mask\.(\w+)", r"head.attention.mask.\1"),
    (r"decode_head\.gc_block\.channel_add_conv\.([013])\.(\w+)", r"head.attention.transform.\1.\2"),
), config=MMSEG_D8_CONFIG, note="mmsegmentation GCHead on ResNetV1c (configs/_base_/models/gcnet_r50-d8.py)")


@register_model("gcnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def gcnet_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """GCNet, dilated ResNet-50 (output stride 8), global context head (attention pooling, add fusion)."""
    return _gcnet(DEPTHS[50], num_classes, **kwargs)


@register_model("gcnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def gcnet_r50_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """GCNet on mmsegmentation's ResNetV1c-50 (deep stem 32-32-64): its gcnet_r50-d8 checkpoints load here."""
    return _gcnet(DEPTHS[50], num_classes, **{"stem_width": 32, **kwargs})


@register_model("gcnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def gcnet_r101_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """GCNet on mmsegmentation's ResNetV1c-101 (deep stem 32-32-64): its gcnet_r101-d8 checkpoints load here."""
    return _gcnet(DEPTHS[101], num_classes, **{"stem_width": 32, **kwargs})
