"""BiSeNet V2: a wide, shallow Detail Branch and a narrow, deep Semantic Branch, fused by guided aggregation.

Yu, Gao, Wang, Yu, Shen, Sang. "BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time Semantic
Segmentation." IJCV 129, 3051-3068 (2021). https://arxiv.org/abs/2004.02147

The Detail Branch keeps spatial detail at stride 8; the Semantic Branch (stem block, gather-and-expand layers,
context embedding) reaches stride 32 with few channels. The Bilateral Guided Aggregation layer lets each branch
gate the other, and a light seg head classifies at stride 8. Four auxiliary seg heads ("booster" training, paper
Section 4.4) read the stem and stages S3-S5 of the Semantic Branch; they are training-only and never exported.

Where the paper's figures and the released implementations differ (an extra ReLU in the gather-and-expand
layer, BN + ReLU after the context embedding's last conv), this follows the implementations
(CoinCheung/BiSeNet, mmsegmentation), whose trained numbers match the paper.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ConvNormAct, SegmentationModel, init_conv_bn
from .registry import register_model


class DetailBranch(nn.Module):
    """Three stages of 3x3 conv-BN-ReLU (2, 3 and 3 convs), each starting with stride 2: output at stride 8."""

    def __init__(self, in_channels: int = 3, channels: tuple[int, int, int] = (64, 64, 128)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.s1 = nn.Sequential(ConvNormAct(in_channels, c1, 3, stride=2), ConvNormAct(c1, c1, 3))
        self.s2 = nn.Sequential(ConvNormAct(c1, c2, 3, stride=2), ConvNormAct(c2, c2, 3), ConvNormAct(c2, c2, 3))
        self.s3 = nn.Sequential(ConvNormAct(c2, c3, 3, stride=2), ConvNormAct(c3, c3, 3), ConvNormAct(c3, c3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s3(self.s2(self.s1(x)))  # (B, C3, H/8, W/8)


class StemBlock(nn.Module):
    """Stride-4 stem of the Semantic Branch: a conv branch and a max-pool branch, concatenated and fused."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16) -> None:
        super().__init__()
        self.conv_first = ConvNormAct(in_channels, out_channels, 3, stride=2)
        self.conv_branch = nn.Sequential(
            ConvNormAct(out_channels, out_channels // 2, 1),
            ConvNormAct(out_channels // 2, out_channels, 3, stride=2),
        )
        self.pool_branch = nn.MaxPool2d(3, stride=2, padding=1)
        self.fuse = ConvNormAct(out_channels * 2, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(x)  # (B, C, H/2, W/2)
        x = torch.cat([self.conv_branch(x), self.pool_branch(x)], dim=1)  # (B, 2C, H/4, W/4)
        return self.fuse(x)  # (B, C, H/4, W/4)


class GatherExpand(nn.Module):
    """Gather-and-Expansion layer (paper Fig. 5b, 5c).

    A 3x3 conv gathers features; a depth-wise 3x3 conv expands them ``expansion`` times (with stride 2 when
    downsampling, followed by a second depth-wise 3x3); a 1x1 conv projects back. The shortcut is the identity,
    or a depth-wise separable conv when the layer downsamples or changes width. ReLU follows the sum.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion: int = 6) -> None:
        super().__init__()
        mid = in_channels * expansion
        self.conv = ConvNormAct(in_channels, in_channels, 3)
        if stride == 1:
            self.dwconv = ConvNormAct(in_channels, mid, 3, groups=in_channels)
        else:
            self.dwconv = nn.Sequential(
                ConvNormAct(in_channels, mid, 3, stride=stride, groups=in_channels, act_layer=None),
                ConvNormAct(mid, mid, 3, groups=mid),
            )
        self.project = ConvNormAct(mid, out_channels, 1, act_layer=None)
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                ConvNormAct(in_channels, in_channels, 3, stride=stride, groups=in_channels, act_layer=None),
                ConvNormAct(in_channels, out_channels, 1, act_layer=None),
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dwconv(self.conv(x)))  # (B, C_out, H/s, W/s)
        return self.act(y + self.shortcut(x))


class ContextEmbedding(nn.Module):
    """Global average pooling -> BN -> 1x1 conv, broadcast-added to the input, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.conv_gap = ConvNormAct(channels, channels, 1)
        self.conv_last = ConvNormAct(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.conv_gap(self.norm(x.mean(dim=(2, 3), keepdim=True)))  # (B, C, 1, 1)
        return self.conv_last(x + context)  # (B, C, H, W)


class SemanticBranch(nn.Module):
    """Stem (stride 4), S3 (8), S4 (16), S5 (32) and context embedding; returns every stage's output."""

    def __init__(
        self, in_channels: int = 3, channels: tuple[int, int, int, int] = (16, 32, 64, 128), expansion: int = 6
    ) -> None:
        super().__init__()
        c_stem, c3, c4, c5 = channels
        self.stem = StemBlock(in_channels, c_stem)
        self.s3 = nn.Sequential(GatherExpand(c_stem, c3, 2, expansion), GatherExpand(c3, c3, 1, expansion))
        self.s4 = nn.Sequential(GatherExpand(c3, c4, 2, expansion), GatherExpand(c4, c4, 1, expansion))
        self.s5 = nn.Sequential(
            GatherExpand(c4, c5, 2, expansion), *(GatherExpand(c5, c5, 1, expansion) for _ in range(3))
        )
        self.context = ContextEmbedding(c5)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.stem(x)  # (B, 16, H/4, W/4)
        s3 = self.s3(stem)  # (B, 32, H/8, W/8)
        s4 = self.s4(s3)  # (B, 64, H/16, W/16)
        s5 = self.s5(s4)  # (B, 128, H/32, W/32)
        return [stem, s3, s4, s5, self.context(s5)]


class BilateralGuidedAggregation(nn.Module):
    """Each branch gates the other at its own resolution (paper Fig. 6); the two results are summed at stride 8.

    Detail at stride 8 is gated by upsampled semantic features; semantic features at stride 32 gate the
    downsampled detail, which is then upsampled and added.
    """

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.detail_keep = nn.Sequential(
            ConvNormAct(channels, channels, 3, groups=channels, act_layer=None),
            nn.Conv2d(channels, channels, 1),
        )
        self.detail_down = nn.Sequential(
            ConvNormAct(channels, channels, 3, stride=2, act_layer=None),
            nn.AvgPool2d(3, stride=2, padding=1),
        )
        self.semantic_keep = nn.Sequential(
            ConvNormAct(channels, channels, 3, groups=channels, act_layer=None),
            nn.Conv2d(channels, channels, 1),
        )
        self.semantic_up = ConvNormAct(channels, channels, 3, act_layer=None)
        self.fuse = ConvNormAct(channels, channels, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        size = detail.shape[-2:]
        semantic_up = F.interpolate(self.semantic_up(semantic), size=size, mode="bilinear", align_corners=False)
        high = self.detail_keep(detail) * torch.sigmoid(semantic_up)  # (B, C, H/8, W/8)
        low = self.detail_down(detail) * torch.sigmoid(self.semantic_keep(semantic))  # (B, C, H/32, W/32)
        low = F.interpolate(low, size=size, mode="bilinear", align_corners=False)  # (B, C, H/8, W/8)
        return self.fuse(high + low)


class BiSeNetV2Backbone(nn.Module):
    """Both branches and the aggregation layer.

    Returns ``[aggregated (stride 8), stem (4), S3 (8), S4 (16), S5 (32)]``: the first feeds the seg head,
    the others the auxiliary heads (S5 before context embedding, as in the reference implementations).
    """

    def __init__(
        self,
        in_channels: int = 3,
        detail_channels: tuple[int, int, int] = (64, 64, 128),
        semantic_channels: tuple[int, int, int, int] = (16, 32, 64, 128),
        expansion: int = 6,
    ) -> None:
        super().__init__()
        if detail_channels[-1] != semantic_channels[-1]:
            raise ValueError(
                f"the last detail and semantic widths must match for aggregation; got {detail_channels[-1]} and "
                f"{semantic_channels[-1]}"
            )
        self.detail = DetailBranch(in_channels, detail_channels)
        self.semantic = SemanticBranch(in_channels, semantic_channels, expansion)
        self.aggregation = BilateralGuidedAggregation(detail_channels[-1])
        self.out_channels = [detail_channels[-1], *semantic_channels]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem, s3, s4, s5, context = self.semantic(x)
        aggregated = self.aggregation(self.detail(x), context)  # (B, 128, H/8, W/8)
        return [aggregated, stem, s3, s4, s5]


class SegHead(nn.Sequential):
    """``num_convs`` 3x3 conv-BN-ReLU -> dropout -> 1x1 classifier, on one feature map at its own stride."""

    def __init__(
        self, in_channels: int, mid_channels: int, num_classes: int, num_convs: int = 1, dropout: float = 0.1
    ) -> None:
        convs = [ConvNormAct(in_channels if i == 0 else mid_channels, mid_channels, 3) for i in range(num_convs)]
        super().__init__(*convs, nn.Dropout2d(dropout), nn.Conv2d(mid_channels, num_classes, 1))


class BiSeNetV2Head(nn.Module):
    """The seg head on the aggregated features (``features[0]``); logits at stride 8."""

    output_stride = 8

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.seg = SegHead(in_channels, mid_channels, num_classes, num_convs=1, dropout=dropout)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.seg(features[0])  # (B, num_classes, H/8, W/8)


class BiSeNetV2(SegmentationModel):
    """Detail + Semantic branches, guided aggregation, seg head; booster heads for training only."""

    def __init__(
        self,
        num_classes: int = 19,
        detail_channels: tuple[int, int, int] = (64, 64, 128),
        semantic_channels: tuple[int, int, int, int] = (16, 32, 64, 128),
        expansion: int = 6,
        head_channels: int = 1024,
        aux_head_channels: tuple[int, int, int, int] = (16, 64, 256, 1024),
        dropout: float = 0.1,
        in_channels: int = 3,
    ) -> None:
        backbone = BiSeNetV2Backbone(in_channels, detail_channels, semantic_channels, expansion)
        head = BiSeNetV2Head(backbone.out_channels[0], head_channels, num_classes, dropout)
        # Booster heads: two convs each, widths as in the mmsegmentation Cityscapes config.
        aux_heads = [
            SegHead(c, mid, num_classes, num_convs=2, dropout=dropout)
            for c, mid in zip(semantic_channels, aux_head_channels)
        ]
        super().__init__(backbone, head, num_classes, aux_heads, aux_indices=[1, 2, 3, 4])
        self.apply(init_conv_bn)


@register_model("bisenetv2", size_divisor=32, output_stride=8)
def bisenetv2(num_classes: int = 19, **kwargs) -> nn.Module:
    """BiSeNet V2 (paper Table 1 widths: detail 64-64-128, semantic 16-32-64-128, expansion 6)."""
    args = dict(detail_channels=(64, 64, 128), semantic_channels=(16, 32, 64, 128), expansion=6, head_channels=1024)
    return BiSeNetV2(num_classes, **{**args, **kwargs})
