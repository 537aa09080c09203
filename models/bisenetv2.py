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
from .keymaps import KeyMap, conv_norm
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
    downsampled detail, which is then upsampled and added. ``upsample`` is the interpolation mode of both
    upsamplings and ``bias`` whether the two 1x1 convs have one: the implementations differ there
    (mmsegmentation: bilinear, with bias; CoinCheung/BiSeNet: nearest, without).
    """

    def __init__(self, channels: int = 128, upsample: str = "bilinear", bias: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.detail_keep = nn.Sequential(
            ConvNormAct(channels, channels, 3, groups=channels, act_layer=None),
            nn.Conv2d(channels, channels, 1, bias=bias),
        )
        self.detail_down = nn.Sequential(
            ConvNormAct(channels, channels, 3, stride=2, act_layer=None),
            nn.AvgPool2d(3, stride=2, padding=1),
        )
        self.semantic_keep = nn.Sequential(
            ConvNormAct(channels, channels, 3, groups=channels, act_layer=None),
            nn.Conv2d(channels, channels, 1, bias=bias),
        )
        self.semantic_up = ConvNormAct(channels, channels, 3, act_layer=None)
        self.fuse = ConvNormAct(channels, channels, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        size = detail.shape[-2:]
        semantic_up = self._upsample(self.semantic_up(semantic), size)
        high = self.detail_keep(detail) * torch.sigmoid(semantic_up)  # (B, C, H/8, W/8)
        low = self.detail_down(detail) * torch.sigmoid(self.semantic_keep(semantic))  # (B, C, H/32, W/32)
        low = self._upsample(low, size)  # (B, C, H/8, W/8)
        return self.fuse(high + low)

    def _upsample(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if self.upsample == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.upsample, align_corners=False)


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
        bga_upsample: str = "bilinear",
        bga_bias: bool = True,
    ) -> None:
        super().__init__()
        if detail_channels[-1] != semantic_channels[-1]:
            raise ValueError(
                f"the last detail and semantic widths must match for aggregation; got {detail_channels[-1]} and "
                f"{semantic_channels[-1]}"
            )
        self.detail = DetailBranch(in_channels, detail_channels)
        self.semantic = SemanticBranch(in_channels, semantic_channels, expansion)
        self.aggregation = BilateralGuidedAggregation(detail_channels[-1], bga_upsample, bga_bias)
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
        bga_upsample: str = "bilinear",
        bga_bias: bool = True,
    ) -> None:
        backbone = BiSeNetV2Backbone(in_channels, detail_channels, semantic_channels, expansion, bga_upsample,
                                     bga_bias)
        head = BiSeNetV2Head(backbone.out_channels[0], head_channels, num_classes, dropout)
        # Booster heads: two convs each, widths as in the mmsegmentation Cityscapes config.
        aux_heads = [
            SegHead(c, mid, num_classes, num_convs=2, dropout=dropout)
            for c, mid in zip(semantic_channels, aux_head_channels)
        ]
        super().__init__(backbone, head, num_classes, aux_heads, aux_indices=[1, 2, 3, 4])
        self.apply(init_conv_bn)


# Checkpoints trained elsewhere (docs/checkpoint_sources.md, section 2.2, has the correspondence key by key).
#
# mmsegmentation: mmseg/models/backbones/bisenetv2.py (088894b) with an FCNHead on the aggregation and four
# FCNHead boosters (configs/_base_/models/bisenetv2.py, 8c68540: channels 1024; 16, 64, 256, 1024, two convs
# each). Each mmcv ConvModule is (conv, bn); each GELayer's first block downsamples (its dwconv holds two
# ConvModules, the others' one); the aggregation's pointwise convs have no norm and so a bias, as ours.
_GE_STAGES = (("stage2", "s3"), ("stage3", "s4"), ("stage4", "s5"))
_MM_SEM, _OUR_SEM = r"backbone\.semantic\.", "backbone.semantic."
_MM_BGA, _OUR_BGA = r"backbone\.bga\.", "backbone.aggregation."
MMSEG_KEYS = KeyMap("mmseg", (
    *(rule for n in range(3) for rule in conv_norm(rf"backbone\.detail\.detail_branch\.{n}\.(\d+)",
                                                   rf"backbone.detail.s{n + 1}.\1")),
    *conv_norm(_MM_SEM + r"stage1\.conv_first", _OUR_SEM + "stem.conv_first"),
    *conv_norm(_MM_SEM + r"stage1\.convs\.(\d)", _OUR_SEM + r"stem.conv_branch.\1"),
    *conv_norm(_MM_SEM + r"stage1\.fuse_last", _OUR_SEM + "stem.fuse"),
    *(rule for mm, ours in _GE_STAGES for rule in (
        *conv_norm(_MM_SEM + mm + r"\.(\d)\.conv1", _OUR_SEM + ours + r".\1.conv"),
        *conv_norm(_MM_SEM + mm + r"\.0\.dwconv\.(\d)", _OUR_SEM + ours + r".0.dwconv.\1"),  # stride 2
        *conv_norm(_MM_SEM + mm + r"\.([1-9])\.dwconv\.0", _OUR_SEM + ours + r".\1.dwconv"),  # stride 1
        *conv_norm(_MM_SEM + mm + r"\.(\d)\.conv2\.0", _OUR_SEM + ours + r".\1.project"),
        *conv_norm(_MM_SEM + mm + r"\.(\d)\.shortcut\.0\.depthwise_conv", _OUR_SEM + ours + r".\1.shortcut.0"),
        *conv_norm(_MM_SEM + mm + r"\.(\d)\.shortcut\.0\.pointwise_conv", _OUR_SEM + ours + r".\1.shortcut.1"),
    )),
    (_MM_SEM + r"stage4_CEBlock\.gap\.1\.(\w+)", _OUR_SEM + r"context.norm.\1"),
    *conv_norm(_MM_SEM + r"stage4_CEBlock\.conv_(gap|last)", _OUR_SEM + r"context.conv_\1"),
    *conv_norm(_MM_BGA + r"detail_dwconv\.0\.depthwise_conv", _OUR_BGA + "detail_keep.0"),
    (_MM_BGA + r"detail_dwconv\.0\.pointwise_conv\.conv\.(\w+)", _OUR_BGA + r"detail_keep.1.\1"),
    *conv_norm(_MM_BGA + r"detail_down\.0", _OUR_BGA + "detail_down.0"),
    *conv_norm(_MM_BGA + r"semantic_conv\.0", _OUR_BGA + "semantic_up"),
    *conv_norm(_MM_BGA + r"semantic_dwconv\.0\.depthwise_conv", _OUR_BGA + "semantic_keep.0"),
    (_MM_BGA + r"semantic_dwconv\.0\.pointwise_conv\.conv\.(\w+)", _OUR_BGA + r"semantic_keep.1.\1"),
    *conv_norm(_MM_BGA + r"conv", _OUR_BGA + "fuse"),
    *conv_norm(r"decode_head\.convs\.0", "head.seg.0"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.seg.2.\1"),
    *conv_norm(r"auxiliary_head\.(\d)\.convs\.(\d)", r"aux_heads.\1.\2"),
    (r"auxiliary_head\.(\d)\.conv_seg\.(\w+)", r"aux_heads.\1.3.\2"),
), note="mmsegmentation BiSeNetV2 + FCNHead (configs/_base_/models/bisenetv2.py)")

# CoinCheung/BiSeNet: lib/models/bisenetv2.py (6b4b67a; the parameters are those of c0422a1, the commit that
# published model_final_v2_city.pth). ConvBNReLU is (conv, bn); the other units are plain Sequentials whose
# indices are ours but for the stride-2 layer's two depth-wise convs and shortcut, which are flat there. Its
# boosters (aux2 ... aux5_4: conv, then nearest x2 + conv to up^2 channels) have no counterpart in ours.
_CC_SEM = r"segment\."
_CC_BGA = r"bga\."
COINCHEUNG_KEYS = KeyMap("coincheung", (
    *conv_norm(r"detail\.S([123])\.(\d)", r"backbone.detail.s\1.\2"),
    *conv_norm(_CC_SEM + r"S1S2\.conv", _OUR_SEM + "stem.conv_first"),
    *conv_norm(_CC_SEM + r"S1S2\.left\.(\d)", _OUR_SEM + r"stem.conv_branch.\1"),
    *conv_norm(_CC_SEM + r"S1S2\.fuse", _OUR_SEM + "stem.fuse"),
    *(rule for cc, ours in (("S3", "s3"), ("S4", "s4"), ("S5_4", "s5")) for rule in (
        *conv_norm(_CC_SEM + cc + r"\.(\d)\.conv1", _OUR_SEM + ours + r".\1.conv"),
        # GELayerS2 (block 0): dwconv1 (conv, bn), dwconv2 (conv, bn, relu), shortcut (conv, bn, conv, bn)
        (_CC_SEM + cc + r"\.0\.dwconv1\.(\d)\.(\w+)", _OUR_SEM + ours + r".0.dwconv.0.\1.\2"),
        (_CC_SEM + cc + r"\.0\.dwconv2\.(\d)\.(\w+)", _OUR_SEM + ours + r".0.dwconv.1.\1.\2"),
        (_CC_SEM + cc + r"\.0\.shortcut\.([01])\.(\w+)", _OUR_SEM + ours + r".0.shortcut.0.\1.\2"),
        (_CC_SEM + cc + r"\.0\.shortcut\.2\.(\w+)", _OUR_SEM + ours + r".0.shortcut.1.0.\1"),
        (_CC_SEM + cc + r"\.0\.shortcut\.3\.(\w+)", _OUR_SEM + ours + r".0.shortcut.1.1.\1"),
        # GELayerS1 (the others): dwconv (conv, bn, relu), the same indices as our ConvNormAct
        (_CC_SEM + cc + r"\.([1-9])\.dwconv\.(\d)\.(\w+)", _OUR_SEM + ours + r".\1.dwconv.\2.\3"),
        (_CC_SEM + cc + r"\.(\d)\.conv2\.(\d)\.(\w+)", _OUR_SEM + ours + r".\1.project.\2.\3"),
    )),
    (_CC_SEM + r"S5_5\.bn\.(\w+)", _OUR_SEM + r"context.norm.\1"),
    *conv_norm(_CC_SEM + r"S5_5\.conv_(gap|last)", _OUR_SEM + r"context.conv_\1"),
    # BGA: left1/right2 (dw conv, bn, 1x1 conv without bias), left2 (conv, bn, avgpool), right1 and conv (conv, bn)
    (_CC_BGA + r"left1\.([01])\.(\w+)", _OUR_BGA + r"detail_keep.0.\1.\2"),
    (_CC_BGA + r"left1\.2\.weight", _OUR_BGA + "detail_keep.1.weight"),
    (_CC_BGA + r"left2\.([01])\.(\w+)", _OUR_BGA + r"detail_down.0.\1.\2"),
    (_CC_BGA + r"right1\.([01])\.(\w+)", _OUR_BGA + r"semantic_up.\1.\2"),
    (_CC_BGA + r"right2\.([01])\.(\w+)", _OUR_BGA + r"semantic_keep.0.\1.\2"),
    (_CC_BGA + r"right2\.2\.weight", _OUR_BGA + "semantic_keep.1.weight"),
    (_CC_BGA + r"conv\.([01])\.(\w+)", _OUR_BGA + r"fuse.\1.\2"),
    # SegmentHead(aux=False): conv (ConvBNReLU 128 -> 1024), conv_out = (Identity, 1x1 conv, x8 bilinear)
    *conv_norm(r"head\.conv", "head.seg.0"),
    (r"head\.conv_out\.1\.(\w+)", r"head.seg.2.\1"),
), drop=(r"aux(2|3|4|5_4)\..+",),
   note="CoinCheung/BiSeNet BiSeNetV2 (model_final_v2_*.pth)")


@register_model("bisenetv2", size_divisor=32, output_stride=8, checkpoints=(MMSEG_KEYS,))
def bisenetv2(num_classes: int = 19, **kwargs) -> nn.Module:
    """BiSeNet V2 (paper Table 1 widths: detail 64-64-128, semantic 16-32-64-128, expansion 6)."""
    args = dict(detail_channels=(64, 64, 128), semantic_channels=(16, 32, 64, 128), expansion=6, head_channels=1024)
    return BiSeNetV2(num_classes, **{**args, **kwargs})


@register_model("bisenetv2", size_divisor=32, output_stride=8, checkpoints=(COINCHEUNG_KEYS,))
def bisenetv2_coincheung(num_classes: int = 19, **kwargs) -> nn.Module:
    """BiSeNet V2 as CoinCheung/BiSeNet builds it (its released model_final_v2_*.pth load here): the aggregation
    upsamples by nearest x4 (nn.Upsample's default mode) and its two 1x1 convs have no bias; widths as bisenetv2.
    Its booster heads (another structure than ours) are left out on import; ours stay untrained (training only)."""
    args = dict(detail_channels=(64, 64, 128), semantic_channels=(16, 32, 64, 128), expansion=6, head_channels=1024,
                bga_upsample="nearest", bga_bias=False)
    return BiSeNetV2(num_classes, **{**args, **kwargs})
