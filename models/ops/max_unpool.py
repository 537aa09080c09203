"""SegNet's max unpooling (Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", TPAMI 2017) as the custom op ``seg::max_unpool``; its ONNX side is
export/ops/max_unpool.py.

SegNet's decoder puts each value of its coarse map back where the encoder's 2x2 max pooling found the
maximum, zeros elsewhere. PyTorch says that with two ops and an integer tensor between them
(``max_pool2d(..., return_indices=True)``, ``max_unpool2d``); TensorRT has neither a MaxPool indices output nor
MaxUnpool (onnx-tensorrt operators.md). Here the pair is one op of float tensors, ``max_unpool(values,
source)``: the indices are recomputed from ``source``, the map the encoder pooled, so no integer tensor
crosses the graph, and every target lowers it with comparisons against the window's maximum.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import define_op


def max_unpool_reference(values: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Max unpooling after 2x2, stride-2 max pooling, exactly PyTorch's pair.

    source: (B, C, H, W), the map that was pooled; values: (B, C, H // 2, W // 2), the decoder's map at the
    pooled size. Returns (B, C, H, W): each value at the position of its window's maximum in ``source`` (the
    first in raster order on ties, as ``max_pool2d`` keeps it), zeros elsewhere and in the last row or
    column of an odd size, which pooling (floor mode) never read.
    """
    _, indices = F.max_pool2d(source, 2, 2, return_indices=True)  # (B, C, H//2, W//2), flat in each plane
    return F.max_unpool2d(values, indices, 2, 2, output_size=source.shape[-2:])  # (B, C, H, W)


def sample_inputs(batch: int, h: int, w: int, rng: np.random.Generator) -> list[np.ndarray]:
    """values at the pooled size h x w, and a source of 2h x 2w plus one row (column) where h (w) is odd, so
    odd source sizes are covered; the source takes three levels only, so windows with tied maxima are common."""
    source = rng.integers(0, 3, (batch, 3, 2 * h + h % 2, 2 * w + w % 2)).astype(np.float32)
    return [rng.standard_normal((batch, 3, h, w)).astype(np.float32), source]


def definition(values: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Window by window: the first maximum of each 2x2 window of ``source`` in raster order gets the value."""
    b, c, h, w = source.shape
    out = np.zeros_like(source)
    for n in range(b):
        for k in range(c):
            for i in range(h // 2):
                for j in range(w // 2):
                    window = source[n, k, 2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel()
                    first = int(np.argmax(window))  # numpy's argmax returns the first maximum too
                    out[n, k, 2 * i + first // 2, 2 * j + first % 2] = values[n, k, i, j]
    return out


max_unpool = define_op("max_unpool", max_unpool_reference, sample_inputs, definition)
