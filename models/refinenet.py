"""RefineNet (Lin, Milan, Shen, Reid, "RefineNet: Multi-Path Refinement Networks for High-Resolution Semantic
Segmentation", CVPR 2017, https://arxiv.org/abs/1611.06612).

The shared ResNet as the paper has it (7x7 stem, no dilation: stages at strides 4, 8, 16, 32) and four
cascaded RefineNet blocks. RefineNet-4 reads stage 4 alone at 512 channels; RefineNet-3, -2 and -1 each fuse
the previous block's output with stage 3, 2 and 1 at 256 channels. A block is

- **adaptive convolutions**: per input path, two residual conv units (RCU: ReLU-conv3x3-ReLU-conv3x3 plus the
  identity; no BatchNorm anywhere in the decoder, as the paper). A backbone feature is first brought to the
  block's width by a 3x3 conv, as the official code does (``add_input_path_adapt_block``);
- **multi-resolution fusion**: a 3x3 conv per path to the block's width, bilinear upsampling to the largest
  path's size, sum;
- **chained residual pooling** (CRP): ReLU, then a chain of pooling blocks (5x5 max pooling, stride 1, then a
  3x3 conv), each block's output added to the running sum;
- **output convolutions**: one RCU. RefineNet-1 has two more before the classifier, as the paper places
  them, so three RCUs lie between any two blocks and between RefineNet-1 and the classifier.

Dropout (0.5) follows stages 3 and 4 and precedes the classifier, a 3x3 conv at stride 4, as in the official
code (guosheng/refinenet, main/gen_network_featnet_resnet.m and gen_network_loss_group.m).

Choices made where the paper leaves room, all from the authors' release:

- CRP has **4 pooling blocks**, pool then conv: ``chained_pool_num=4`` in the training configuration
  (main/gen_net_opts_model_type1.m; the first release of December 2016 used 2 and the comment still says
  "set the pooling number to 2 or 4"), and the ResNet-101 PASCAL VOC model as Nekrasov's PyTorch port
  (DrSleep/refinenet-pytorch, linked from the official README) runs it: ``CRPBlock(..., 4)`` with
  max pooling before each conv. The release's default ``convbeforepool`` order is the "improved residual
  pooling" of its later models, which the README says differs from the CVPR paper.
- The official code places the RCUs between two blocks as three output RCUs of the lower block and none on
  that path in the next one; the paper's split (one output RCU, two adaptive RCUs on the path) is the same
  chain of layers, widths included (RefineNet-4's chain stays at 512 until RefineNet-3's fusion conv).
- Biases: the first conv of an RCU and the classifier have one; the other decoder convs do not.
- Upsampling is bilinear with ``align_corners=False``, like every model here, because TensorRT runs that
  Resize directly (its table has no cubic mode). The official code resizes with MATLAB's ``imresize``
  (bicubic, main/my_resize.m), the PyTorch port bilinearly with ``align_corners=True``. It resizes to the
  target's size, so one graph serves any H and W.

No parameter count is published. Built for 21 classes, ``refinenet_r101`` has exactly as many parameters as the
PyTorch port's ``rf101(21)`` (tests/test_model_cnn_refinenet_icnet.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.resnet import DEPTHS, ResNet
from .base import SegmentationModel
from .registry import register_model


def conv3x3(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    """3x3 conv at stride 1, size-preserving; no bias unless asked (the official decoder has none but in RCUs)."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """RCU: ``x + conv(relu(conv(relu(x))))``, both convs 3x3 at the input's width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels, bias=True)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class MultiResolutionFusion(nn.Module):
    """One 3x3 conv per path to ``channels``; every path upsampled to the last (highest-resolution) path's
    size and summed. The cascade passes its paths in order of increasing resolution."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(c, channels) for c in in_channels)

    def forward(self, paths: list[torch.Tensor]) -> torch.Tensor:
        size = paths[-1].shape[-2:]
        out = self.convs[-1](paths[-1])  # (B, channels, h, w): the largest path
        for conv, x in zip(self.convs[:-1], paths[:-1]):
            out = out + F.interpolate(conv(x), size=size, mode="bilinear", align_corners=False)
        return out


class ChainedResidualPooling(nn.Module):
    """ReLU, then ``num_blocks`` pooling blocks in a chain (5x5 max pooling at stride 1, 3x3 conv), each
    block's output added to the sum: pooled context over ever larger windows, at the input's resolution."""

    def __init__(self, channels: int, num_blocks: int = 4) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList(conv3x3(channels, channels) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        top = x
        for conv in self.convs:
            top = conv(self.pool(top))  # (B, C, h, w)
            x = x + top
        return x


class RefineNetBlock(nn.Module):
    """Adaptive convs per path, fusion (for more than one path), chained residual pooling, output RCUs.

    ``in_channels[i]`` is the width of path ``i``, paths in order of increasing resolution; ``adapt[i]``
    says whether path ``i`` is a backbone feature, which a 3x3 conv first brings to ``channels``. Returns
    ``(B, channels, h, w)`` at the last path's size."""

    def __init__(self, in_channels: list[int], adapt: list[bool], channels: int, num_output_units: int = 1,
                 num_pool_blocks: int = 4) -> None:
        super().__init__()
        self.paths = nn.ModuleList()
        widths = []
        for c, a in zip(in_channels, adapt):
            width = channels if a else c
            first = [conv3x3(c, width)] if a else []
            self.paths.append(nn.Sequential(*first, ResidualConvUnit(width), ResidualConvUnit(width)))
            widths.append(width)
        self.fusion = MultiResolutionFusion(widths, channels) if len(widths) > 1 else None
        self.pooling = ChainedResidualPooling(channels, num_pool_blocks)
        self.output = nn.Sequential(*(ResidualConvUnit(channels) for _ in range(num_output_units)))

    def forward(self, paths: list[torch.Tensor]) -> torch.Tensor:
        paths = [path(x) for path, x in zip(self.paths, paths)]
        x = self.fusion(paths) if self.fusion is not None else paths[0]  # (B, channels, h, w)
        return self.output(self.pooling(x))


class RefineNetHead(nn.Module):
    """The four-block cascade on the backbone's stage outputs (strides 4-32); logits at stride 4."""

    def __init__(self, in_channels: list[int], num_classes: int, channels: tuple[int, int] = (512, 256),
                 num_pool_blocks: int = 4, dropout: float = 0.5) -> None:
        super().__init__()
        top, rest = channels
        c1, c2, c3, c4 = in_channels
        self.dropout = nn.Dropout(dropout)
        self.refine4 = RefineNetBlock([c4], [True], top, 1, num_pool_blocks)
        self.refine3 = RefineNetBlock([top, c3], [False, True], rest, 1, num_pool_blocks)
        self.refine2 = RefineNetBlock([rest, c2], [False, True], rest, 1, num_pool_blocks)
        self.refine1 = RefineNetBlock([rest, c1], [False, True], rest, 3, num_pool_blocks)
        self.classifier = conv3x3(rest, num_classes, bias=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        l1, l2, l3, l4 = features
        l3, l4 = self.dropout(l3), self.dropout(l4)  # the official code drops out the stages wider than 512
        x = self.refine4([l4])  # (B, 512, H/32, W/32)
        x = self.refine3([x, l3])  # (B, 256, H/16, W/16)
        x = self.refine2([x, l2])  # (B, 256, H/8, W/8)
        x = self.refine1([x, l1])  # (B, 256, H/4, W/4)
        return self.classifier(self.dropout(x))  # (B, num_classes, H/4, W/4)


def _refinenet(layers: tuple[int, int, int, int], num_classes: int, channels: tuple[int, int] = (512, 256),
               base_width: int = 64, stem_width: int = 64, num_pool_blocks: int = 4) -> SegmentationModel:
    backbone = ResNet(layers, output_stride=32, deep_stem=False, stem_width=stem_width, base_width=base_width)
    head = RefineNetHead(backbone.out_channels, num_classes, channels, num_pool_blocks)
    return SegmentationModel(backbone, head, num_classes)


# Numerical tests: a quarter of the widths (every block and every repeat kept).
_NARROW = {"base_width": 16, "stem_width": 16, "channels": (128, 64)}


@register_model("refinenet", size_divisor=32, output_stride=4, test_kwargs=_NARROW)
def refinenet_r101(num_classes: int = 19, **kwargs) -> nn.Module:
    """RefineNet, ResNet-101 (7x7 stem, output stride 32), four cascaded RefineNet blocks: the paper's model."""
    return _refinenet(DEPTHS[101], num_classes, **kwargs)


@register_model("refinenet", size_divisor=32, output_stride=4, test_kwargs=_NARROW)
def refinenet_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """RefineNet, ResNet-50 (7x7 stem, output stride 32), four cascaded RefineNet blocks."""
    return _refinenet(DEPTHS[50], num_classes, **kwargs)
