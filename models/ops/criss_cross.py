"""Criss-cross attention (Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019)
as the custom op ``seg::criss_cross_attention``; its ONNX side is export/ops/criss_cross.py."""
from __future__ import annotations

import numpy as np
import torch

from . import define_op


def criss_cross_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Criss-cross attention (Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019).

    Each position (h, w) attends to the H + W - 1 positions in its row and column: one softmax over the
    column energies (self excluded, it is counted once in the row) concatenated with the row energies.
    query, key: (B, C', H, W); value: (B, C, H, W). Returns the aggregated value, (B, C, H, W), without the
    learned scale and residual the module adds.
    """
    b, _, h, w = query.shape
    # Column direction: position (h, w) against (h', w) for every h'.
    q_col = query.permute(0, 3, 2, 1)  # (B, W, H, C')
    k_col = key.permute(0, 3, 1, 2)  # (B, W, C', H)
    energy_col = torch.matmul(q_col, k_col)  # (B, W, H, H')
    self_mask = torch.eye(h, dtype=torch.bool, device=query.device)  # (H, H')
    energy_col = energy_col.masked_fill(self_mask, float("-inf")).permute(0, 2, 1, 3)  # (B, H, W, H')
    # Row direction: position (h, w) against (h, w') for every w'.
    q_row = query.permute(0, 2, 3, 1)  # (B, H, W, C')
    k_row = key.permute(0, 2, 1, 3)  # (B, H, C', W)
    energy_row = torch.matmul(q_row, k_row)  # (B, H, W, W')

    attention = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)  # (B, H, W, H'+W')
    att_col, att_row = attention[..., :h], attention[..., h:]

    v_col = value.permute(0, 3, 1, 2)  # (B, W, C, H')
    out_col = torch.matmul(v_col, att_col.permute(0, 2, 3, 1))  # (B, W, C, H)
    v_row = value.permute(0, 2, 1, 3)  # (B, H, C, W')
    out_row = torch.matmul(v_row, att_row.permute(0, 1, 3, 2))  # (B, H, C, W)
    return out_col.permute(0, 2, 3, 1) + out_row.permute(0, 2, 1, 3)  # (B, C, H, W)


def sample_inputs(batch: int, h: int, w: int, rng: np.random.Generator) -> list[np.ndarray]:
    """query and key with 4 channels (scaled so the softmax is not flat), value with 6."""
    q, k = (2 * rng.standard_normal((batch, 4, h, w)).astype(np.float32) for _ in range(2))
    return [q, k, rng.standard_normal((batch, 6, h, w)).astype(np.float32)]


def definition(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Criss-cross attention position by position, straight from the paper: position (i, j) attends to the
    H + W - 1 positions of its column (itself excluded) and its row."""
    b, _, h, w = q.shape
    out = np.zeros_like(v)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                keys = [(i2, j) for i2 in range(h) if i2 != i] + [(i, j2) for j2 in range(w)]
                e = np.array([q[n, :, i, j] @ k[n, :, a, c] for a, c in keys])
                weights = np.exp(e - e.max())
                weights /= weights.sum()
                out[n, :, i, j] = sum(wt * v[n, :, a, c] for wt, (a, c) in zip(weights, keys))
    return out


criss_cross_attention = define_op("criss_cross_attention", criss_cross_attention_reference, sample_inputs, definition)
