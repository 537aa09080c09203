"""DANet (Fu, Liu, Tian, Li, Bao, Fang & Lu, "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983) on the shared dilated ResNet-50 with the deep stem (output stride 8), in
mmsegmentation's DAHead arrangement: two parallel branches on the backbone feature, each a 3x3
conv-BN-ReLU reduction to 512 channels, an attention module and a 3x3 conv-BN-ReLU; their sum, dropout,
1x1 classifier. Deep supervision trains an FCN head on stage 3 (``aux_heads``, never exported). The ``_v1c``
variants have mmsegmentation's ResNetV1c stem (32-32-64 where ours is 64-64-128), the only difference from its
``danet_r{50,101}-d8`` networks, whose files import (their two per-branch classifiers left out, see below).

- Position attention module (PAM): query and key 1x1 convs to C/8, value 1x1 conv to C,
  ``out_i = gamma * sum_j softmax_j(q_i . k_j) v_j + x_i`` (no scaling of the logits), ``gamma`` learned
  from 0.
- Channel attention module (CAM): no projections; ``energy = X X^T`` over the HW positions (C x C),
  attention ``softmax(max_k energy_ik - energy_ij)`` over j, ``out = gamma * attention X + x``, ``gamma``
  learned from 0. The max-minus form is mmsegmentation's (DAHead's CAM); since softmax is
  shift-invariant it equals ``softmax(-energy)``, the form computed here: one exact Neg instead of a
  ReduceMax and a Sub of two large FP16 numbers. FP16: the logits are sums over all HW positions of
  products of non-negative (post-ReLU) features and grow with the image (measured with random weights,
  512 channels: up to 4.2e3 on a 64x128 map, 1.7e4 on 128x256, i.e. a 1024x2048 Cityscapes frame). The
  softmax stays FP32 (export/compile/precision.py), the energy MatMul does not until the build's
  ``fp16_guard`` sees it above half of FP16's range; at 1.7e4 the FP16 logits' relative L2 error was
  2.7e-3 against FP32.

Deviation: mmsegmentation's DAHead also classifies each branch on its own
(``pam_out``, ``cam_out``), two training-only outputs of the head's inner features; the deployed output is
the sum branch, which is all this head computes (those two 1x1 classifiers would be trained as auxiliary
heads of the head, which ``SegmentationModel.aux_heads`` on backbone features cannot express). No parameter
count for this model is published (none was found; mmsegmentation's model zoo lists memory, speed and
mIoU only).
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones.resnet import DEPTHS
from .base import ConvNormAct
from .heads.context import MMSEG_D8_CONFIG, MMSEG_DILATED_RESNET_KEYS, dilated_resnet_model
from .keymaps import KeyMap, conv_norm
from .registry import register_model


class PositionAttention(nn.Module):
    """PAM: every position a weighted sum of the values at all positions, weights from query . key."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, channels // reduction, 1)
        self.key = nn.Conv2d(channels, channels // reduction, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C/8)
        k = self.key(x).flatten(2)  # (B, C/8, HW)
        v = self.value(x).flatten(2)  # (B, C, HW)
        attention = torch.softmax(torch.matmul(q, k), dim=-1)  # (B, HW, HW): row i sums to 1 over j
        out = torch.matmul(v, attention.transpose(1, 2))  # (B, C, HW)
        return self.gamma * out.reshape(x.shape) + x


class ChannelAttention(nn.Module):
    """CAM: every channel a weighted sum of all channels, weights from the channels' Gram matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(2)  # (B, C, HW)
        energy = torch.matmul(f, f.transpose(1, 2))  # (B, C, C)
        # mmsegmentation's softmax(max - energy) is softmax(-energy): the shift cancels in the softmax.
        attention = torch.softmax(-energy, dim=-1)  # (B, C, C): row i sums to 1 over j
        out = torch.matmul(attention, f)  # (B, C, HW)
        return self.gamma * out.reshape(x.shape) + x


class DAHead(nn.Module):
    """Position and channel attention branches on one map, summed and classified; logits at the input
    feature's stride (8)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, dropout: float = 0.1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.pam_in = ConvNormAct(in_channels, channels, 3, norm_layer=norm_layer)
        self.pam = PositionAttention(channels)
        self.pam_out = ConvNormAct(channels, channels, 3, norm_layer=norm_layer)
        self.cam_in = ConvNormAct(in_channels, channels, 3, norm_layer=norm_layer)
        self.cam = ChannelAttention()
        self.cam_out = ConvNormAct(channels, channels, 3, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]  # (B, C_in, H/8, W/8)
        pam = self.pam_out(self.pam(self.pam_in(x)))  # (B, channels, H/8, W/8)
        cam = self.cam_out(self.cam(self.cam_in(x)))  # (B, channels, H/8, W/8)
        return self.classifier(self.dropout(pam + cam))


def _danet(layers: tuple[int, int, int, int], num_classes: int, head_channels: int = 512, **backbone) -> nn.Module:
    def head(channels: list[int]) -> DAHead:
        return DAHead(channels[-1], num_classes, head_channels)  # PAM query/key 64 on 512

    return dilated_resnet_model(layers, num_classes, head, head_channels // 2, **backbone)


# Numerical tests: a quarter of the widths (the bottlenecks, stem and head keep every layer they have). The
# _v1c variants differ only in their full-size stem, so at these widths danet_r50_v1c is danet_r50.
_NARROW = {"base_width": 16, "stem_width": 16, "head_channels": 128}

# mmsegmentation's danet_r50-d8 / danet_r101-d8 checkpoints (configs/_base_/models/danet_r50-d8.py, 3f8d34e:
# ResNetV1c, DAHead with channels 512, pam_channels 64). DAHead (da_head.py, 1cd613f): pam_in_conv, pam,
# pam_out_conv and the cam_ ones are ConvModules; PAM is mmseg's SelfAttentionBlock (utils/self_attention_block.py,
# 50546da) with plain nn.Conv2d key_project, query_project, value_project (key_query_norm and value_out_norm
# off, no out_project) and gamma, an mmcv Scale whose parameter is 0-dim (ours (1,): reshaped on import); CAM has
# only gamma. pam_conv_seg and cam_conv_seg classify each branch for its own training loss: left out.
MMSEG_KEYS = KeyMap("mmseg", (
    *MMSEG_DILATED_RESNET_KEYS,
    *conv_norm(r"decode_head\.(pam|cam)_in_conv", r"head.\1_in"),
    *conv_norm(r"decode_head\.(pam|cam)_out_conv", r"head.\1_out"),
    (r"decode_head\.pam\.(query|key|value)_project\.(\w+)", r"head.pam.\1.\2"),
    (r"decode_head\.(pam|cam)\.gamma\.scale", r"head.\1.gamma"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.classifier.\1"),
), drop=(r"decode_head\.(pam|cam)_conv_seg\.\w+",), config=MMSEG_D8_CONFIG,
    note="mmsegmentation DAHead on ResNetV1c (configs/_base_/models/danet_r50-d8.py)")


@register_model("danet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def danet_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """DANet, dilated ResNet-50 (output stride 8), position and channel attention head."""
    return _danet(DEPTHS[50], num_classes, **kwargs)


@register_model("danet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def danet_r50_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """DANet on mmsegmentation's ResNetV1c-50 (deep stem 32-32-64): its danet_r50-d8 checkpoints load here."""
    return _danet(DEPTHS[50], num_classes, **{"stem_width": 32, **kwargs})


@register_model("danet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def danet_r101_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """DANet on mmsegmentation's ResNetV1c-101 (deep stem 32-32-64): its danet_r101-d8 checkpoints load here."""
    return _danet(DEPTHS[101], num_classes, **{"stem_width": 32, **kwargs})
