"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, https://arxiv.org/abs/1505.04597).

A contracting path of four levels (two 3x3 convs + ReLU, then 2x2 max pooling; 64, 128, 256, 512 channels)
and a bottom of 1024, then an expanding path that at each level up-convolves 2x2 (a transposed conv halving
the channels), concatenates the contracting path's map of that level and applies two 3x3 convs; a 1x1 conv
gives the class scores. With one input channel and two classes (the paper's cell data) the layer list gives
31,030,658 parameters (the convs with biases; the paper states no count of its own).

Three variants:

- ``unet``, the original: unpadded ("valid") 3x3 convs, so every conv loses a pixel each side and the
  expanding path centre-crops the contracting path's larger map before concatenation (the paper's
  crop-and-concat). The paper's tile is 572x572 in, 388x388 out; it predicts a whole image by overlapping
  tiles and extrapolates the missing context at the border by mirroring (Fig. 2). Here the mirroring is part
  of the network: the input is reflect-padded by exactly the context the convs consume (94 px a side at
  depth 4, a little more than the 92 of the paper's tile so that every pooled map has an even size) and the
  output cropped to the input, so ``forward`` meets the registry's contract (logits at the input size) for any
  size that is a multiple of 16 and at least 95 px (reflect padding needs a side longer than the pad).
- ``unet_padded``: the same layers with zero-padded 3x3 convs, the form most reimplementations use: maps keep
  their size, no cropping, any multiple of 16. Same parameter count.
- ``unet_mmseg``: mmsegmentation's U-Net (``MMSegUNetBackbone``, at the end): BatchNorm, bilinear x2 + 1x1
  conv-BN-ReLU in place of the transposed conv, an FCN head (3x3 conv-BN-ReLU, dropout, 1x1) on the last decoder
  map; its fcn_unet_s5-d16 checkpoints load there. 28.99M parameters at 19 classes.

``norm_layer`` adds a norm after each 3x3 conv (not in the paper; BatchNorm makes the deep plain stack easier
to train from scratch); ``None`` (the default) is the paper's. Dropout (0.5) at the end of the contracting
path is the paper's ("drop-out layers at the end of the contracting path").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ConvNormAct, SegmentationModel, init_conv_bn
from .heads.fcn import FCNHead, FCNHeadOn
from .keymaps import KeyMap
from .registry import register_model


class DoubleConv(nn.Sequential):
    """Two 3x3 convs, each followed by [norm and] ReLU; ``padding`` 0 (valid) or 1 (same)."""

    def __init__(self, in_channels: int, out_channels: int, padding: int,
                 norm_layer: type[nn.Module] | None = None) -> None:
        layers: list[nn.Module] = []
        for i in range(2):
            layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=padding,
                                    bias=norm_layer is None))
            if norm_layer is not None:
                layers.append(norm_layer(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNetEncoder(nn.Module):
    """The contracting path: ``forward`` returns the map of each level before its pooling, and the bottom
    (strides 1, 2, ..., 2**depth); ``out_channels`` lists their widths."""

    def __init__(self, in_channels: int = 3, base_width: int = 64, depth: int = 4, padding: int = 1,
                 norm_layer: type[nn.Module] | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        self.out_channels = [base_width * 2**i for i in range(depth + 1)]
        self.levels = nn.ModuleList()
        previous = in_channels
        for width in self.out_channels:
            self.levels.append(DoubleConv(previous, width, padding, norm_layer))
            previous = width
        self.pool = nn.MaxPool2d(2, 2)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else self.pool(x))  # (B, C_i, ~H / 2**i, ~W / 2**i)
            features.append(x)
        features[-1] = self.dropout(features[-1])
        return features


def center_crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The centre of ``x`` at the spatial size of ``like`` (the paper's crop before concatenation)."""
    dh = (x.shape[-2] - like.shape[-2]) // 2
    dw = (x.shape[-1] - like.shape[-1]) // 2
    return x[..., dh:dh + like.shape[-2], dw:dw + like.shape[-1]]


class UNetDecoder(nn.Module):
    """The expanding path and the 1x1 classifier: logits at the encoder's first level (stride 1)."""

    def __init__(self, encoder_channels: list[int], num_classes: int, padding: int = 1,
                 norm_layer: type[nn.Module] | None = None) -> None:
        super().__init__()
        widths = encoder_channels[::-1]  # bottom first
        self.ups = nn.ModuleList(nn.ConvTranspose2d(w, w // 2, 2, 2) for w in widths[:-1])
        self.levels = nn.ModuleList(DoubleConv(w, w // 2, padding, norm_layer) for w in widths[:-1])
        self.classifier = nn.Conv2d(widths[-1], num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]  # (B, C_bottom, h, w)
        for up, level, skip in zip(self.ups, self.levels, features[-2::-1]):
            x = up(x)  # (B, C / 2, 2h, 2w)
            x = level(torch.cat([center_crop(skip, x), x], dim=1))  # (B, C / 2, 2h - 4 (valid) or 2h, ...)
        return self.classifier(x)  # (B, num_classes, ...)


def _simulate(size: int, depth: int) -> int | None:
    """Output size of the valid-conv U-Net for an input of ``size``, or None where a pooled map would be odd
    or a map vanish."""
    skips = []
    for _ in range(depth):
        size -= 4
        if size <= 0 or size % 2:
            return None
        skips.append(size)
        size //= 2
    size -= 4
    for skip in reversed(skips):
        size *= 2
        if size <= 0 or size > skip or (skip - size) % 2:
            return None
        size -= 4
    return size if size > 0 else None


def overlap_tile(depth: int) -> tuple[int, int]:
    """(pad, crop) for the valid-conv U-Net: reflect-padding a side of any multiple of 2**depth by ``pad``
    makes every pooled map even, and the output is then the input plus ``crop`` on each side."""
    multiple = 2**depth
    for pad in range(16 * multiple):
        outs = [_simulate(k * multiple + 2 * pad, depth) for k in (64, 65)]
        if all(o is not None and o >= k * multiple and (o - k * multiple) % 2 == 0 for o, k in zip(outs, (64, 65))):
            return pad, (outs[0] - 64 * multiple) // 2
    raise AssertionError(f"no overlap-tile padding for depth {depth}")  # unreachable for depth >= 1


class UNet(nn.Module):
    """encoder -> decoder, with the original's mirror padding and output crop when ``padding=0``.

    ``forward(images)`` returns logits ``(N, num_classes, H, W)``, as every registered model does.
    """

    aux_heads = None

    def __init__(self, num_classes: int, in_channels: int = 3, base_width: int = 64, depth: int = 4,
                 padding: int = 1, norm_layer: type[nn.Module] | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = UNetEncoder(in_channels, base_width, depth, padding, norm_layer)
        self.head = UNetDecoder(self.backbone.out_channels, num_classes, padding, norm_layer)
        self.pad, self.crop = overlap_tile(depth) if padding == 0 else (0, 0)
        self.apply(init_conv_bn)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")  # (B, C, H + 2 pad, W + 2 pad)
        logits = self.head(self.backbone(x))  # (B, K, H + 2 crop, W + 2 crop)
        if self.crop:
            logits = logits[..., self.crop:logits.shape[-2] - self.crop, self.crop:logits.shape[-1] - self.crop]
        return logits  # (B, K, H, W)


# Numerical tests: 8 channels at the top instead of 64; the original also three levels instead of four, since
# its 94-pixel mirror padding at four levels needs sides of at least 95 (46 at three).
# Valid convs shrink every map, so no map is input / stride (``maps_follow_input=False``); size_divisor 16
# comes from the padding arithmetic (``overlap_tile``), which tests/test_model_cnn.py checks.
@register_model("unet", size_divisor=16, output_stride=1, test_kwargs={"base_width": 8, "depth": 3},
                maps_follow_input=False)
def unet(num_classes: int = 2, **kwargs) -> nn.Module:
    """The original U-Net: valid 3x3 convs, crop-and-concat skips, mirror-padded input (sides >= 96 px)."""
    return UNet(num_classes, padding=0, **kwargs)


@register_model("unet", size_divisor=16, output_stride=1, test_kwargs={"base_width": 8})
def unet_padded(num_classes: int = 2, **kwargs) -> nn.Module:
    """U-Net with zero-padded 3x3 convs: maps keep their size, any multiple of 16."""
    return UNet(num_classes, padding=1, **kwargs)


# ------------------------------------------------------------------------------ mmsegmentation's U-Net

class MMSegUNetBackbone(nn.Module):
    """mmsegmentation's UNet backbone (mmseg/models/backbones/unet.py, 28b5733) as configs/_base_/models/
    fcn_unet_s5-d16.py (0631053) sets it: five stages, 3x3 conv-BN-ReLU pairs, max pooling before stages 2-5
    (``UNetEncoder`` with BatchNorm and no dropout), and a decoder that upsamples each map bilinearly x2 and
    reduces it with a 1x1 conv-BN-ReLU (``InterpConv``; ours a transposed conv) before concatenating
    ``[skip, x]`` and a conv-BN-ReLU pair. Returns the decoder's outputs, bottom first (mmseg's ``dec_outs``:
    strides 16, 8, 4, 2, 1)."""

    def __init__(self, in_channels: int = 3, base_width: int = 64, depth: int = 4,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.encoder = UNetEncoder(in_channels, base_width, depth, 1, norm_layer, dropout=0.0)
        widths = self.encoder.out_channels[::-1]  # bottom first
        self.ups = nn.ModuleList(ConvNormAct(w, w // 2, 1, norm_layer=norm_layer) for w in widths[:-1])
        self.levels = nn.ModuleList(DoubleConv(w, w // 2, 1, norm_layer) for w in widths[:-1])
        self.out_channels = widths
        self.strides = [2**i for i in range(depth, -1, -1)]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.encoder(images)
        x = features[-1]  # (B, C_bottom, H/16, W/16)
        outs = [x]
        for up, level, skip in zip(self.ups, self.levels, features[-2::-1]):
            x = up(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))  # (B, C / 2, 2h, 2w)
            x = level(torch.cat([skip, x], dim=1))  # (B, C / 2, 2h, 2w)
            outs.append(x)
        return outs


# mmsegmentation's fcn_unet_s5-d16 checkpoints (configs/unet/unet-s5-d16_fcn_4xb4-40k_drive-64x64.py,
# ..._hrf-256x256.py, -160k_cityscapes-512x1024.py and the ce-1.0-dice-3.0 files of DRIVE, STARE, CHASE_DB1 and
# HRF, on configs/_base_/models/fcn_unet_s5-d16.py). Keys:
# backbone.encoder.{i} = ([MaxPool2d,] BasicConvBlock), its convs.{k} ConvModules; backbone.decoder.{i} an
# UpConvBlock of the stage-(i + 1) map into stage i: upsample.interp_upsample = (Upsample, ConvModule 1x1) and
# conv_block.convs.{k}; ours count the decoder from the bottom. decode_head: FCNHead on dec_outs[4] (64 -> 64,
# num_convs 1), auxiliary_head: FCNHead on dec_outs[3] (128 -> 64).
def _mmseg_unet_rules(depth: int = 4) -> tuple[tuple[str, str], ...]:
    rules = []
    for k in range(2):  # a BasicConvBlock's ConvModules, our DoubleConv's (conv, bn, ReLU) x 2
        rules += [(rf"backbone\.encoder\.0\.0\.convs\.{k}\.conv\.(\w+)", rf"backbone.encoder.levels.0.{3 * k}.\1"),
                  (rf"backbone\.encoder\.0\.0\.convs\.{k}\.bn\.(\w+)", rf"backbone.encoder.levels.0.{3 * k + 1}.\1"),
                  (rf"backbone\.encoder\.(\d)\.1\.convs\.{k}\.conv\.(\w+)", rf"backbone.encoder.levels.\1.{3 * k}.\2"),
                  (rf"backbone\.encoder\.(\d)\.1\.convs\.{k}\.bn\.(\w+)", rf"backbone.encoder.levels.\1.{3 * k + 1}.\2")]
    for i in range(depth):
        j = depth - 1 - i
        mm = rf"backbone\.decoder\.{i}"
        rules += [(rf"{mm}\.upsample\.interp_upsample\.1\.conv\.(\w+)", rf"backbone.ups.{j}.0.\1"),
                  (rf"{mm}\.upsample\.interp_upsample\.1\.bn\.(\w+)", rf"backbone.ups.{j}.1.\1")]
        rules += [(rf"{mm}\.conv_block\.convs\.{k}\.conv\.(\w+)", rf"backbone.levels.{j}.{3 * k}.\1") for k in range(2)]
        rules += [(rf"{mm}\.conv_block\.convs\.{k}\.bn\.(\w+)", rf"backbone.levels.{j}.{3 * k + 1}.\1") for k in range(2)]
    for head, ours in (("decode_head", "head.seg"), ("auxiliary_head", "aux_heads.0")):
        rules += [(rf"{head}\.convs\.0\.conv\.(\w+)", rf"{ours}.0.0.\1"), (rf"{head}\.convs\.0\.bn\.(\w+)", rf"{ours}.0.1.\1"),
                  (rf"{head}\.conv_seg\.(\w+)", rf"{ours}.2.\1")]
    return tuple(rules)


MMSEG_KEYS = KeyMap("mmseg", _mmseg_unet_rules(),
                    note="mmsegmentation UNet (s5-d16) with an FCN head (configs/_base_/models/fcn_unet_s5-d16.py)")


@register_model("unet", size_divisor=16, output_stride=1, test_kwargs={"base_width": 8}, checkpoints=(MMSEG_KEYS,))
def unet_mmseg(num_classes: int = 2, base_width: int = 64, **kwargs) -> nn.Module:
    """U-Net as mmsegmentation builds it (BatchNorm, bilinear x2 + 1x1 conv-BN-ReLU up-sampling, an FCN head on
    the last decoder map): its fcn_unet_s5-d16 checkpoints load here."""
    backbone = MMSegUNetBackbone(base_width=base_width, **kwargs)
    head = FCNHeadOn(base_width, num_classes, base_width)  # decode_head: 64 -> 64, dropout 0.1
    aux = FCNHead(2 * base_width, num_classes, base_width)  # auxiliary_head on dec_outs[3], training only
    model = SegmentationModel(backbone, head, num_classes, aux_heads=[aux], aux_indices=[3])
    model.apply(init_conv_bn)
    return model
