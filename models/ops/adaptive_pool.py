"""Adaptive average pooling to ``bins`` x ``bins`` (the pyramid pooling of PSPNet, Zhao et al., "Pyramid Scene
Parsing Network", CVPR 2017, and ICNet) as the custom op ``seg::adaptive_avg_pool``; its ONNX side is
export/ops/adaptive_pool.py.

Exported as plain PyTorch, adaptive pooling is resolved at the traced size: a fixed AveragePool, or index
tables for sizes the bins do not divide, so one graph with dynamic H and W is silently wrong (or fails) at
every other size; mmdeploy's rewrite likewise bakes ``kernel = in // out`` in. As one op, every target
lowers it with the bin boundaries computed from the input's size in the graph, PyTorch's own: bin i of n
over a length L spans [floor(i L / n), ceil((i + 1) L / n)).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import define_op


def adaptive_avg_pool_reference(x: torch.Tensor, bins: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, bins, bins): each output the mean of its bin of the input (bins may overlap
    where ``bins`` does not divide the size, and repeat inputs where the size is smaller than ``bins``)."""
    return F.adaptive_avg_pool2d(x, bins)


def sample_inputs(batch: int, h: int, w: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal((batch, 3, h, w)).astype(np.float32)]


def definition(x: np.ndarray, bins: int) -> np.ndarray:
    """Bin by bin, with the boundaries written out: [floor(i L / n), ceil((i + 1) L / n))."""
    b, c, h, w = x.shape

    def edges(length: int) -> list[tuple[int, int]]:
        return [(i * length // bins, math.ceil((i + 1) * length / bins)) for i in range(bins)]

    out = np.zeros((b, c, bins, bins), np.float32)
    for i, (h0, h1) in enumerate(edges(h)):
        for j, (w0, w1) in enumerate(edges(w)):
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


adaptive_avg_pool = define_op("adaptive_avg_pool", adaptive_avg_pool_reference, sample_inputs, definition,
                              attributes={"bins": 3})
