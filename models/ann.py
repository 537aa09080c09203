"""ANN (Zhu, Xu, Bai, Huang & Bai, "Asymmetric Non-local Neural Networks for Semantic Segmentation", ICCV
2019, https://arxiv.org/abs/1908.07678) on the shared dilated ResNet-50 with the deep stem (output stride 8),
in mmsegmentation's ANNHead arrangement:

- AFNB (asymmetric fusion non-local block): queries from stage 4 (2048 channels), keys and values from
  stage 3 (1024), both at stride 8; the attended stage-3 context, concatenated with stage 4, is fused by a
  1x1 conv-BN back to 2048 channels;
- dropout, 3x3 conv-BN-ReLU to 512 channels;
- APNB (asymmetric pyramid non-local block): self-attention on that map; the concatenation of context and
  input fused by a 1x1 conv-BN-ReLU;
- dropout, 1x1 classifier. Deep supervision trains an FCN head on stage 3 (``aux_heads``, never exported).

The ``_v1c`` variants have mmsegmentation's ResNetV1c stem (32-32-64 where ours is 64-64-128), the only
difference from its ``ann_r{50,101}-d8`` networks, whose files import.

In both blocks the keys and values are not all HW positions but the pyramid sampling of the paper: each
projected map average-pooled to 1x1, 3x3, 6x6 and 8x8 bins and concatenated to S = 110 representatives, so
attention is (HW x S) instead of (HW x HW). Query and key projections are 1x1 conv-BN-ReLU to 256 channels,
the value a 1x1 conv to 256 and the output a 1x1 conv back; the logits are scaled by 1/sqrt(256).

The pooling goes through ``adaptive_avg_pool`` (models/heads/psp.py, the custom op ``seg::adaptive_avg_pool``)
so that one graph serves every input size: ONNX's AveragePool would bake the traced size's windows in.

Deviations (mmsegmentation, followed here, against the paper): in APNB the query and key share one
projection, where the paper (Fig. 3 caption) shares the key and value projection and sampling; the output
projection starts at zero, as mmsegmentation initialises it, so that each block starts as a plain fusion. No parameter count for this model is published (mmsegmentation's model zoo
lists memory, speed and mIoU only).
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones.resnet import DEPTHS
from .base import ConvNormAct
from .heads.context import MMSEG_D8_CONFIG, MMSEG_DILATED_RESNET_KEYS, dilated_resnet_model
from .heads.psp import adaptive_avg_pool
from .keymaps import KeyMap, conv_norm
from .registry import register_model

BINS = (1, 3, 6, 8)  # 1 + 9 + 36 + 64 = 110 sampled keys


class PyramidSampling(nn.Module):
    """(B, C, H, W) -> (B, C, S): the averages of bins x bins windows for every bin size, concatenated."""

    def __init__(self, bins: tuple[int, ...] = BINS) -> None:
        super().__init__()
        self.bins = tuple(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([adaptive_avg_pool(x, b).flatten(2) for b in self.bins], dim=2)  # (B, C, S)


class AsymmetricAttention(nn.Module):
    """Attention of every query position over the S pyramid-sampled key/value positions.

    ``share_query_key`` uses one projection for both (APNB, as mmsegmentation; the inputs must then have the
    same channels)."""

    def __init__(self, query_channels: int, key_channels: int, channels: int, out_channels: int,
                 share_query_key: bool = False, bins: tuple[int, ...] = BINS,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.key = ConvNormAct(key_channels, channels, 1, norm_layer=norm_layer)
        self.query = self.key if share_query_key else ConvNormAct(query_channels, channels, 1, norm_layer=norm_layer)
        self.value = nn.Conv2d(key_channels, channels, 1)
        self.out = nn.Conv2d(channels, out_channels, 1)
        nn.init.zeros_(self.out.weight)  # each block starts as a plain fusion (mmsegmentation's init)
        nn.init.zeros_(self.out.bias)
        self.sample = PyramidSampling(bins)
        self.scale = channels**-0.5

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        b, _, h, w = query_feats.shape
        q = self.query(query_feats).flatten(2).transpose(1, 2)  # (B, HW, C')
        k = self.sample(self.key(key_feats))  # (B, C', S)
        v = self.sample(self.value(key_feats)).transpose(1, 2)  # (B, S, C')
        attention = torch.softmax(torch.matmul(q, k) * self.scale, dim=-1)  # (B, HW, S)
        context = torch.matmul(attention, v).transpose(1, 2).reshape(b, -1, h, w)  # (B, C', H, W)
        return self.out(context)  # (B, out_channels, H, W)


class AFNB(nn.Module):
    """Asymmetric fusion non-local block: high-level queries attend to sampled low-level keys/values."""

    def __init__(self, low_channels: int, high_channels: int, channels: int, bins: tuple[int, ...] = BINS,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.attention = AsymmetricAttention(high_channels, low_channels, channels, high_channels, False, bins,
                                             norm_layer)
        self.fuse = ConvNormAct(2 * high_channels, high_channels, 1, norm_layer=norm_layer, act_layer=None)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        context = self.attention(high, low)  # (B, C_high, H, W)
        return self.fuse(torch.cat([context, high], dim=1))  # (B, C_high, H, W)


class APNB(nn.Module):
    """Asymmetric pyramid non-local block: self-attention over pyramid-sampled keys/values."""

    def __init__(self, in_channels: int, channels: int, bins: tuple[int, ...] = BINS,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.attention = AsymmetricAttention(in_channels, in_channels, channels, in_channels, True, bins, norm_layer)
        self.fuse = ConvNormAct(2 * in_channels, in_channels, 1, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.attention(x, x)  # (B, C, H, W)
        return self.fuse(torch.cat([context, x], dim=1))  # (B, C, H, W)


class ANNHead(nn.Module):
    """AFNB on stages 3 and 4 -> 3x3 reduction -> APNB -> classify; logits at stride 8."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, channels: int = 512,
                 project_channels: int = 256, bins: tuple[int, ...] = BINS, dropout: float = 0.1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.fusion = AFNB(low_channels, high_channels, project_channels, bins, norm_layer)
        self.reduce = ConvNormAct(high_channels, channels, 3, norm_layer=norm_layer)
        self.context = APNB(channels, project_channels, bins, norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low, high = features[2], features[3]  # (B, C3, H/8, W/8), (B, C4, H/8, W/8)
        out = self.reduce(self.dropout(self.fusion(low, high)))  # (B, channels, H/8, W/8)
        out = self.context(out)  # (B, channels, H/8, W/8)
        return self.classifier(self.dropout(out))


def _ann(layers: tuple[int, int, int, int], num_classes: int, head_channels: int = 512, **backbone) -> nn.Module:
    def head(channels: list[int]) -> ANNHead:  # AFNB reads stages 3 and 4
        return ANNHead(channels[2], channels[3], num_classes, head_channels, project_channels=head_channels // 2)

    return dilated_resnet_model(layers, num_classes, head, head_channels // 2, **backbone)


# Numerical tests: a quarter of the widths (the bottlenecks, stem and head keep every layer they have). The
# _v1c variants differ only in their full-size stem, so at these widths ann_r50_v1c is ann_r50.
_NARROW = {"base_width": 16, "stem_width": 16, "head_channels": 128}

# mmsegmentation's ann_r50-d8 / ann_r101-d8 checkpoints (configs/_base_/models/ann_r50-d8.py, 3f8d34e: ResNetV1c,
# ANNHead on stages 3 and 4 with channels 512, project_channels 256, query_scales (1,), key_pool_scales
# (1, 3, 6, 8)). ANNHead (ann_head.py, 034a5c8): fusion (AFNB) and context (APNB) each hold stages.0, one
# SelfAttentionBlock (query_scales has one scale), whose key_project and query_project are ConvModules
# (key_query_norm) and value_project and out_project plain convs; their bottleneck ConvModules are our fuse;
# ANNHead's bottleneck (3x3) our reduce. APNB shares key_project and query_project (one module, so the file
# holds its tensors under both names, as our state dict does).
MMSEG_KEYS = KeyMap("mmseg", (
    *MMSEG_DILATED_RESNET_KEYS,
    *conv_norm(r"decode_head\.(fusion|context)\.stages\.0\.(query|key)_project", r"head.\1.attention.\2"),
    (r"decode_head\.(fusion|context)\.stages\.0\.(value|out)_project\.(\w+)", r"head.\1.attention.\2.\3"),
    *conv_norm(r"decode_head\.(fusion|context)\.bottleneck", r"head.\1.fuse"),
    *conv_norm(r"decode_head\.bottleneck", "head.reduce"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.classifier.\1"),
), config=MMSEG_D8_CONFIG, note="mmsegmentation ANNHead on ResNetV1c (configs/_base_/models/ann_r50-d8.py)")


@register_model("ann", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("adaptive_avg_pool",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def ann_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """ANN, dilated ResNet-50 (output stride 8), AFNB on stages 3-4 and APNB, pyramid-sampled keys (S = 110)."""
    return _ann(DEPTHS[50], num_classes, **kwargs)


@register_model("ann", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("adaptive_avg_pool",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def ann_r50_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """ANN on mmsegmentation's ResNetV1c-50 (deep stem 32-32-64): its ann_r50-d8 checkpoints load here."""
    return _ann(DEPTHS[50], num_classes, **{"stem_width": 32, **kwargs})


@register_model("ann", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("adaptive_avg_pool",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def ann_r101_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """ANN on mmsegmentation's ResNetV1c-101 (deep stem 32-32-64): its ann_r101-d8 checkpoints load here."""
    return _ann(DEPTHS[101], num_classes, **{"stem_width": 32, **kwargs})
