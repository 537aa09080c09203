"""EncNet (Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018,
https://arxiv.org/abs/1803.08904) on the dilated ResNet-50 with the deep stem (models/backbones/resnet.py,
output stride 8).

The **context encoding module** summarises the whole image in one vector and rescales the feature channels
by it, so that, e.g., a "bed" channel is damped in an outdoor scene:

- the **Encoding layer** (``Encoding``) learns K = 32 codewords d_k and smoothing factors s_k. Each pixel
  feature x_i is softly assigned to the codewords, a_ik = softmax_k(s_k * ||x_i - d_k||^2), and each codeword
  collects its residuals, e_k = sum_i a_ik (x_i - d_k). The factors are stored as the official code stores
  them, negative (initialised uniformly in [-1, 0); the paper writes -s_k with s_k > 0);
- BatchNorm1d over the K codes, ReLU, and the mean over the K codes: the encoded vector e (B, C);
- **channel-wise scaling**: gamma = sigmoid(W e + b), output = ReLU(x + x * gamma).

The **SE-loss** branch (a linear layer from e to the classes, trained to predict which classes are present)
regularises training only: it is the second of ``aux_heads`` (after the FCN head on stage 3), so it is never
in an exported graph and ``count_parameters`` leaves it out; ``forward(images, return_aux=True)`` returns its
(B, num_classes) logits after the FCN head's.

Structure and widths follow mmsegmentation's EncHead / EncModule (``mmseg/models/decode_heads/enc_head.py``,
``configs/_base_/models/encnet_r50-d8.py``: channels 512, num_codes 32, add_lateral off, dropout 0.1; FCN
auxiliary head on stage 3 with 256 channels), which follow the authors' PyTorch-Encoding
(``encoding/models/sseg/encnet.py``; its ``lateral`` connections are off except on PASCAL-Context and COCO).
The ``_v1c`` variants have mmsegmentation's ResNetV1c stem (32-32-64 where ours is 64-64-128), the only
difference from its ``encnet_r{50,101}-d8`` networks, whose files import (the SE layer included).

Deployment note: the official layer forms the (B, HW, K, C) tensor of all residuals x_i - d_k (2 GB in FP32
for a 1024x2048 image at stride 8 with C = 512); here the distances are ||x_i||^2 - 2 x_i . d_k + ||d_k||^2 and
the aggregation sum_i a_ik x_i - (sum_i a_ik) d_k, the same sums as matrix products and reductions over the
flattened pixels, so the graph keeps H and W dynamic and uses only MatMul, Pow, ReduceSum and Softmax.
FP16: the squares (Pow, ReduceSum) and the Softmax stay FP32 by the converter's block list, but the MatMul and
the sums between them run in FP16, and the expanded distance is a difference of large terms. The
conformance graph holds (fp16 rel-L2 5e-4 on the logits); on a 512-channel layer with codewords near the data
and sharp assignments (a trained-like regime) the encodings differed by 7e-3 rel-L2 against 8e-6 from rounding
the input alone. Keeping the whole layer in FP32 needs it as a custom op whose lowering marks its nodes
keep-float (not done yet: tests/test_custom_ops.py's single-node graphs assume image-shaped inputs, and the
codewords (K, C) and factors (K,) are not).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.resnet import DEPTHS, ResNet
from .base import ConvNormAct, SegmentationModel
from .heads.context import MMSEG_D8_CONFIG, MMSEG_DILATED_RESNET_KEYS
from .heads.fcn import FCNHead
from .keymaps import KeyMap, conv_norm
from .registry import register_model


class Encoding(nn.Module):
    """The Encoding layer: (B, C, H, W) -> residual encodings (B, K, C). Initialisation as the official code:
    codewords uniform in +-1/sqrt(K C), smoothing factors uniform in [-1, 0)."""

    def __init__(self, channels: int, num_codes: int = 32) -> None:
        super().__init__()
        std = (num_codes * channels) ** -0.5
        self.codewords = nn.Parameter(torch.empty(num_codes, channels).uniform_(-std, std))  # d_k, (K, C)
        self.scale = nn.Parameter(torch.empty(num_codes).uniform_(-1, 0))  # s_k, (K,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # (B, N, C), N = HW
        d = self.codewords
        distances = x.pow(2).sum(2, keepdim=True) - 2 * x @ d.t() + d.pow(2).sum(1)  # ||x_i - d_k||^2, (B, N, K)
        weights = F.softmax(distances * self.scale, dim=2)  # a_ik, (B, N, K)
        return weights.transpose(1, 2) @ x - weights.sum(1).unsqueeze(2) * d  # e_k, (B, K, C)


class ContextEncoding(nn.Module):
    """The context encoding module: (B, C, h, w) -> (scaled features (B, C, h, w), encoded vector (B, C))."""

    def __init__(self, channels: int, num_codes: int = 32, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.project = ConvNormAct(channels, channels, 1, norm_layer=norm_layer)
        self.encoding = nn.Sequential(Encoding(channels, num_codes), nn.BatchNorm1d(num_codes), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.encoding(self.project(x)).mean(dim=1)  # (B, K, C) -> (B, C)
        gamma = self.fc(encoded)[:, :, None, None]  # (B, C, 1, 1)
        return F.relu(x + x * gamma), encoded


class EncHead(nn.Module):
    """3x3 conv-BN-ReLU on the last stage, context encoding, dropout, 1x1 classifier: logits at stride 8."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, num_codes: int = 32,
                 dropout: float = 0.1, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.bottleneck = ConvNormAct(in_channels, channels, 3, norm_layer=norm_layer)
        self.context_encoding = ContextEncoding(channels, num_codes, norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward_with_encoding(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, num_classes, H/8, W/8), encoded vector (B, channels)) for the SE-loss."""
        x, encoded = self.context_encoding(self.bottleneck(features[-1]))  # (B, channels, H/8, W/8)
        return self.classifier(self.dropout(x)), encoded

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.forward_with_encoding(features)[0]


class EncNet(SegmentationModel):
    """Dilated ResNet + EncHead. ``aux_heads``: the FCN head on stage 3 (``aux_indices[0]``) and the SE-loss
    layer, which reads the head's encoded vector instead of a backbone feature (so it has no aux index).
    ``forward(images, return_aux=True)`` returns (logits, [FCN logits at the input size, SE logits (B, K)]).
    ``align_corners``: the upsampling's (mmseg's EncHead resizes inside only with ``add_lateral``, which its
    configs leave off: enc_head.py)."""

    def __init__(self, backbone: ResNet, num_classes: int, channels: int = 512, num_codes: int = 32,
                 align_corners: bool = False) -> None:
        head = EncHead(backbone.out_channels[-1], num_classes, channels, num_codes)
        aux = FCNHead(backbone.out_channels[2], num_classes, channels // 2)
        super().__init__(backbone, head, num_classes, aux_heads=[aux], aux_indices=[2], align_corners=align_corners)
        self.aux_heads.append(nn.Linear(channels, num_classes))  # the SE-loss layer

    def forward(self, images: torch.Tensor, return_aux: bool = False):
        if not return_aux:
            return super().forward(images)
        size = images.shape[-2:]
        features = self.backbone(images)
        logits, encoded = self.head.forward_with_encoding(features)
        fcn, se_layer = self.aux_heads
        return (self.upsample_logits(logits, size),
                [self.upsample_logits(fcn(features[self.aux_indices[0]]), size), se_layer(encoded)])


def _encnet(depth: int, num_classes: int, base_width: int = 64, stem_width: int = 64, **kwargs) -> EncNet:
    backbone = ResNet(DEPTHS[depth], output_stride=8, deep_stem=True, stem_width=stem_width, base_width=base_width)
    return EncNet(backbone, num_classes, **kwargs)


# Numerical tests: a quarter of the widths (every bottleneck, the stem and the head keep their layers; 32 codes).
# The _v1c variants differ only in their full-size stem, so at these widths encnet_r50_v1c is encnet_r50.
_NARROW = {"base_width": 16, "stem_width": 16, "channels": 128}

# mmsegmentation's encnet_r50-d8 / encnet_r101-d8 checkpoints (configs/_base_/models/encnet_r50-d8.py, 3f8d34e:
# ResNetV1c, EncHead with channels 512, num_codes 32, use_se_loss, add_lateral off). EncHead (enc_head.py,
# 28a8873): bottleneck (ConvModule 3x3 on stage 4), enc_module = EncModule: encoding_project (ConvModule 1x1),
# encoding = (Encoding: codewords (K, C), scale (K,) as ours (mmseg/models/utils/encoding.py, 3f8d34e); BN1d over
# the K codes; ReLU), fc = (Linear, Sigmoid); conv_seg; se_layer, the SE-loss Linear, our aux_heads.1.
MMSEG_KEYS = KeyMap("mmseg", (
    *MMSEG_DILATED_RESNET_KEYS,
    *conv_norm(r"decode_head\.bottleneck", "head.bottleneck"),
    *conv_norm(r"decode_head\.enc_module\.encoding_project", "head.context_encoding.project"),
    (r"decode_head\.enc_module\.(encoding\.[01]|fc\.0)\.(\w+)", r"head.context_encoding.\1.\2"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.classifier.\1"),
    (r"decode_head\.se_layer\.(\w+)", r"aux_heads.1.\1"),
), config=MMSEG_D8_CONFIG, note="mmsegmentation EncHead on ResNetV1c (configs/_base_/models/encnet_r50-d8.py)")


@register_model("encnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def encnet_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """EncNet, dilated ResNet-50 with the deep stem (output stride 8), 32 codewords."""
    return _encnet(50, num_classes, **kwargs)


@register_model("encnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def encnet_r50_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """EncNet on mmsegmentation's ResNetV1c-50 (deep stem 32-32-64): its encnet_r50-d8 checkpoints load here."""
    return _encnet(50, num_classes, **{"stem_width": 32, **kwargs})


@register_model("encnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW,
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def encnet_r101_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """EncNet on mmsegmentation's ResNetV1c-101 (deep stem 32-32-64): its encnet_r101-d8 checkpoints load
    here."""
    return _encnet(101, num_classes, **{"stem_width": 32, **kwargs})
