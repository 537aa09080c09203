"""ResNet-18/34/50/101 for segmentation (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016),
with the two changes segmentation networks make to it:

- **Output stride by dilation** (Chen et al., DeepLab, TPAMI 2018; Yu & Koltun, ICLR 2016): stages that would
  downsample past ``output_stride`` keep their resolution and dilate their 3x3 convs instead (8: stages 3-4
  at dilation 2 and 4; 16: stage 4 at dilation 2; 32: the classification network). As in mmsegmentation's
  ``contract_dilation``, the first block of a dilated stage uses half the stage's dilation.
- **Deep stem** (ResNetV1c, used by PSPNet, CCNet and mmsegmentation's checkpoints): three 3x3 convs in place
  of the 7x7, then max pooling; ``deep_stem=False`` is the original 7x7 stem. Its widths are ``stem_width``,
  ``stem_width``, ``2 * stem_width``: 64-64-128 by default, 32-32-64 at ``stem_width=32``, which is
  mmsegmentation's ResNetV1c (``stem_channels=64``, halved for the first two convs) and whose checkpoints'
  names ``MMSEG_V1C_KEYS`` maps.

ResNet-18/34 are built of basic blocks (two 3x3 convs), ResNet-50/101 of bottlenecks, v1.5 (the stride sits on
the 3x3 conv). In a dilated stage a basic block here dilates both 3x3 convs; mmsegmentation's BasicBlock dilates only
the first (its conv2 keeps padding 1, dilation 1), which ``dilate_conv2=False`` reproduces for its R-18 files.
``ResNet`` takes the block type (``block``, default ``Bottleneck``); ``resnet(depth)`` picks it from the depth
(``BLOCKS``), which ``DEPTHS`` alone cannot tell: ResNet-34 and -50 have the same stage depths.
``forward`` returns the four stage outputs; ``out_channels`` and ``strides`` describe them.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import ConvNormAct

# Stride and dilation of stages 1-4 for each output stride.
_SCHEDULES = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
}
# Blocks per stage; the block type of each depth is in BLOCKS (below the block classes).
DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class BasicBlock(nn.Module):
    """The ResNet-18/34 block: two 3x3 convs, the first carrying the stride; both dilated in a dilated stage, or
    only the first with ``dilate_conv2=False`` (mmsegmentation's BasicBlock, mmseg/models/backbones/resnet.py,
    03b0197: conv2 has padding 1 and no dilation, so its weights were trained for that receptive field)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d, dilate_conv2: bool = True) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvNormAct(in_channels, width, 3, stride, dilation, norm_layer=norm_layer)
        self.conv2 = ConvNormAct(width, out_channels, 3, dilation=dilation if dilate_conv2 else 1,
                                 norm_layer=norm_layer, act_layer=None)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvNormAct(in_channels, out_channels, 1, stride, norm_layer=norm_layer, act_layer=None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.conv2(self.conv1(x)) + shortcut)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvNormAct(in_channels, width, 1, norm_layer=norm_layer)
        self.conv2 = ConvNormAct(width, width, 3, stride, dilation, norm_layer=norm_layer)
        self.conv3 = ConvNormAct(width, out_channels, 1, norm_layer=norm_layer, act_layer=None)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvNormAct(in_channels, out_channels, 1, stride, norm_layer=norm_layer, act_layer=None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class ResNet(nn.Module):
    """A ResNet backbone returning its four stage outputs, at strides 4, 8, 16, 32 capped by ``output_stride``.

    ``dilate_conv2`` is passed to basic blocks (``BasicBlock``'s docstring); a bottleneck has one 3x3 conv,
    always dilated, and takes only the default."""

    def __init__(self, layers: tuple[int, int, int, int], output_stride: int = 8, deep_stem: bool = True,
                 stem_width: int = 64, base_width: int = 64, norm_layer: type[nn.Module] = nn.BatchNorm2d,
                 block: type[BasicBlock | Bottleneck] = Bottleneck, dilate_conv2: bool = True) -> None:
        super().__init__()
        if output_stride not in _SCHEDULES:
            raise ValueError(f"output_stride={output_stride}: expected one of {', '.join(map(str, _SCHEDULES))}")
        if not dilate_conv2 and not issubclass(block, BasicBlock):
            raise ValueError(f"dilate_conv2=False applies to BasicBlock only, got block={block.__name__}; "
                             f"leave dilate_conv2 at True for bottlenecks")
        block_kwargs = {} if dilate_conv2 else {"dilate_conv2": False}
        if deep_stem:
            self.stem = nn.Sequential(
                ConvNormAct(3, stem_width, 3, 2, norm_layer=norm_layer),
                ConvNormAct(stem_width, stem_width, 3, norm_layer=norm_layer),
                ConvNormAct(stem_width, stem_width * 2, 3, norm_layer=norm_layer),
                nn.MaxPool2d(3, 2, 1),
            )
            channels = stem_width * 2
        else:
            self.stem = nn.Sequential(ConvNormAct(3, stem_width, 7, 2, norm_layer=norm_layer), nn.MaxPool2d(3, 2, 1))
            channels = stem_width
        strides, dilations = _SCHEDULES[output_stride]
        self.stages = nn.ModuleList()
        self.out_channels: list[int] = []
        self.strides: list[int] = []
        total = 4
        for i, (depth, stride, dilation) in enumerate(zip(layers, strides, dilations)):
            width = base_width * 2**i
            blocks = []
            for j in range(depth):
                d = max(1, dilation // 2) if j == 0 and dilation > 1 else dilation
                blocks.append(block(channels, width, stride if j == 0 else 1, d, norm_layer, **block_kwargs))
                channels = width * block.expansion
            total *= stride
            self.stages.append(nn.Sequential(*blocks))
            self.out_channels.append(channels)
            self.strides.append(total)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)  # (B, C_stem, H/4, W/4)
        features = []
        for stage in self.stages:
            x = stage(x)  # (B, C_i, H/s_i, W/s_i)
            features.append(x)
        return features


# mmsegmentation's ResNetV1c (mmseg/models/backbones/resnet.py, 03b0197: _make_stem_layer; ResLayer in
# mmseg/models/utils/res_layer.py, 230246f): the stem is one flat Sequential of (conv, bn, ReLU) x 3, the stages
# are layer1 ... layer4, a bottleneck's norms bn1 ... bn3 sit beside conv1 ... conv3 and the shortcut of a
# stage's first block is downsample = (1x1 conv, bn). Key-mapping rules (models/keymaps.py) for the tables of
# the families built on it, the source's ResNet at ``source`` (a pattern) and ours at ``ours``: mmseg's
# EncoderDecoder holds it at backbone, its ICNet one level down (backbone.backbone). Its BasicBlock (R-18/34) has
# the same names (conv1, bn1, conv2, bn2, downsample), so the rules serve both block types.
def mmseg_v1c_keys(source: str = r"backbone", ours: str = "backbone",
                   deep_stem: bool = True) -> tuple[tuple[str, str], ...]:
    """The rules for an mmseg ResNetV1c at ``source`` (a pattern of its key prefix) into our ``ResNet`` at
    ``ours``; ``deep_stem=False``: mmseg's plain ``ResNet`` (its 7x7 stem is ``conv1`` + ``bn1``, the stages the
    same), ours with ``deep_stem=False``."""
    stem = ((rf"{source}\.conv1\.weight", rf"{ours}.stem.0.0.weight"), (rf"{source}\.bn1\.(\w+)", rf"{ours}.stem.0.1.\1"))
    if deep_stem:
        stem = (*((rf"{source}\.stem\.{3 * i}\.(\w+)", rf"{ours}.stem.{i}.0.\1") for i in range(3)),
                *((rf"{source}\.stem\.{3 * i + 1}\.(\w+)", rf"{ours}.stem.{i}.1.\1") for i in range(3)))
    return (
        *stem,
        *((rf"{source}\.layer{s + 1}\.(\d+)\.conv(\d)\.weight", rf"{ours}.stages.{s}.\1.conv\2.0.weight")
          for s in range(4)),
        *((rf"{source}\.layer{s + 1}\.(\d+)\.bn(\d)\.(\w+)", rf"{ours}.stages.{s}.\1.conv\2.1.\3")
          for s in range(4)),
        *((rf"{source}\.layer{s + 1}\.0\.downsample\.(\d)\.(\w+)", rf"{ours}.stages.{s}.0.downsample.\1.\2")
          for s in range(4)),
    )


MMSEG_V1C_KEYS = mmseg_v1c_keys()


BLOCKS: dict[int, type[BasicBlock | Bottleneck]] = {18: BasicBlock, 34: BasicBlock, 50: Bottleneck, 101: Bottleneck}


def resnet(depth: int = 50, **kwargs) -> ResNet:
    """ResNet-18, -34, -50 or -101 (``DEPTHS``, ``BLOCKS``); keyword arguments as ``ResNet``'s."""
    if depth not in DEPTHS:
        raise ValueError(f"ResNet depth {depth}: expected one of {', '.join(map(str, DEPTHS))}")
    return ResNet(DEPTHS[depth], block=BLOCKS[depth], **kwargs)
