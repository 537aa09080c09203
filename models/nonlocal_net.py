"""Non-local network (Wang, Girshick, Gupta & He, "Non-local Neural Networks", CVPR 2018,
https://arxiv.org/abs/1711.07971) as a segmentation head on the shared dilated ResNet-50 with the deep stem
(models/backbones/resnet.py, output stride 8), in mmsegmentation's NLHead arrangement: 3x3 conv-BN-ReLU
reduction to 512 channels, one embedded-Gaussian non-local block, 3x3 conv-BN-ReLU, concatenation with the
backbone feature, 3x3 fusion conv-BN-ReLU, dropout, 1x1 classifier. Deep supervision trains an FCN head on
stage 3 (``aux_heads``, never exported). The ``_v1c`` variants have mmsegmentation's ResNetV1c stem (32-32-64
where ours is 64-64-128), the only difference from its ``nonlocal_r{50,101}-d8`` networks, whose files import.

The non-local block is the paper's embedded-Gaussian instantiation:
``y_i = sum_j softmax_j(theta(x_i)^T phi(x_j) / sqrt(C')) g(x_j)``, ``z = W_z y + x``, with theta, phi, g 1x1
convs to C' = C / 2 (reduction 2) and W_z a 1x1 conv followed by BatchNorm. The 1/sqrt(C') scaling
(``use_scale``) is mmsegmentation's (mmcv NonLocal2d), not the paper's; there is no sub-sampling of phi and g.
W_z's BatchNorm scale starts at zero, as the paper initialises it, so that the block starts as the identity
(tests/helpers.py ``make_deterministic`` gives such zeros values, so the tests see the block). No
parameter count for this segmentation model is published (mmsegmentation's model zoo lists memory, speed
and mIoU only; the paper reports video and COCO models).
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones.resnet import DEPTHS
from .base import ConvNormAct
from .heads.context import (
    MMSEG_CONTEXT_HEAD_KEYS,
    MMSEG_D8_CONFIG,
    MMSEG_DILATED_RESNET_KEYS,
    ContextHead,
    dilated_resnet_model,
)
from .keymaps import KeyMap, conv_norm
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
        nn.init.zeros_(self.conv_out[1].weight)  # the block starts as the identity (the paper's BN init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        phi = self.phi(x).flatten(2)  # (B, C', HW)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        attention = torch.softmax(torch.matmul(theta, phi) * self.scale, dim=-1)  # (B, HW, HW)
        y = torch.matmul(attention, g).transpose(1, 2)  # (B, C', HW)
        y = y.reshape(x.shape[0], -1, x.shape[2], x.shape[3])  # (B, C', H, W)
        return x + self.conv_out(y)


def _nonlocal(layers: tuple[int, int, int, int], num_classes: int, head_channels: int = 512, reduction: int = 2,
              use_scale: bool = True, **backbone) -> nn.Module:
    """mmseg's NLHead: the non-local block inside the reduce / project / fuse arrangement (``ContextHead``);
    logits at stride 8."""
    def head(channels: list[int]) -> ContextHead:
        block = NonLocalBlock(head_channels, reduction, use_scale)
        return ContextHead(channels[-1], num_classes, block, head_channels)

    return dilated_resnet_model(layers, num_classes, head, head_channels // 2, **backbone)


# Numerical tests: a quarter of the widths (the bottlenecks, stem and head keep every layer they have). The
# _v1c variants differ only in their full-size stem, so at these widths nonlocal_r50_v1c is nonlocal_r50.
_NARROW = {"base_width": 16, "stem_width": 16, "head_channels": 128}

# mmsegmentation's nonlocal_r50-d8 / nonlocal_r101-d8 checkpoints (configs/_base_/models/nonlocal_r50-d8.py,
# 3f8d34e: ResNetV1c, NLHead with channels 512, reduction 2, use_scale, embedded_gaussian). NLHead (nl_head.py,
# 1cd613f) is an FCNHead with num_convs=2 and concat_input around nl_block, mmcv's NonLocal2d
# (mmcv/cnn/bricks/non_local.py, 0198abf): g, theta, phi are ConvModules without norm (a conv with bias),
# conv_out a ConvModule with the head's BN (conv without bias), sub_sample off.
MMSEG_KEYS = KeyMap("mmseg", (
    *MMSEG_DILATED_RESNET_KEYS,
    *MMSEG_CONTEXT_HEAD_KEYS,
    (r"decode_head\.nl_block\.(g|theta|phi)\.conv\.(\w+)", r"head.attention.\1.\2"),
    *conv_norm(r"decode_head\.nl_block\.conv_out", "head.attention.conv_out"),
), config=MMSEG_D8_CONFIG, note="mmsegmentation NLHead on ResNetV1c (configs/_base_/models/nonlocal_r50-d8.py)")


@register_model("nonlocal", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def nonlocal_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """Non-local network, dilated ResNet-50 (output stride 8), embedded-Gaussian non-local head."""
    return _nonlocal(DEPTHS[50], num_classes, **kwargs)


@register_model("nonlocal", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def nonlocal_r50_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """Non-local network on mmsegmentation's ResNetV1c-50 (deep stem 32-32-64): its nonlocal_r50-d8 checkpoints
    load here."""
    return _nonlocal(DEPTHS[50], num_classes, **{"stem_width": 32, **kwargs})


@register_model("nonlocal", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def nonlocal_r101_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """Non-local network on mmsegmentation's ResNetV1c-101 (deep stem 32-32-64): its nonlocal_r101-d8
    checkpoints load here."""
    return _nonlocal(DEPTHS[101], num_classes, **{"stem_width": 32, **kwargs})
