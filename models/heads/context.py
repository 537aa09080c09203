"""What the context-attention families (CCNet, Non-local, GCNet, DANet, PSANet, ANN, PSPNet) share, as
mmsegmentation arranges them on the dilated ResNet:

- ``ContextHead``: a 3x3 conv-BN-ReLU reduction, one context block applied ``recurrence`` times with shared
  weights (CCNet's R = 2; once for the others), a 3x3 conv-BN-ReLU, concatenation with the backbone feature,
  a 3x3 fusion conv-BN-ReLU, dropout (0.1) and a 1x1 classifier (mmseg's NLHead, GCHead and RCCAHead are this
  with their own block; its FCNHead with ``num_convs=2, concat_input=True``, the FCN of its ``fcn_r50-d8``,
  is this with no block, ``nn.Identity``).
- ``dilated_resnet_model``: the dilated ResNet with the deep stem (output stride 8), a head built on its
  last feature's width, and the FCN head on stage 3 as deep supervision (``aux_heads``, never exported), which
  is how every ``*_r50-d8`` model of these families is assembled.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..backbones.resnet import MMSEG_V1C_KEYS, BasicBlock, Bottleneck, ResNet
from ..base import ConvNormAct, SegmentationModel
from ..keymaps import conv_norm
from .fcn import FCNHead


class ContextHead(nn.Module):
    """One map (the last of a feature list) -> logits at its stride. ``block`` maps (B, channels, h, w) to
    the same shape."""

    def __init__(self, in_channels: int, num_classes: int, block: nn.Module, channels: int = 512,
                 recurrence: int = 1, dropout: float = 0.1, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.recurrence = recurrence
        self.reduce = ConvNormAct(in_channels, channels, 3, norm_layer=norm_layer)
        self.attention = block
        self.project = ConvNormAct(channels, channels, 3, norm_layer=norm_layer)
        self.fuse = ConvNormAct(in_channels + channels, channels, 3, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]  # (B, C_in, h, w)
        out = self.reduce(x)  # (B, channels, h, w)
        for _ in range(self.recurrence):
            out = self.attention(out)  # (B, channels, h, w)
        out = self.fuse(torch.cat([x, self.project(out)], dim=1))  # (B, channels, h, w)
        return self.classifier(self.dropout(out))


def dilated_resnet_model(layers: tuple[int, int, int, int], num_classes: int,
                         head: Callable[[list[int]], nn.Module], aux_channels: int = 256,
                         base_width: int = 64, stem_width: int = 64,
                         block: type[BasicBlock | Bottleneck] = Bottleneck, dilate_conv2: bool = True,
                         align_corners: bool = False) -> SegmentationModel:
    """ResNet (``layers`` of ``block``, deep stem, output stride 8) -> ``head(backbone.out_channels)``, with the
    FCN auxiliary head (``aux_channels`` wide) on stage 3. ``dilate_conv2`` as ``ResNet``'s. ``align_corners``:
    the final upsampling's (SegmentationModel); a head that resizes inside takes it from its family's builder."""
    backbone = ResNet(layers, output_stride=8, deep_stem=True, stem_width=stem_width, base_width=base_width,
                      block=block, dilate_conv2=dilate_conv2)
    aux = FCNHead(backbone.out_channels[2], num_classes, aux_channels)  # deep supervision on stage 3
    return SegmentationModel(backbone, head(backbone.out_channels), num_classes, aux_heads=[aux], aux_indices=[2],
                             align_corners=align_corners)


# mmsegmentation's *_r50-d8 / *_r101-d8 models: ResNetV1c and an auxiliary FCNHead (num_convs=1) on stage 3
# (configs/_base_/models/ccnet_r50-d8.py, pspnet_r50-d8.py; mmseg/models/decode_heads/fcn_head.py, 0b5f81f:
# convs.0 a ConvModule, conv_seg the classifier), which dilated_resnet_model builds as aux_heads.0
# (0: ConvNormAct, 1: dropout, 2: classifier). The rules the families' tables start with.
MMSEG_DILATED_RESNET_KEYS: tuple[tuple[str, str], ...] = (
    *MMSEG_V1C_KEYS,
    *conv_norm(r"auxiliary_head\.convs\.0", "aux_heads.0.0"),
    (r"auxiliary_head\.conv_seg\.(\w+)", r"aux_heads.0.2.\1"),
)

# What those *-d8 configs set and dilated_resnet_model builds, which no key or shape shows (KeyMap.config):
# ResNetV1c strides (1, 2, 1, 1) and dilations (1, 1, 2, 4), output stride 8, and the decode head's 3x3 convs
# undilated (FCNHead's dilation=1, fcn_head.py, which NLHead, GCHead and CCHead inherit; the other heads take
# none). mmseg's fcn-d6_r{50,101}-d16 files (configs/fcn/fcn-d6_r50-d16_4xb2-40k_cityscapes-512x1024.py, 3f8d34e:
# strides (1, 2, 2, 1), dilations (1, 1, 1, 2), decode_head dilation=6) and pspnet_r50-d32 files
# (configs/pspnet/pspnet_r50-d32_512x1024_80k_cityscapes.py, df47283: strides (1, 2, 2, 2)) have these families'
# keys and shapes but are other networks.
MMSEG_D8_CONFIG: dict[str, object] = {"backbone.strides": (1, 2, 1, 1), "backbone.dilations": (1, 1, 2, 4),
                                      "decode_head.dilation": 1}


# mmseg's FCNHead(num_convs=2, concat_input=True) (fcn_head.py, 0b5f81f) and the heads built on it (NLHead,
# GCHead: nl_head.py, gc_head.py, 1cd613f): convs.0 reduces, the block attends, convs.1 projects, conv_cat fuses
# cat([x, output]) in our order, conv_seg classifies; ContextHead's reduce, project, fuse and classifier.
MMSEG_CONTEXT_HEAD_KEYS: tuple[tuple[str, str], ...] = (
    *conv_norm(r"decode_head\.convs\.0", "head.reduce"),
    *conv_norm(r"decode_head\.convs\.1", "head.project"),
    *conv_norm(r"decode_head\.conv_cat", "head.fuse"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.classifier.\1"),
)
