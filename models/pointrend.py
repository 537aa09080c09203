"""PointRend for semantic segmentation (Kirillov, Wu, He, Girshick, "PointRend: Image Segmentation as Rendering",
CVPR 2020, https://arxiv.org/abs/1912.08193), as mmsegmentation's configs/point_rend (pointrend_r50_512x1024):

- backbone: ResNet-50 (or -101: configs/point_rend/pointrend_r101_*.py change ``depth`` only) with the deep stem
  (ResNetV1c), output stride 32 (no dilation);
- neck and coarse head: semantic FPN (256-channel pyramid, FPNHead with 128-channel scale heads), logits at
  stride 4 (models/heads/semantic_fpn.py);
- point head: a shared MLP over points (three 1x1 Conv1d + ReLU, 256 channels, then a 1x1 classifier) on
  [fine-grained features bilinearly sampled from the pyramid's stride-4 level, coarse logits sampled at the
  same point], the coarse logits concatenated again before every layer (``coarse_pred_each_layer``);
- inference by adaptive subdivision (mmseg's test_cfg: 2 steps, 8196 points, scale 2): each step upsamples
  the current logits x2 (bilinear), selects the N most uncertain positions (uncertainty -(top1 - top2)),
  runs the point head there and writes its predictions back. Two steps take the stride-4 logits to stride 1.

The point selection and write-back are the custom ops of models/ops/uncertain_points.py: a top-8196 that
TensorRT's TopK (K < 3840) cannot take in one call, lowered to an exact selection of the same set.
Training (random and importance sampling of points, a loss on the points) is not part of this network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.resnet import DEPTHS, MMSEG_V1C_KEYS, ResNet
from .base import SegmentationModel
from .heads.semantic_fpn import FPN, FPNHead
from .keymaps import KeyMap, conv_norm
from .ops.uncertain_points import uncertain_point_sample, uncertain_point_scatter
from .registry import register_model


class PointHead(nn.Module):
    """Point features (B, F, N) and coarse logits at the points (B, K, N) -> point logits (B, K, N).

    Conv1d layers with bias and no normalisation, as mmseg's PointHead (``norm_cfg=None``); the classifier is
    initialised N(0, 0.01), the convs Kaiming (fan-out), mmseg's initialisation."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_fcs: int = 3,
                 coarse_pred_each_layer: bool = True) -> None:
        super().__init__()
        self.coarse_pred_each_layer = coarse_pred_each_layer
        self.fcs = nn.ModuleList()
        c = in_channels + num_classes
        for _ in range(num_fcs):
            self.fcs.append(nn.Sequential(nn.Conv1d(c, channels, 1), nn.ReLU()))
            c = channels + (num_classes if coarse_pred_each_layer else 0)
        self.classifier = nn.Conv1d(c, num_classes, 1)
        for fc in self.fcs:
            nn.init.kaiming_normal_(fc[0].weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(fc[0].bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        x = torch.cat([fine, coarse], dim=1)  # (B, F + K, N)
        for fc in self.fcs:
            x = fc(x)  # (B, channels, N)
            if self.coarse_pred_each_layer:
                x = torch.cat([x, coarse], dim=1)
        return self.classifier(x)  # (B, K, N)


class PointRendHead(nn.Module):
    """Backbone features -> FPN -> coarse FPNHead logits at stride 4 -> ``subdivision_steps`` steps of
    adaptive subdivision, each doubling the resolution: logits at stride 4 / scale_factor ** steps."""

    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, fpn_channels: int = 256,
                 coarse_channels: int = 128, point_channels: int = 256, num_fcs: int = 3,
                 subdivision_steps: int = 2, subdivision_num_points: int = 8196, scale_factor: int = 2) -> None:
        super().__init__()
        self.neck = FPN(in_channels, fpn_channels)
        self.coarse_head = FPNHead(self.neck.out_channels, strides, num_classes, coarse_channels)
        self.point_head = PointHead(fpn_channels, num_classes, point_channels, num_fcs)
        self.subdivision_steps = subdivision_steps
        self.subdivision_num_points = subdivision_num_points
        self.scale_factor = scale_factor

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        pyramid = self.neck(features)
        coarse = self.coarse_head(pyramid)  # (B, K, H/4, W/4)
        fine = pyramid[0]  # (B, F, H/4, W/4)
        # One sampling serves both inputs of the point head: fine features and coarse logits share the map size.
        sources = torch.cat([fine, coarse], dim=1)  # (B, F + K, H/4, W/4)
        n = self.subdivision_num_points
        refined = coarse
        for _ in range(self.subdivision_steps):
            refined = F.interpolate(refined, scale_factor=self.scale_factor, mode="bilinear",
                                    align_corners=False)  # (B, K, h, w), h = 2 h_prev
            points = uncertain_point_sample(refined, sources, n).flatten(2)  # (B, F + K, N)
            fine_at, coarse_at = points.split([fine.shape[1], coarse.shape[1]], dim=1)
            point_logits = self.point_head(fine_at, coarse_at)  # (B, K, N)
            refined = uncertain_point_scatter(refined, point_logits.unsqueeze(2), n)  # (B, K, h, w)
        return refined


def _pointrend(layers: tuple[int, int, int, int], num_classes: int, base_width: int = 64, stem_width: int = 64,
               **head_kwargs) -> SegmentationModel:
    backbone = ResNet(layers, output_stride=32, deep_stem=True, stem_width=stem_width, base_width=base_width)
    head = PointRendHead(backbone.out_channels, backbone.strides, num_classes, **head_kwargs)
    return SegmentationModel(backbone, head, num_classes)


# Numerical tests: a quarter of the widths, every layer kept; the point count stays mmseg's 8196, which at
# the conformance sizes (at most 64 x 96 = 6144 positions) selects every position, so the discrete choice
# cannot flip between precisions. The selection below H*W is tested in tests/test_model_pointrend.py.
_NARROW = {"base_width": 16, "stem_width": 16, "fpn_channels": 64, "coarse_channels": 32, "point_channels": 64}


# mmsegmentation's pointrend_r50 / r101 checkpoints (configs/_base_/models/pointrend_r50.py: ResNetV1c, whose
# default stem is 32-32-64, FPN neck, a CascadeEncoderDecoder of FPNHead and PointHead). Names: neck.lateral_convs.{i}
# and neck.fpn_convs.{i} are ConvModules without norm (conv with bias); decode_head.0.scale_heads.{i}.{k} ConvModules
# at the same Sequential indices as ours (the Upsamples between them hold no tensor), conv_seg; decode_head.1 the
# PointHead (decode_heads/point_head.py, 11deec3): fcs.{i} Conv1d ConvModules without norm, fc_seg. Every variant
# has the table: the zoo's R-50 files fit pointrend_r50_v1c, its R-101 files (pointrend_r101_4xb2-80k_cityscapes-
# 512x1024.py, pointrend_r101_4xb4-160k_ade20k-512x512.py: backbone depth=101, nothing else changed)
# pointrend_r101_v1c; pointrend_r50 (64-64-128) fails naming the stem's shapes.
MMSEG_KEYS = KeyMap("mmseg", (
    *MMSEG_V1C_KEYS,
    (r"neck\.(lateral|fpn)_convs\.(\d)\.conv\.(\w+)", r"head.neck.\1_convs.\2.\3"),
    *conv_norm(r"decode_head\.0\.scale_heads\.(\d)\.(\d)", r"head.coarse_head.scale_heads.\1.\2"),
    (r"decode_head\.0\.conv_seg\.(\w+)", r"head.coarse_head.classifier.\1"),
    (r"decode_head\.1\.fcs\.(\d)\.conv\.(\w+)", r"head.point_head.fcs.\1.0.\2"),
    (r"decode_head\.1\.fc_seg\.(\w+)", r"head.point_head.classifier.\1"),
), note="mmsegmentation PointRend on ResNetV1c-50/101 + FPN (configs/_base_/models/pointrend_r50.py)")
_NARROW_V1C = {**_NARROW, "stem_width": 8}  # the stem half the base width, as V1c


@register_model("pointrend", size_divisor=32, output_stride=1, test_kwargs=_NARROW,
                custom_ops=("uncertain_point_sample", "uncertain_point_scatter"), checkpoints=(MMSEG_KEYS,))
def pointrend_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """PointRend, ResNet-50 (V1c, output stride 32) + semantic FPN, 2 subdivision steps of 8196 points."""
    return _pointrend(DEPTHS[50], num_classes, **kwargs)


@register_model("pointrend", size_divisor=32, output_stride=1, test_kwargs=_NARROW_V1C,
                custom_ops=("uncertain_point_sample", "uncertain_point_scatter"), checkpoints=(MMSEG_KEYS,))
def pointrend_r50_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """PointRend on mmsegmentation's ResNetV1c-50 (deep stem 32-32-64): its pointrend_r50 checkpoints load here."""
    return _pointrend(DEPTHS[50], num_classes, **{"stem_width": 32, **kwargs})


@register_model("pointrend", size_divisor=32, output_stride=1, test_kwargs=_NARROW_V1C,
                custom_ops=("uncertain_point_sample", "uncertain_point_scatter"), checkpoints=(MMSEG_KEYS,))
def pointrend_r101_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """PointRend on mmsegmentation's ResNetV1c-101 (deep stem 32-32-64): its pointrend_r101 checkpoints load here."""
    return _pointrend(DEPTHS[101], num_classes, **{"stem_width": 32, **kwargs})
