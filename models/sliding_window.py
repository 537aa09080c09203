"""The sliding-window baseline and its fully convolutional equivalent: the step from patch classification to
dense prediction (Ciresan et al., "Deep Neural Networks Segment Neuronal Membranes in Electron Microscopy
Images", NIPS 2012, classified every pixel from the window around it; Long, Shelhamer & Darrell, "Fully
Convolutional Networks for Semantic Segmentation", CVPR 2015, Sec. 3.1, showed that the same convolutions run
once over the whole image compute every window's answer while sharing what overlapping windows have in common).

``PatchClassifier`` labels the centre pixel of one k x k window (k odd, 3 or more): (k - 1) / 2 unpadded 3x3
conv-BN-ReLU layers take the window to 1 x 1, then a 1x1 conv-BN-ReLU and a 1x1 classifier. Two ways to run
it over an image, zero-padded by k // 2 so that every pixel has a full window (the padding is zero in the
normalized image, i.e. the dataset's mean colour):

- ``sliding_window``, the naive method: cut out the H x W windows (an im2col, written as a conv with one-hot
  kernels so that the graph stays Conv/Reshape/Transpose) and classify each one as its own sample; nothing is
  shared between overlapping windows.
- ``sliding_window_fcn``: the same layers applied once to the padded image; each output pixel is the same
  function of the same window.

Both give the same labels with the same weights (tests/test_model_cnn.py); benchmarks/sliding_window.py prints
how much the shared computation saves at a few sizes. The naive graph holds H * W windows at once: memory
grows with k^2 times the image, so keep it to small frames. No parameter count is published for either (the
architecture is a teaching baseline, not a paper's model).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ConvNormAct, init_conv_bn
from .registry import register_model


class PatchClassifier(nn.Sequential):
    """(N, 3, k + m, k + n) -> (N, num_classes, m + 1, n + 1): class scores of the centre pixel of each k x k
    window (one window: a 1 x 1 output)."""

    def __init__(self, num_classes: int, window: int = 7, width: int = 32, in_channels: int = 3) -> None:
        if window < 3 or window % 2 == 0:
            raise ValueError(f"window={window}: expected an odd size of at least 3 (the window has a centre pixel)")
        layers: list[nn.Module] = []
        for i in range((window - 1) // 2):
            layers.append(ConvNormAct(in_channels if i == 0 else width, width, 3))
            layers[-1][0].padding = (0, 0)  # unpadded: each layer takes 2 off the window
        layers += [ConvNormAct(width, width, 1), nn.Conv2d(width, num_classes, 1)]
        super().__init__(*layers)
        self.window = window


def window_kernel(window: int, channels: int = 3) -> torch.Tensor:
    """(channels * window^2, channels, window, window) one-hot kernels: a conv with them writes the window
    around each pixel into the channels, in (channel, row, column) order."""
    size = channels * window * window
    return torch.eye(size).reshape(size, channels, window, window)


class SlidingWindowSegmenter(nn.Module):
    """The patch classifier over every pixel of an image: ``forward(images)`` -> logits (N, K, H, W).

    ``shared=False`` classifies each window as its own sample (the naive method); ``shared=True`` runs the
    classifier's convolutions once over the padded image. Maps inside the naive model are windows, not
    image-aligned (its registry entry says ``maps_follow_input=False``).
    """

    aux_heads = None

    def __init__(self, num_classes: int, window: int = 7, width: int = 32, shared: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.shared = shared
        self.head = PatchClassifier(num_classes, window, width)
        self.apply(init_conv_bn)
        if not shared:
            self.register_buffer("windows", window_kernel(window), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        k = self.head.window
        x = F.pad(images, (k // 2,) * 4)  # (N, 3, H + k - 1, W + k - 1), zeros: the mean colour
        if self.shared:
            return self.head(x)  # (N, K, H, W)
        n, c, h, w = images.shape
        patches = F.conv2d(x, self.windows)  # (N, 3 k^2, H, W): the window around each pixel
        patches = patches.permute(0, 2, 3, 1).reshape(n * h * w, c, k, k)  # one sample per window
        scores = self.head(patches)  # (N H W, K, 1, 1)
        return scores.reshape(n, h, w, self.num_classes).permute(0, 3, 1, 2)  # (N, K, H, W)


_SMALL = {"width": 8}


@register_model("sliding_window", size_divisor=1, output_stride=1, test_kwargs=_SMALL, maps_follow_input=False)
def sliding_window(num_classes: int = 19, window: int = 7, width: int = 32) -> nn.Module:
    """Sliding-window baseline: a 7x7-window patch classifier run window by window (nothing shared)."""
    return SlidingWindowSegmenter(num_classes, window, width, shared=False)


@register_model("sliding_window", size_divisor=1, output_stride=1, test_kwargs=_SMALL)
def sliding_window_fcn(num_classes: int = 19, window: int = 7, width: int = 32) -> nn.Module:
    """The same patch classifier as one fully convolutional pass: every window's answer, shared computation."""
    return SlidingWindowSegmenter(num_classes, window, width, shared=True)
