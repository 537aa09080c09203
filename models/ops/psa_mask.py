"""The point-wise spatial attention mask of PSANet (Zhao et al., "PSANet: Point-wise Spatial Attention Network for
Scene Parsing", ECCV 2018) as the custom op ``seg::psa_mask``; its ONNX side is export/ops/psa_mask.py.

The attention branch predicts, at every position p = (h, w), one weight per cell of a ``mask_h`` x ``mask_w``
window centred on p (the paper's "over-completed" map, (2H-1) x (2W-1) for an H x W feature, covers the whole
map from every position). The op places that window into the H x W map:

- collect (``distribute = 0``): ``out[n, q, h, w]`` is the weight with which p = (h, w) collects from q,
- distribute (``distribute = 1``): ``out[n, p, qh, qw]`` is the weight with which p distributes to q = (qh, qw),

where q = (h + i - half_h, w + j - half_w) for window cell (i, j), half = (mask - 1) // 2, and cells falling
outside the map are dropped (zeros elsewhere). This is mmcv's ``PSAMask`` (mmcv/ops/csrc/pytorch/cpu/psamask.cpp).
The window size is a build-time constant (the attention conv's output channels are ``mask_h * mask_w``), but
the op is valid at every H, W: a mask smaller than (2H-1) x (2W-1) is a local window, a larger one is clipped
at the borders. One exported graph therefore serves every input size with the trained mask.

Distribute is collect transposed: ``distribute(x).view(N, HW, HW) == collect(x).view(N, HW, HW).mT``.
"""
from __future__ import annotations

import numpy as np
import torch

from . import define_op


def psa_mask_reference(x: torch.Tensor, mask_h: int, mask_w: int, distribute: int) -> torch.Tensor:
    """(N, mask_h * mask_w, H, W) -> (N, H * W, H, W): each position's window of weights placed into the map
    (collect), or that map transposed (distribute)."""
    n, _, h, w = x.shape
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    # Window cell (i, j) that links target q to position p: i = q_h - p_h + half_h, j likewise.
    i = rows.view(h, 1) - rows.view(1, h) + half_h  # (H_q, H_p)
    j = cols.view(w, 1) - cols.view(1, w) + half_w  # (W_q, W_p)
    inside = (((i >= 0) & (i < mask_h)).view(h, 1, h, 1) & ((j >= 0) & (j < mask_w)).view(1, w, 1, w))
    channel = i.clamp(0, mask_h - 1).view(h, 1, h, 1) * mask_w + j.clamp(0, mask_w - 1).view(1, w, 1, w)
    channel = channel.reshape(1, h * w, h, w).expand(n, -1, -1, -1)  # (N, HW_q, H_p, W_p)
    collect = torch.gather(x, 1, channel).masked_fill(~inside.reshape(1, h * w, h, w), 0)  # (N, HW_q, H, W)
    if not distribute:
        return collect
    return collect.reshape(n, h * w, h * w).transpose(1, 2).reshape(n, h * w, h, w)  # (N, HW_p, H_q, W_q)


def sample_inputs(batch: int, h: int, w: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The attention logits for the sample 5 x 7 mask: at the test sizes it is smaller than, equal to and
    larger than the feature map."""
    return [rng.standard_normal((batch, 5 * 7, h, w)).astype(np.float32)]


def definition(x: np.ndarray, mask_h: int, mask_w: int, distribute: int) -> np.ndarray:
    """mmcv's CPU kernel (psamask_collect_forward / psamask_distribute_forward), loop for loop."""
    n, _, h, w = x.shape
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    out = np.zeros((n, h * w, h, w), np.float32)
    flat = out.reshape(n, h * w, h * w)
    for b in range(n):
        for ph in range(h):
            for pw in range(w):
                for i in range(max(0, half_h - ph), min(mask_h, h + half_h - ph)):
                    for j in range(max(0, half_w - pw), min(mask_w, w + half_w - pw)):
                        q, p = (ph + i - half_h) * w + (pw + j - half_w), ph * w + pw
                        value = x[b, i * mask_w + j, ph, pw]
                        if distribute:
                            flat[b, p, q] = value
                        else:
                            flat[b, q, p] = value
    return out


psa_mask = define_op("psa_mask", psa_mask_reference, sample_inputs, definition,
                     attributes={"mask_h": 5, "mask_w": 7, "distribute": 0})
