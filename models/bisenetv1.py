"""BiSeNet (V1): a Spatial Path that keeps detail at stride 8 and a Context Path that reaches stride 32 for
receptive field, refined by attention and fused by a feature fusion module.

Yu, Wang, Peng, Gao, Yu, Sang. "BiSeNet: Bilateral Segmentation Network for Real-time Semantic Segmentation."
ECCV 2018. https://arxiv.org/abs/1808.00897

- **Spatial Path** (paper Fig. 2): conv-BN-ReLU layers with stride 2 to stride 8.
- **Context Path** (Fig. 2): a light backbone (ResNet-18 or Xception39) to stride 32; global average pooling
  on its stride-32 map (the "tail") gives the global context; an **Attention Refinement Module** (ARM, Fig. 2b)
  refines each of the last two stages; stride 32 (+ global context) is upsampled into stride 16, and the sum
  into stride 8.
- **Feature Fusion Module** (FFM, Fig. 2): concatenate both paths, conv-BN-ReLU, channel attention (global
  pooling, 1x1, ReLU, 1x1, sigmoid), and ``x + x * attention``.
- A seg head on the fused map (logits at stride 8) and two auxiliary heads on the Context Path's outputs at
  strides 16 and 8 (the paper's auxiliary losses): training-only, never exported.

The widths, and where the paper's text and the code differ, follow the authors' released code, ycszen/TorchSeg
(``model/bisenet/cityscapes.bisenet.{R18,X39}/network.py``, ``furnace/seg_opr/seg_oprs.py``):

- the Spatial Path is the paper's three stride-2 convs (7x7, 3x3, 3x3, 64 channels each) plus a 1x1 conv-BN-ReLU
  to 128 channels (also in CoinCheung/BiSeNet and mmsegmentation);
- an ARM starts with a 3x3 conv-BN-ReLU to the Context Path's 128 channels, before the paper's pooling, 1x1 conv,
  BN and sigmoid; after each upsampling a 3x3 conv-BN-ReLU refines the sum;
- the FFM's attention has no reduction (256 -> 256 -> 256) and its 1x1 convs no BN or bias, as the paper's
  figure draws it (CoinCheung/BiSeNet replaces the two convs by one conv-BN, by its comment so that TensorRT
  7.2.3.4 works in FP16);
- the heads are 3x3 conv-BN-ReLU + 1x1 classifier without dropout: 64 channels on the fused map, 128 on the
  auxiliary ones (256 with ResNet-18, as TorchSeg's accuracy configuration ``cityscapes.bisenet.R18``; its
  ``.speed`` one has 128). CoinCheung/BiSeNet and mmsegmentation use 256 and 64;
- upsampling is bilinear with ``align_corners=False`` like the rest of this package (TorchSeg: ``True``;
  CoinCheung/BiSeNet: nearest), always to the size of the map it is added to or fused with, so one exported
  graph serves every input size.

``bisenetv1_r18_mmseg`` is mmsegmentation's network instead (its bisenetv1_r18-d32 checkpoints load there): the
Context Path upsamples by nearest, the FFM's attention is one 1x1 conv-BN-ReLU before the sigmoid, and the heads
are 256 (seg) and 64 (auxiliary) wide. ``bisenetv1_r50_mmseg`` and ``bisenetv1_r101_mmseg`` are the same network
on mmseg's plain ResNet-50 / -101 (bottlenecks, 7x7 stem) at four times the widths: Spatial Path 256-256-256-512,
Context Path and auxiliary inputs 512, fused map and seg head 1024, auxiliary heads 256.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.resnet import resnet
from .backbones.xception39 import Xception39
from .base import ConvNormAct, SegmentationModel, init_conv_bn
from .heads.fcn import FCNHead
from .keymaps import KeyMap, conv_norm
from .registry import register_model


class SpatialPath(nn.Sequential):
    """7x7, 3x3 and 3x3 conv-BN-ReLU with stride 2 (stride 8), then a 1x1 conv-BN-ReLU to the output width."""

    def __init__(self, in_channels: int = 3, channels: tuple[int, int, int, int] = (64, 64, 64, 128)) -> None:
        c1, c2, c3, c_out = channels
        super().__init__(
            ConvNormAct(in_channels, c1, 7, stride=2),
            ConvNormAct(c1, c2, 3, stride=2),
            ConvNormAct(c2, c3, 3, stride=2),
            ConvNormAct(c3, c_out, 1),
        )


class AttentionRefinement(nn.Module):
    """ARM (paper Fig. 2): 3x3 conv-BN-ReLU, then a channel attention from global average pooling, 1x1 conv, BN
    and sigmoid, multiplied in."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 3)
        self.attention = ConvNormAct(out_channels, out_channels, 1, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (B, C, h, w)
        attention = torch.sigmoid(self.attention(x.mean(dim=(2, 3), keepdim=True)))  # (B, C, 1, 1)
        return x * attention


class ContextPath(nn.Module):
    """Backbone, global context, ARMs on the last two stages and the upsample-and-add path down to stride 8.

    ``forward(images, size)`` returns ``[context at stride 8 (upsampled to size), context at stride 16]``.
    ``upsample``: 'bilinear' (align_corners=False) or 'nearest' (mmsegmentation's).
    """

    def __init__(self, backbone: nn.Module, channels: int = 128, upsample: str = "bilinear") -> None:
        super().__init__()
        self.backbone = backbone
        self.upsample = upsample
        c16, c32 = backbone.out_channels[-2:]
        self.global_context = ConvNormAct(c32, channels, 1)
        self.arm32 = AttentionRefinement(c32, channels)
        self.arm16 = AttentionRefinement(c16, channels)
        self.refine16 = ConvNormAct(channels, channels, 3)
        self.refine8 = ConvNormAct(channels, channels, 3)

    def forward(self, images: torch.Tensor, size: torch.Size) -> list[torch.Tensor]:
        x16, x32 = self.backbone(images)[-2:]  # (B, C16, H/16, W/16), (B, C32, H/32, W/32)
        context = self.global_context(x32.mean(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        up32 = self.arm32(x32) + context  # broadcast: the 1x1 global context upsampled to stride 32
        up32 = self._resize(up32, x16.shape[-2:])
        context16 = self.refine16(up32)  # (B, C, H/16, W/16)
        up16 = self._resize(self.arm16(x16) + context16, size)
        context8 = self.refine8(up16)  # (B, C, H/8, W/8)
        return [context8, context16]

    def _resize(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if self.upsample == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.upsample, align_corners=False)


class FeatureFusion(nn.Module):
    """FFM (paper Fig. 2): concatenate, 1x1 conv-BN-ReLU, and ``x + x * attention`` with a channel attention
    from global average pooling, 1x1 conv, ReLU, 1x1 conv and sigmoid. ``single_conv_attention``: one 1x1
    conv-BN-ReLU before the sigmoid instead (mmsegmentation's FeatureFusionModule)."""

    def __init__(self, in_channels: int, out_channels: int, single_conv_attention: bool = False) -> None:
        super().__init__()
        self.fuse = ConvNormAct(in_channels, out_channels, 1)
        self.attention = ConvNormAct(out_channels, out_channels, 1) if single_conv_attention else nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
        )

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.fuse(torch.cat([spatial, context], dim=1))  # (B, C, H/8, W/8)
        attention = torch.sigmoid(self.attention(x.mean(dim=(2, 3), keepdim=True)))  # (B, C, 1, 1)
        return x + x * attention


class BiSeNetV1Backbone(nn.Module):
    """Both paths and the fusion module.

    Returns ``[fused (stride 8), context (8), context (16)]``: the first feeds the seg head, the others the
    auxiliary heads.
    """

    def __init__(self, context_backbone: nn.Module, spatial_channels: tuple[int, int, int, int] = (64, 64, 64, 128),
                 context_channels: int = 128, mmseg: bool = False) -> None:
        super().__init__()
        self.spatial = SpatialPath(3, spatial_channels)
        self.context = ContextPath(context_backbone, context_channels, "nearest" if mmseg else "bilinear")
        fused = spatial_channels[-1] + context_channels
        self.fusion = FeatureFusion(fused, fused, single_conv_attention=mmseg)
        self.out_channels = [fused, context_channels, context_channels]
        self.strides = [8, 8, 16]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        spatial = self.spatial(images)  # (B, C_sp, H/8, W/8)
        context8, context16 = self.context(images, spatial.shape[-2:])
        return [self.fusion(spatial, context8), context8, context16]


class BiSeNetV1Head(nn.Module):
    """The seg head on the fused features (``features[0]``); logits at stride 8."""

    output_stride = 8

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__()
        self.seg = FCNHead(in_channels, num_classes, mid_channels, dropout=0.0)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.seg(features[0])  # (B, num_classes, H/8, W/8)


class BiSeNetV1(SegmentationModel):
    """Spatial and Context Paths, feature fusion, seg head; auxiliary heads for training only."""

    def __init__(self, context_backbone: nn.Module, num_classes: int = 19,
                 spatial_channels: tuple[int, int, int, int] = (64, 64, 64, 128), context_channels: int = 128,
                 head_channels: int = 64, aux_head_channels: int = 128, mmseg: bool = False) -> None:
        backbone = BiSeNetV1Backbone(context_backbone, spatial_channels, context_channels, mmseg)
        head = BiSeNetV1Head(backbone.out_channels[0], head_channels, num_classes)
        aux_heads = [FCNHead(context_channels, num_classes, aux_head_channels, dropout=0.0) for _ in range(2)]
        super().__init__(backbone, head, num_classes, aux_heads, aux_indices=[1, 2])
        self.apply(init_conv_bn)


# Numerical tests: a quarter of BiSeNet's widths, ResNet-18 at a quarter of its widths, Xception39 (already narrow)
# with fewer blocks; every path, module and block kind is kept.
_NARROW = {"spatial_channels": (16, 16, 16, 32), "context_channels": 32, "head_channels": 16, "aux_head_channels": 32}


# mmsegmentation's bisenetv1_r18-d32 checkpoints (configs/_base_/models/bisenetv1_r18-d32.py, 3d241e0: a plain
# ResNet-18 Context Path, 7x7 stem; FCNHead 256 -> 256 and two auxiliary FCNHeads 128 -> 64) and its
# ones (configs/bisenetv1/bisenetv1_r50-d32_4xb4-160k_cityscapes-1024x1024.py, 3f8d34e, bisenetv1_r101-d32_4xb4-
# 160k_coco-stuff164k-512x512.py, 13d58ef: backbone_cfg ResNet of depth 50 / 101, its default deep_stem=False;
# context_channels (512, 1024, 2048), spatial_channels (256, 256, 256, 512), out_channels 1024, FCNHead 1024 ->
# 1024, auxiliary FCNHeads 512 -> 256; the -in1k-pre files only initialise the backbone from open-mmlab's
# resnet{50,101}_v1c). The rules below name a block's convs and norms by number, so they take BasicBlocks and
# bottlenecks alike. mmseg/models/
# backbones/bisenetv1.py (168c883): spatial_path.layer1..4, context_path.{arm16, arm32} (conv_layer, then
# atten_conv_layer = (pool, ConvModule 1x1)), conv_head32 / conv_head16 after each nearest upsampling, gap_conv =
# (pool, ConvModule), ffm.conv1 and ffm.conv_atten = (ConvModule 1x1, Sigmoid). mmseg ResNet (resnet.py 03b0197):
# conv1 / bn1, layerN.{j}.convK / bnK, downsample = (conv, bn).
_CP = r"backbone\.context_path\.backbone"
MMSEG_KEYS = KeyMap("mmseg", (
    (rf"{_CP}\.conv1\.(\w+)", r"backbone.context.backbone.stem.0.0.\1"),
    (rf"{_CP}\.bn1\.(\w+)", r"backbone.context.backbone.stem.0.1.\1"),
    *((rf"{_CP}\.layer{s + 1}\.(\d+)\.conv(\d)\.weight", rf"backbone.context.backbone.stages.{s}.\1.conv\2.0.weight")
      for s in range(4)),
    *((rf"{_CP}\.layer{s + 1}\.(\d+)\.bn(\d)\.(\w+)", rf"backbone.context.backbone.stages.{s}.\1.conv\2.1.\3")
      for s in range(4)),
    *((rf"{_CP}\.layer{s + 1}\.0\.downsample\.(\d)\.(\w+)", rf"backbone.context.backbone.stages.{s}.0.downsample.\1.\2")
      for s in range(4)),
    *(rule for i in range(4) for rule in conv_norm(rf"backbone\.spatial_path\.layer{i + 1}", f"backbone.spatial.{i}")),
    *conv_norm(r"backbone\.context_path\.arm(16|32)\.conv_layer", r"backbone.context.arm\1.conv"),
    *conv_norm(r"backbone\.context_path\.arm(16|32)\.atten_conv_layer\.1", r"backbone.context.arm\1.attention"),
    *conv_norm(r"backbone\.context_path\.conv_head32", "backbone.context.refine16"),
    *conv_norm(r"backbone\.context_path\.conv_head16", "backbone.context.refine8"),
    *conv_norm(r"backbone\.context_path\.gap_conv\.1", "backbone.context.global_context"),
    *conv_norm(r"backbone\.ffm\.conv1", "backbone.fusion.fuse"),
    *conv_norm(r"backbone\.ffm\.conv_atten\.0", "backbone.fusion.attention"),
    *conv_norm(r"decode_head\.convs\.0", "head.seg.0"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.seg.2.\1"),
    *conv_norm(r"auxiliary_head\.(\d)\.convs\.0", r"aux_heads.\1.0"),
    (r"auxiliary_head\.(\d)\.conv_seg\.(\w+)", r"aux_heads.\1.2.\2"),
), note="mmsegmentation BiSeNetV1 on ResNet-18/50/101 (configs/_base_/models/bisenetv1_r18-d32.py, configs/bisenetv1)")


@register_model("bisenetv1", size_divisor=32, output_stride=8,
                test_kwargs={**_NARROW, "stem_width": 16, "base_width": 16}, checkpoints=(MMSEG_KEYS,))
def bisenetv1_r18(num_classes: int = 19, stem_width: int = 64, base_width: int = 64, **kwargs) -> nn.Module:
    """BiSeNet, ResNet-18 Context Path (7x7 stem, output stride 32)."""
    context_backbone = resnet(18, output_stride=32, deep_stem=False, stem_width=stem_width, base_width=base_width)
    return BiSeNetV1(context_backbone, num_classes, **{"aux_head_channels": 256, **kwargs})


@register_model("bisenetv1", size_divisor=32, output_stride=8,
                test_kwargs={**_NARROW, "stem_width": 16, "base_width": 16}, checkpoints=(MMSEG_KEYS,))
def bisenetv1_r18_mmseg(num_classes: int = 19, stem_width: int = 64, base_width: int = 64, **kwargs) -> nn.Module:
    """BiSeNet as mmsegmentation builds it (nearest upsampling in the Context Path, a conv-BN-ReLU attention in
    the FFM, heads 256 and 64 wide), ResNet-18 Context Path: its bisenetv1_r18-d32 checkpoints load here."""
    context_backbone = resnet(18, output_stride=32, deep_stem=False, stem_width=stem_width, base_width=base_width)
    return BiSeNetV1(context_backbone, num_classes, **{"head_channels": 256, "aux_head_channels": 64, **kwargs},
                     mmseg=True)


# mmseg's widths (configs/bisenetv1/bisenetv1_r{50,101}-d32_*.py): ContextPath's ARMs and global
# context go to context_channels[0] = 512; the FFM reads context_channels[1] = 1024 = 512 (spatial) + 512 (context).
_MMSEG_BOTTLENECK = {"spatial_channels": (256, 256, 256, 512), "context_channels": 512, "head_channels": 1024,
                     "aux_head_channels": 256}


def _bisenetv1_mmseg_bottleneck(depth: int, num_classes: int, stem_width: int, base_width: int,
                                **kwargs) -> nn.Module:
    context_backbone = resnet(depth, output_stride=32, deep_stem=False, stem_width=stem_width, base_width=base_width)
    return BiSeNetV1(context_backbone, num_classes, **{**_MMSEG_BOTTLENECK, **kwargs}, mmseg=True)


@register_model("bisenetv1", size_divisor=32, output_stride=8,
                test_kwargs={**_NARROW, "stem_width": 16, "base_width": 16}, checkpoints=(MMSEG_KEYS,))
def bisenetv1_r50_mmseg(num_classes: int = 19, stem_width: int = 64, base_width: int = 64, **kwargs) -> nn.Module:
    """BiSeNet as mmsegmentation builds it on a plain ResNet-50 (7x7 stem), Spatial Path 256-256-256-512, Context
    Path 512, fused map and seg head 1024, auxiliary heads 256: its bisenetv1_r50-d32 checkpoints load here."""
    return _bisenetv1_mmseg_bottleneck(50, num_classes, stem_width, base_width, **kwargs)


@register_model("bisenetv1", size_divisor=32, output_stride=8,
                test_kwargs={**_NARROW, "stem_width": 16, "base_width": 16}, checkpoints=(MMSEG_KEYS,))
def bisenetv1_r101_mmseg(num_classes: int = 19, stem_width: int = 64, base_width: int = 64, **kwargs) -> nn.Module:
    """BiSeNet as mmsegmentation builds it on a plain ResNet-101, at bisenetv1_r50_mmseg's widths: its
    bisenetv1_r101-d32 checkpoints load here."""
    return _bisenetv1_mmseg_bottleneck(101, num_classes, stem_width, base_width, **kwargs)


@register_model("bisenetv1", size_divisor=32, output_stride=8,
                test_kwargs={**_NARROW, "depths": (1, 2, 1)})
def bisenetv1_xception39(num_classes: int = 19, depths: tuple[int, int, int] = (4, 8, 4),
                         widths: tuple[int, int, int] = (16, 32, 64), stem_width: int = 8, **kwargs) -> nn.Module:
    """BiSeNet, Xception39 Context Path (the paper's real-time configuration)."""
    return BiSeNetV1(Xception39(depths, widths, stem_width), num_classes, **kwargs)
