"""The pyramid pooling module and head of PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017,
https://arxiv.org/abs/1612.01105).

The module pools the feature map to bin x bin averages at several scales (1, 2, 3, 6: the whole image down to
sub-regions), reduces each pooled map with a 1x1 conv-BN-ReLU, upsamples it back bilinearly and concatenates
it with the input, giving every pixel a summary of its global and regional context. The head then fuses with
a 3x3 conv-BN-ReLU, applies dropout (0.1) and classifies with a 1x1 conv. Concatenation order (input, then
bins in the given order) and one ``channels`` for the reductions and the fusion follow mmsegmentation's PSPHead;
the first author's PyTorch code (hszhao/semseg) is the same for bins 1, 2, 3, 6 on 2048 channels (512 each).

Deployment note: adaptive average pooling to a size that does not divide the input has windows of unequal
size (PyTorch's bin i along a side of n spans floor(i * n / b) .. ceil((i + 1) * n / b)), which ONNX's
AveragePool cannot express: exporters bake the windows of the traced size (mmdeploy bakes kernel = in // out;
torch.onnx's dynamo exporter likewise, see tests/test_head_psp.py). All pooling therefore goes through
``adaptive_avg_pool``, the one place a custom op with an exact lowering can take over. The upsampling uses
``align_corners=False`` by default (mmsegmentation's default; hszhao/semseg used True) and ``align_corners=True``
where asked (mmseg's PPM resizes with its head's option: mmseg/models/decode_heads/psp_head.py, ``PPM.forward``;
its Cityscapes 769x769 configs set it); TensorRT runs either Resize directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import ConvNormAct
from ..ops.adaptive_pool import adaptive_avg_pool as _adaptive_avg_pool_op

BINS = (1, 2, 3, 6)


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, bins, bins): the average of each of bins x bins windows, PyTorch's adaptive bin
    edges. The custom op ``seg::adaptive_avg_pool`` (models/ops/adaptive_pool.py): exported, its lowering
    follows the input size, so one PSPNet engine serves every H and W in its profile."""
    return _adaptive_avg_pool_op(x, bins)


class PyramidPoolingModule(nn.Module):
    """(B, C, h, w) -> (B, C + len(bins) * channels, h, w): the input and its pooled, reduced, upsampled
    pyramid levels, concatenated; the input first (PSPHead), or last (``input_first=False``: mmsegmentation's
    ICNet, ``torch.cat(psp_modules(x) + [x])``, whose bottleneck's weights read that order). ``align_corners``:
    the levels' upsampling."""

    def __init__(self, in_channels: int, channels: int, bins: tuple[int, ...] = BINS,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d, input_first: bool = True,
                 align_corners: bool = False) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.input_first = input_first
        self.align_corners = align_corners
        self.stages = nn.ModuleList(ConvNormAct(in_channels, channels, 1, norm_layer=norm_layer) for _ in self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        levels = []
        for bins, stage in zip(self.bins, self.stages):
            pooled = stage(adaptive_avg_pool(x, bins))  # (B, channels, bins, bins)
            levels.append(F.interpolate(pooled, size=size, mode="bilinear",
                                        align_corners=self.align_corners))  # (B, channels, h, w)
        levels = [x, *levels] if self.input_first else [*levels, x]
        return torch.cat(levels, dim=1)  # (B, C + len(bins) * channels, h, w)


class PSPHead(nn.Module):
    """PSPNet's head on one map (or the last of a feature list): logits (B, num_classes, h, w) at that map's
    stride.

    ``channels`` is the width of every pyramid level and of the fusion conv; by default
    ``in_channels // len(bins)``, the paper's reduction of each level to 1/N of the input for N levels (a
    quarter for the four default bins: 512 on a ResNet's 2048 channels, as hszhao/semseg and mmsegmentation).
    ``align_corners``: the pyramid's upsampling (PyramidPoolingModule).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int | None = None, bins: tuple[int, ...] = BINS,
                 dropout: float = 0.1, norm_layer: type[nn.Module] = nn.BatchNorm2d,
                 align_corners: bool = False) -> None:
        super().__init__()
        if channels is None:
            channels = in_channels // len(bins)
        if channels < 1:
            raise ValueError(f"PSPHead: channels={channels} (in_channels={in_channels}, {len(bins)} bins); "
                             f"pass channels >= 1")
        self.ppm = PyramidPoolingModule(in_channels, channels, bins, norm_layer, align_corners=align_corners)
        self.bottleneck = ConvNormAct(in_channels + len(self.ppm.bins) * channels, channels, 3, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        x = features[-1] if isinstance(features, (list, tuple)) else features  # (B, C_in, h, w)
        x = self.bottleneck(self.ppm(x))  # (B, channels, h, w)
        return self.classifier(self.dropout(x))  # (B, num_classes, h, w)
