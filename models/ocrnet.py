"""OCRNet (Yuan, Chen, Wang, "Object-Contextual Representations for Semantic Segmentation", ECCV 2020,
https://arxiv.org/abs/1909.11065) on HRNetV2 (models/backbones/hrnet.py).

A pixel is described by the object it belongs to. On HRNetV2's concatenated stride-4 representation
(``concat_branches``: 720 channels for W48, 270 for W18):

1. **Soft object regions**: a coarse segmentation, one map per class (``SoftObjectRegions``: 1x1 conv-BN-ReLU
   and a 1x1 classifier). In training it is supervised as well (the official loss weights 0.4 / 1), but it is
   not a training-only head: step 2 reads it, so it is part of the deployed graph, and
   ``forward(images, return_aux=True)`` returns its logits for the auxiliary loss.
2. **Object region representations** (``object_region_representations``): each region's spatial softmax
   weights the pixel representation (the 3x3 conv-BN-ReLU to 512 channels of the input) into one descriptor
   per class, f_k = sum_i softmax_i(m_ki) x_i.
3. **Object-contextual representations** (``ObjectContextualAttention``): each pixel attends over the K
   descriptors: w_ik = softmax_k(phi(x_i) . psi(f_k) / sqrt(key_channels)), with phi, psi two 1x1
   conv-BN-ReLU each (key channels 256), y_i = rho(sum_k w_ik delta(f_k)) with delta, rho one 1x1
   conv-BN-ReLU each.
4. **Augmented representation**: [y_i, x_i] -> 1x1 conv-BN-ReLU (512), dropout, 1x1 classifier: the logits at
   stride 4.

Structure and widths follow the official HRNet-OCR code (HRNet/HRNet-Semantic-Segmentation, branch HRNet-OCR,
``lib/models/seg_hrnet_ocr.py``; ``lib/config/default.py``: OCR.MID_CHANNELS 512, OCR.KEY_CHANNELS 256,
OCR.DROPOUT 0.05), including its biases: the soft-region head's first 1x1 conv keeps the concatenation's width
(720 for W48) and has a bias, as does the 3x3 conv to 512 channels (``conv3x3_ocr``); the transforms of the
attention block have none. mmsegmentation's OCRHead computes the same and differs only in those two biases:
the ``_mmseg`` variants leave them out (``conv_bias=False``) and load mmseg's zoo files (``MMSEG_KEYS``).
Module names map onto the official ones: ``soft_regions`` = ``aux_head``, ``pixel_representation`` =
``conv3x3_ocr``, ``attention.{query,key,value,out}`` = ``ocr_distri_head.object_context_block.{f_pixel,
f_object,f_down,f_up}``, ``fuse`` = ``ocr_distri_head.conv_bn_dropout``, ``classifier`` = ``cls_head``.

The object side works on (B, C, K) tensors with 1-d convolutions and BatchNorm1d where the official code
applies 2-d ones to a (B, C, K, 1) map: the same arithmetic (an official kernel (O, I, 1, 1) loads as
(O, I, 1)), and no K x 1 "image" that is not a downsampled input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.hrnet import (
    MMSEG_HRNET_KEYS,
    HRNet,
    concat_branches,
    hrnetv2_w18,
    hrnetv2_w18_small_v2,
    hrnetv2_w48,
)
from .base import ConvNormAct, SegmentationModel
from .keymaps import KeyMap, conv_norm
from .registry import register_model


class ConvNormAct1d(nn.Sequential):
    """1x1 Conv1d (no bias) -> BatchNorm1d -> ReLU on (B, C, K): the object-side transforms."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv1d(in_channels, out_channels, 1, bias=False), nn.BatchNorm1d(out_channels),
                         nn.ReLU(inplace=True))


class SoftObjectRegions(nn.Sequential):
    """The soft object regions (official ``aux_head``): 1x1 conv (with bias; mmseg's without) -> BN -> ReLU at the
    input's width, then a 1x1 classifier: (B, C, h, w) -> (B, num_classes, h, w)."""

    def __init__(self, in_channels: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(nn.Conv2d(in_channels, in_channels, 1, bias=bias), nn.BatchNorm2d(in_channels),
                         nn.ReLU(inplace=True), nn.Conv2d(in_channels, num_classes, 1))


def object_region_representations(pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """f_k = sum_i softmax over pixels i of m_ki, times x_i: one descriptor per region.

    pixels (B, C, h, w), regions (B, K, h, w) -> (B, C, K)."""
    weights = F.softmax(regions.flatten(2), dim=2)  # (B, K, hw), each row sums to 1 over the pixels
    return torch.bmm(pixels.flatten(2), weights.transpose(1, 2))  # (B, C, hw) @ (B, hw, K) -> (B, C, K)


class ObjectContextualAttention(nn.Module):
    """Pixels (queries) attend over object descriptors (keys, values) and return their object context:
    (B, C, h, w), (B, C, K) -> (B, C, h, w). Official ``_ObjectAttentionBlock`` at scale 1."""

    def __init__(self, channels: int, key_channels: int, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.query = nn.Sequential(ConvNormAct(channels, key_channels, 1, norm_layer=norm_layer),
                                   ConvNormAct(key_channels, key_channels, 1, norm_layer=norm_layer))
        self.key = nn.Sequential(ConvNormAct1d(channels, key_channels), ConvNormAct1d(key_channels, key_channels))
        self.value = ConvNormAct1d(channels, key_channels)
        self.out = ConvNormAct(key_channels, channels, 1, norm_layer=norm_layer)

    def forward(self, pixels: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        q = self.query(pixels)  # (B, Ck, h, w)
        k = self.key(objects)  # (B, Ck, K)
        v = self.value(objects)  # (B, Ck, K)
        sim = torch.bmm(q.flatten(2).transpose(1, 2), k) * self.key_channels**-0.5  # (B, hw, K)
        weights = F.softmax(sim, dim=2)  # over the K objects
        context = torch.bmm(v, weights.transpose(1, 2))  # (B, Ck, K) @ (B, K, hw) -> (B, Ck, hw)
        return self.out(context.reshape(q.shape))  # (B, C, h, w)


class OCRHead(nn.Module):
    """HRNetV2 branches -> concatenation -> soft regions and pixel representation -> object regions ->
    object-contextual attention -> fuse -> logits at stride 4. ``conv_bias``: the official code's biases on the
    soft regions' first conv and the pixel representation's conv (mmseg's ConvModules have none)."""

    def __init__(self, in_channels: int, num_classes: int, mid_channels: int = 512, key_channels: int = 256,
                 dropout: float = 0.05, norm_layer: type[nn.Module] = nn.BatchNorm2d, conv_bias: bool = True) -> None:
        super().__init__()
        self.soft_regions = SoftObjectRegions(in_channels, num_classes, conv_bias)
        self.pixel_representation = nn.Sequential(  # official conv3x3_ocr: a 3x3 conv with bias
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=conv_bias), norm_layer(mid_channels),
            nn.ReLU(inplace=True))
        self.attention = ObjectContextualAttention(mid_channels, key_channels, norm_layer)
        self.fuse = ConvNormAct(2 * mid_channels, mid_channels, 1, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)

    def forward_with_regions(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(refined logits, soft-region logits), both (B, num_classes, H/4, W/4)."""
        x = concat_branches(features)  # (B, sum of branch widths, H/4, W/4)
        regions = self.soft_regions(x)  # (B, K, H/4, W/4)
        pixels = self.pixel_representation(x)  # (B, mid, H/4, W/4)
        objects = object_region_representations(pixels, regions)  # (B, mid, K)
        context = self.attention(pixels, objects)  # (B, mid, H/4, W/4)
        out = self.fuse(torch.cat([context, pixels], dim=1))  # context first, as the official code
        return self.classifier(self.dropout(out)), regions

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.forward_with_regions(features)[0]


class OCRNet(SegmentationModel):
    """HRNetV2 + OCR head. ``forward(images)`` returns the refined logits only; ``forward(images,
    return_aux=True)`` also the soft-region logits (upsampled to the input size), for the auxiliary loss.
    The soft-region head is deployed (the refinement reads it), so it is in ``head``, not ``aux_heads``."""

    def __init__(self, backbone: HRNet, num_classes: int, mid_channels: int = 512, key_channels: int = 256,
                 conv_bias: bool = True) -> None:
        head = OCRHead(sum(backbone.out_channels), num_classes, mid_channels, key_channels, conv_bias=conv_bias)
        super().__init__(backbone, head, num_classes)

    def forward(self, images: torch.Tensor, return_aux: bool = False):
        if not return_aux:
            return super().forward(images)
        size = images.shape[-2:]
        logits, regions = self.head.forward_with_regions(self.backbone(images))
        upsample = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        return upsample(logits), [upsample(regions)]


# Numerical tests: HRNet at widths 4-32 with every block kind (tests/test_backbone_hrnet.py's TINY), OCR widths
# 32 / 16.
_NARROW = {"width": 4, "depths": (1, 1, 1, 1), "num_modules": (1, 2, 1), "stem_width": 8, "stage1_width": 4,
           "mid_channels": 32, "key_channels": 16}


# mmsegmentation's ocrnet_hr18 / hr48 / hr18s checkpoints (configs/_base_/models/ocrnet_hr18.py, 57ac1a0;
# configs/ocrnet/ocrnet_hr48_4xb2-80k_cityscapes-512x1024.py and ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py,
# 3f8d34e): a CascadeEncoderDecoder whose decode_head.0 is an FCNHead on the resize-concatenated branches (1x1
# ConvModule keeping the width, conv_seg) = our soft regions, and decode_head.1 the OCRHead (decode_heads/
# ocr_head.py, 168c883; channels 512, ocr_channels 256, dropout_ratio -1): bottleneck (3x3 ConvModule) = our pixel
# representation; object_context_block, a SelfAttentionBlock (models/utils/self_attention_block.py, 50546da) with
# query_project and key_project two 1x1 ConvModules each, value_project and out_project one, then its own
# bottleneck (1x1 on cat([context, pixels])) = our fuse; conv_seg. Its key side runs 2-d convs on a (B, C, K, 1)
# map: their (O, I, 1, 1) kernels load into our Conv1d's (O, I, 1) (reshaped). Every variant has the table: the
# zoo's files fit the _mmseg ones (no bias on those two convs); ocrnet_hrnetv2_w18 / w48 fail naming the biases.
MMSEG_KEYS = KeyMap("mmseg", (
    *MMSEG_HRNET_KEYS,
    *conv_norm(r"decode_head\.0\.convs\.0", "head.soft_regions"),
    (r"decode_head\.0\.conv_seg\.(\w+)", r"head.soft_regions.3.\1"),
    (r"decode_head\.1\.bottleneck\.conv\.(\w+)", r"head.pixel_representation.0.\1"),
    (r"decode_head\.1\.bottleneck\.bn\.(\w+)", r"head.pixel_representation.1.\1"),
    *conv_norm(r"decode_head\.1\.object_context_block\.(query|key)_project\.(\d)", r"head.attention.\1.\2"),
    *conv_norm(r"decode_head\.1\.object_context_block\.value_project", "head.attention.value"),
    *conv_norm(r"decode_head\.1\.object_context_block\.out_project", "head.attention.out"),
    *conv_norm(r"decode_head\.1\.object_context_block\.bottleneck", "head.fuse"),
    (r"decode_head\.1\.conv_seg\.(\w+)", r"head.classifier.\1"),
), note="mmsegmentation OCRHead cascade on HRNetV2 (configs/_base_/models/ocrnet_hr18.py)")


@register_model("ocrnet", size_divisor=32, output_stride=4, test_kwargs=_NARROW, checkpoints=(MMSEG_KEYS,))
def ocrnet_hrnetv2_w18(num_classes: int = 19, mid_channels: int = 512, key_channels: int = 256,
                       **backbone) -> nn.Module:
    """OCRNet on HRNetV2-W18 (OCR widths 512 / 256, as mmsegmentation's ocrnet_hr18)."""
    return OCRNet(hrnetv2_w18(**backbone), num_classes, mid_channels, key_channels)


@register_model("ocrnet", size_divisor=32, output_stride=4, test_kwargs=_NARROW, checkpoints=(MMSEG_KEYS,))
def ocrnet_hrnetv2_w48(num_classes: int = 19, mid_channels: int = 512, key_channels: int = 256,
                       **backbone) -> nn.Module:
    """OCRNet on HRNetV2-W48, the official HRNet + OCR configuration."""
    return OCRNet(hrnetv2_w48(**backbone), num_classes, mid_channels, key_channels)


@register_model("ocrnet", size_divisor=32, output_stride=4, test_kwargs=_NARROW, checkpoints=(MMSEG_KEYS,))
def ocrnet_hrnetv2_w18_mmseg(num_classes: int = 19, mid_channels: int = 512, key_channels: int = 256,
                             **backbone) -> nn.Module:
    """OCRNet on HRNetV2-W18 as mmsegmentation builds it (no bias on the soft regions' and pixel
    representation's convs): its ocrnet_hr18 checkpoints load here."""
    return OCRNet(hrnetv2_w18(**backbone), num_classes, mid_channels, key_channels, conv_bias=False)


@register_model("ocrnet", size_divisor=32, output_stride=4, test_kwargs=_NARROW, checkpoints=(MMSEG_KEYS,))
def ocrnet_hrnetv2_w48_mmseg(num_classes: int = 19, mid_channels: int = 512, key_channels: int = 256,
                             **backbone) -> nn.Module:
    """OCRNet on HRNetV2-W48 as mmsegmentation builds it: its ocrnet_hr48 checkpoints load here."""
    return OCRNet(hrnetv2_w48(**backbone), num_classes, mid_channels, key_channels, conv_bias=False)


@register_model("ocrnet", size_divisor=32, output_stride=4, test_kwargs=_NARROW, checkpoints=(MMSEG_KEYS,))
def ocrnet_hrnetv2_w18_small_v2_mmseg(num_classes: int = 19, mid_channels: int = 512, key_channels: int = 256,
                                      **backbone) -> nn.Module:
    """OCRNet on HRNetV2-W18-Small-v2 as mmsegmentation builds it: its ocrnet_hr18s checkpoints load here."""
    return OCRNet(hrnetv2_w18_small_v2(**backbone), num_classes, mid_channels, key_channels, conv_bias=False)
