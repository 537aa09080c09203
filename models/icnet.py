"""ICNet (Zhao, Qi, Shen, Shi, Jia, "ICNet for Real-Time Semantic Segmentation on High-Resolution Images",
ECCV 2018, https://arxiv.org/abs/1704.08545).

An image cascade: the heavy network sees only a quarter-resolution image, light branches add the detail of the
half- and full-resolution images, and cascade feature fusion (CFF) joins them from coarse to fine.

- **1/4 resolution** (-> 1/32): the half-resolution image goes through the stem and stages 1-2 of the shared
  ResNet-50 (deep stem, as PSPNet), the result (1/16 of the full input) is downsampled x2 and runs through the
  dilated stages 3-4, which keep the resolution. A light pyramid pooling adds the bin averages (1, 2, 3, 6)
  to the map instead of concatenating them, and a 1x1 conv-BN-ReLU reduces it to 256 channels (the official
  prototxt's ``conv5_3_sum`` and ``conv5_4_k1``).
- **1/2 resolution** (-> 1/16): the stage-2 output, computed once and shared with the 1/4 branch.
- **Full resolution** (-> 1/8): three 3x3 stride-2 conv-BN-ReLU (32, 32, 64 channels).
- **CFF**: the lower-resolution map upsampled x2 (bilinear, to the higher-resolution map's size), a 3x3 conv
  of dilation 2 + BN; the higher-resolution map through a 1x1 conv + BN; sum, ReLU; 128 channels.
- **Classifier**: the last fusion (1/8) upsampled x2, a 1x1 conv: logits at stride 4.

Cascade label guidance (training only): a 1x1 classifier on each CFF's upsampled low-resolution input, the
paper's auxiliary losses at 1/16 and 1/8. ``ICNetBackbone`` returns those two inputs with the last fusion, so
``SegmentationModel``'s auxiliary heads reach them and the exported graph holds none of it.

Sources and deviations. Channels and layer order follow the official deployment prototxt
(hszhao/ICNet, evaluation/prototxt/icnet_cityscapes_bnnomerge.prototxt). The trunk, like mmsegmentation's
ICNet (mmseg/models/backbones/icnet.py, configs/_base_/models/icnet_r50-d8.py), is the full-width ResNet-50
with contracted dilation, split after the whole of stage 2 and downsampled bilinearly (``align_corners=False``;
at exactly half size this is 2x2 average pooling). The prototxt's trunk is the paper's compressed one: half
the widths (stem 32-32-64, stage widths 32-256), the 1/4 branch split off after the first block of stage 2
(``conv3_1`` -> ``conv3_1_sub4``), dilation 2 and 4 in every block of stages 3 and 4, Caffe's corner-aligned ``Interp`` for
every resize and pyramid pooling windows baked for a 1025x2049 input. mmsegmentation differs from the
prototxt in the 1/4 branch (PSPNet's concatenating pyramid, 3x3 fusion to 512, 1x1 to 256), an extra 1x1
conv on the 1/2 branch and a ReLU on each CFF's branches; this follows the prototxt there, and
``icnet_r{18,50,101}_mmseg`` (``MMSegICNetBackbone``, below) are mmsegmentation's network, whose
checkpoints they load. Here the pyramid
pooling is ``seg::adaptive_avg_pool`` (models/heads/psp.py), exact at any size, so one graph serves every H, W.

No parameter count is published for this configuration (mmsegmentation's ICNet model table lists none).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.resnet import DEPTHS, BasicBlock, Bottleneck, ResNet, mmseg_v1c_keys
from .base import ConvNormAct, SegmentationModel, init_conv_bn
from .heads.fcn import FCNHead, FCNHeadOn
from .heads.psp import BINS, PyramidPoolingModule, adaptive_avg_pool
from .keymaps import KeyMap, conv_norm
from .registry import register_model


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class LightPyramidPooling(nn.Module):
    """``x + sum over bins of upsample(adaptive_avg_pool(x, bins))``: the pyramid of PSPNet without its
    reductions and concatenation, as ICNet's prototxt sums it (``conv5_3_sum``). No parameters."""

    def __init__(self, bins: tuple[int, ...] = BINS) -> None:
        super().__init__()
        self.bins = tuple(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        out = x
        for bins in self.bins:
            out = out + _resize(adaptive_avg_pool(x, bins), size)  # (B, C, h, w)
        return out


class CascadeFeatureFusion(nn.Module):
    """CFF: ``relu(BN(dilated_conv3x3(up(low))) + BN(conv1x1(high)))`` at the high-resolution map's size.
    Returns the fusion and ``up(low)``, the map the cascade label guidance classifies.

    ``mmseg``: mmsegmentation's CascadeFeatureFusion (mmseg/models/necks/ic_neck.py, 10d08c2): each branch is a
    conv-BN-ReLU before the sum, and the guidance reads the low branch's output (``channels`` wide)."""

    def __init__(self, low_channels: int, high_channels: int, channels: int,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d, mmseg: bool = False) -> None:
        super().__init__()
        act = nn.ReLU if mmseg else None
        self.mmseg = mmseg
        self.conv_low = ConvNormAct(low_channels, channels, 3, dilation=2, norm_layer=norm_layer, act_layer=act)
        self.conv_high = ConvNormAct(high_channels, channels, 1, norm_layer=norm_layer, act_layer=act)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = _resize(low, high.shape[-2:])  # (B, C_low, h, w): x2
        x_low = self.conv_low(low)  # (B, channels, h, w)
        return F.relu(x_low + self.conv_high(high)), x_low if self.mmseg else low


class ICNetBackbone(nn.Module):
    """The three branches and the two fusions. Returns ``[up(sub4), up(sub24), sub124]``: the inputs of the
    label guidance at 1/16 and 1/8 (strides of the full input) and the last fusion at 1/8."""

    def __init__(self, layers: tuple[int, int, int, int] = DEPTHS[50], base_width: int = 64, stem_width: int = 64,
                 branch_channels: tuple[int, int, int] = (32, 32, 64), pool_channels: int = 256,
                 channels: int = 128, bins: tuple[int, ...] = BINS,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.resnet = ResNet(layers, output_stride=8, deep_stem=True, stem_width=stem_width, base_width=base_width,
                             norm_layer=norm_layer)
        c1, c2, c3 = branch_channels
        self.sub1 = nn.Sequential(
            ConvNormAct(3, c1, 3, 2, norm_layer=norm_layer),
            ConvNormAct(c1, c2, 3, 2, norm_layer=norm_layer),
            ConvNormAct(c2, c3, 3, 2, norm_layer=norm_layer),
        )
        self.pyramid = LightPyramidPooling(bins)
        self.reduce = ConvNormAct(self.resnet.out_channels[3], pool_channels, 1, norm_layer=norm_layer)
        self.cff24 = CascadeFeatureFusion(pool_channels, self.resnet.out_channels[1], channels, norm_layer)
        self.cff12 = CascadeFeatureFusion(channels, c3, channels, norm_layer)
        self.out_channels = [pool_channels, channels, channels]
        self.strides = [16, 8, 8]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        h, w = images.shape[-2:]
        sub1 = self.sub1(images)  # (B, 64, H/8, W/8)
        x = _resize(images, (h // 2, w // 2))  # (B, 3, H/2, W/2)
        x = self.resnet.stem(x)  # (B, 128, H/8, W/8)
        sub2 = self.resnet.stages[1](self.resnet.stages[0](x))  # (B, 512, H/16, W/16)
        x = _resize(sub2, (sub2.shape[-2] // 2, sub2.shape[-1] // 2))  # (B, 512, H/32, W/32)
        x = self.resnet.stages[3](self.resnet.stages[2](x))  # (B, 2048, H/32, W/32): dilated, stride kept
        sub4 = self.reduce(self.pyramid(x))  # (B, 256, H/32, W/32)
        sub24, guide16 = self.cff24(sub4, sub2)  # (B, 128, H/16, W/16); (B, 256, H/16, W/16)
        sub124, guide8 = self.cff12(sub24, sub1)  # (B, 128, H/8, W/8); (B, 128, H/8, W/8)
        return [guide16, guide8, sub124]


class ICHead(nn.Module):
    """The last fusion (``features[-1]``, stride 8) upsampled x2 and classified by a 1x1 conv: logits at
    stride 4."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]  # (B, C, H/8, W/8)
        x = _resize(x, (2 * x.shape[-2], 2 * x.shape[-1]))  # (B, C, H/4, W/4)
        return self.classifier(x)  # (B, num_classes, H/4, W/4)


def _icnet(layers: tuple[int, int, int, int], num_classes: int, **kwargs) -> SegmentationModel:
    backbone = ICNetBackbone(layers, **kwargs)
    head = ICHead(backbone.out_channels[-1], num_classes)
    # Cascade label guidance: a 1x1 classifier on each CFF's upsampled low-resolution input.
    aux = [nn.Conv2d(c, num_classes, 1) for c in backbone.out_channels[:2]]
    model = SegmentationModel(backbone, head, num_classes, aux_heads=aux, aux_indices=[0, 1])
    model.apply(init_conv_bn)  # mmsegmentation's ICNet init: Kaiming (fan-out) convs, unit BatchNorm
    return model


# Numerical tests: a quarter of the trunk's widths, the branches and fusions narrower; every block kept.
_NARROW = {"base_width": 16, "stem_width": 16, "branch_channels": (8, 8, 16), "pool_channels": 64, "channels": 32}


@register_model("icnet", size_divisor=32, output_stride=4, test_kwargs=_NARROW, custom_ops=("adaptive_avg_pool",))
def icnet_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """ICNet, ResNet-50 trunk (deep stem, dilated stages 3-4), branches at 1/4, 1/2 and full resolution
    fused by two CFFs (128 channels)."""
    return _icnet(DEPTHS[50], num_classes, **kwargs)


# ------------------------------------------------------------------------------ mmsegmentation's ICNet

class MMSegICNetBackbone(nn.Module):
    """mmsegmentation's ICNet backbone and ICNeck (mmseg/models/backbones/icnet.py, 034a5c8; necks/ic_neck.py,
    10d08c2; configs/_base_/models/icnet_r50-d8.py, 80eee4a), another network than ``ICNetBackbone``:

    - the trunk is ResNetV1c (stem 32-32-64) whose max-pool is replaced by one with ``ceil_mode=True`` (the
      stem's output is H/8 + 1 high for H a multiple of 16, so the inner maps are one row and column larger than
      input / stride);
    - both halvings are ``scale_factor=0.5`` resizes (bilinear, ``align_corners=False``), as mmseg's code calls
      them: on an odd map they sample other points than a resize to ``size // 2``;
    - the 1/4 branch is PSPNet's pyramid (1x1 conv-BN-ReLU reductions to ``psp_channels``, concatenated *before*
      the input), a 3x3 bottleneck to ``psp_channels`` and a 1x1 conv-BN-ReLU (``conv_sub4``) to 256;
    - the 1/2 branch has its own 1x1 conv-BN-ReLU (``conv_sub2``), 512 -> 256; the full-resolution branch is
      32-32-64 wide;
    - each CFF branch is a conv-BN-ReLU (``CascadeFeatureFusion(mmseg=True)``), and the label guidance reads the
      low branch's 128 channels.

    ``block`` and ``dilate_conv2`` as ``ResNet``'s: the R-18 trunk is ``BasicBlock`` with ``dilate_conv2=False``
    (mmseg's BasicBlock); the branch widths follow the trunk's (mmseg's ``layer_channels=(128, 512)``).

    Returns ``[x_24, x_12, x_cff_12]`` as ICNeck does: the two guidance maps (1/16 and 1/8) and the last fusion
    (1/8)."""

    def __init__(self, layers: tuple[int, int, int, int] = DEPTHS[50], base_width: int = 64, stem_width: int = 32,
                 light_channels: int = 32, branch_channels: tuple[int, int, int] = (64, 256, 256),
                 psp_channels: int = 512, channels: int = 128, bins: tuple[int, ...] = BINS,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d, block: type[BasicBlock | Bottleneck] = Bottleneck,
                 dilate_conv2: bool = True) -> None:
        super().__init__()
        self.resnet = ResNet(layers, output_stride=8, deep_stem=True, stem_width=stem_width, base_width=base_width,
                             norm_layer=norm_layer, block=block, dilate_conv2=dilate_conv2)
        # icnet.py: "set ceil_mode=True to keep information in the corner of feature map"
        self.resnet.stem[3] = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        c1, c2, c4 = branch_channels
        trunk2, trunk4 = self.resnet.out_channels[1], self.resnet.out_channels[3]
        self.sub1 = nn.Sequential(
            ConvNormAct(3, light_channels, 3, 2, norm_layer=norm_layer),
            ConvNormAct(light_channels, light_channels, 3, 2, norm_layer=norm_layer),
            ConvNormAct(light_channels, c1, 3, 2, norm_layer=norm_layer),
        )
        self.sub2 = ConvNormAct(trunk2, c2, 1, norm_layer=norm_layer)
        self.pyramid = PyramidPoolingModule(trunk4, psp_channels, bins, norm_layer, input_first=False)
        self.bottleneck = ConvNormAct(trunk4 + len(self.pyramid.bins) * psp_channels, psp_channels, 3,
                                      norm_layer=norm_layer)
        self.sub4 = ConvNormAct(psp_channels, c4, 1, norm_layer=norm_layer)
        self.cff24 = CascadeFeatureFusion(c4, c2, channels, norm_layer, mmseg=True)
        self.cff12 = CascadeFeatureFusion(channels, c1, channels, norm_layer, mmseg=True)
        self.out_channels = [channels, channels, channels]
        self.strides = [16, 8, 8]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        sub1 = self.sub1(images)  # (B, 64, H/8, W/8)
        x = F.interpolate(images, scale_factor=0.5, mode="bilinear", align_corners=False)  # (B, 3, H/2, W/2)
        x = self.resnet.stem(x)  # (B, 64, H/8 + 1, W/8 + 1): the ceil-mode pool
        x = self.resnet.stages[1](self.resnet.stages[0](x))  # (B, 512, ~H/16, ~W/16)
        sub2 = self.sub2(x)  # (B, 256, ~H/16, ~W/16)
        x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)  # (B, 512, ~H/32, ~W/32)
        x = self.resnet.stages[3](self.resnet.stages[2](x))  # (B, 2048, ~H/32, ~W/32): dilated, stride kept
        sub4 = self.sub4(self.bottleneck(self.pyramid(x)))  # (B, 256, ~H/32, ~W/32)
        sub24, guide16 = self.cff24(sub4, sub2)  # (B, 128, ~H/16, ~W/16) twice
        sub124, guide8 = self.cff12(sub24, sub1)  # (B, 128, H/8, W/8) twice
        return [guide16, guide8, sub124]


def _icnet_mmseg(layers: tuple[int, int, int, int], num_classes: int, head_channels: int = 128,
                 **kwargs) -> SegmentationModel:
    backbone = MMSegICNetBackbone(layers, **kwargs)
    # decode_head: an FCNHead on the last fusion (one 3x3 conv-BN-ReLU, dropout_ratio 0, classifier): logits at
    # stride 8, upsampled to the input by SegmentationModel as mmseg's EncoderDecoder does
    head = FCNHeadOn(backbone.out_channels[-1], num_classes, head_channels, dropout=0.0)
    # auxiliary_head: two FCNHeads (128 -> 128, num_convs 1) on the guidance maps, training only
    aux = [FCNHead(c, num_classes, head_channels) for c in backbone.out_channels[:2]]
    model = SegmentationModel(backbone, head, num_classes, aux_heads=aux, aux_indices=[0, 1])
    model.apply(init_conv_bn)
    return model


# Numerical tests: a quarter of the trunk's widths (the V1c stem half the base width), branches, pyramid and
# fusions narrower; every block kept.
_NARROW_MMSEG = {"base_width": 16, "stem_width": 8, "light_channels": 8, "branch_channels": (16, 64, 64),
                 "psp_channels": 128, "channels": 32, "head_channels": 32}

# mmsegmentation's icnet_r50-d8 / icnet_r101-d8 checkpoints (configs/icnet/icnet_r{50,101}-d8_4xb2-{80k,160k}_
# cityscapes-832x832.py and their in1k-pre twins, all on configs/_base_/models/icnet_r50-d8.py). Keys:
# backbone.backbone = the ResNetV1c, backbone.psp_modules.{i} = (AdaptiveAvgPool2d, ConvModule) (PPM of
# decode_heads/psp_head.py), backbone.psp_bottleneck, backbone.conv_sub1.{0,1,2}, conv_sub2, conv_sub4 (ConvModules);
# neck.cff_24 / cff_12 with conv_low, conv_high; decode_head and auxiliary_head.{0,1} FCNHeads (convs.0,
# conv_seg). The R-18 files (configs/icnet/icnet_r18-d8_832x832_{80k,160k}_cityscapes.py, 94f9cb4/7e3fb54, the
# in1k-pre twins and the 1.x icnet_r18-d8{,-in1k-pre}_4xb2-{80k,160k}_cityscapes-832x832.py) change only the trunk,
# depth=18 and layer_channels=(128, 512): icnet_r18_mmseg, its BasicBlocks under the same key names.
MMSEG_KEYS = KeyMap("mmseg", (
    *mmseg_v1c_keys(r"backbone\.backbone", "backbone.resnet"),
    *conv_norm(r"backbone\.psp_modules\.(\d)\.1", r"backbone.pyramid.stages.\1"),
    *conv_norm(r"backbone\.psp_bottleneck", "backbone.bottleneck"),
    *conv_norm(r"backbone\.conv_sub1\.(\d)", r"backbone.sub1.\1"),
    *conv_norm(r"backbone\.conv_sub(2|4)", r"backbone.sub\1"),
    *conv_norm(r"neck\.cff_(24|12)\.conv_(low|high)", r"backbone.cff\1.conv_\2"),
    *conv_norm(r"decode_head\.convs\.0", "head.seg.0"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.seg.2.\1"),
    *conv_norm(r"auxiliary_head\.(\d)\.convs\.0", r"aux_heads.\1.0"),
    (r"auxiliary_head\.(\d)\.conv_seg\.(\w+)", r"aux_heads.\1.2.\2"),
), note="mmsegmentation ICNet + ICNeck on ResNetV1c (configs/_base_/models/icnet_r50-d8.py)")


@register_model("icnet", size_divisor=32, output_stride=8, test_kwargs=_NARROW_MMSEG,
                custom_ops=("adaptive_avg_pool",), checkpoints=(MMSEG_KEYS,))
def icnet_r18_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """ICNet as mmsegmentation builds it, ResNetV1c-18 (its BasicBlock: only the first 3x3 conv dilated): its
    icnet_r18-d8 checkpoints load here."""
    return _icnet_mmseg(DEPTHS[18], num_classes, **{"block": BasicBlock, "dilate_conv2": False, **kwargs})


@register_model("icnet", size_divisor=32, output_stride=8, test_kwargs=_NARROW_MMSEG,
                custom_ops=("adaptive_avg_pool",), checkpoints=(MMSEG_KEYS,))
def icnet_r50_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """ICNet as mmsegmentation builds it (PSPNet's pyramid, 1x1 branch convs, ReLU in each fusion branch, a
    ceil-mode max-pool, FCN head), ResNetV1c-50: its icnet_r50-d8 checkpoints load here."""
    return _icnet_mmseg(DEPTHS[50], num_classes, **kwargs)


@register_model("icnet", size_divisor=32, output_stride=8, test_kwargs=_NARROW_MMSEG,
                custom_ops=("adaptive_avg_pool",), checkpoints=(MMSEG_KEYS,))
def icnet_r101_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """ICNet as mmsegmentation builds it, ResNetV1c-101: its icnet_r101-d8 checkpoints load here."""
    return _icnet_mmseg(DEPTHS[101], num_classes, **kwargs)
