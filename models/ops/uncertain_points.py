"""PointRend's inference-time point selection (Kirillov et al., "PointRend: Image Segmentation as Rendering",
CVPR 2020, https://arxiv.org/abs/1912.08193, section 3.1) as two custom ops; their ONNX side is
export/ops/uncertain_points.py.

Each subdivision step picks the N most uncertain positions of the upsampled logits (uncertainty: the
negative gap between the two largest logits, mmsegmentation's ``calculate_uncertainty``), samples features at
those positions' centres, predicts the points, and writes the predictions back. The two ops are the two ends:

- ``uncertain_point_sample(logits, features, num_points)``: the features at the N most uncertain points of
  ``logits`` (bilinear, ``align_corners=False``, zero padding: mmcv's ``point_sample``);
- ``uncertain_point_scatter(logits, values, num_points)``: ``logits`` with ``values`` written at those points.

Why ops: the selection is a top-N with N = 8196 (mmseg's ``subdivision_num_points``), and TensorRT's TopK
takes K < 3840 (onnx-tensorrt operators.md; mmdeploy clamps N to 3840, which changes the output). The
lowering selects the same set with TopK calls of K < 3840 only (export/ops/uncertain_points.py). The point
indices stay inside the ops (a seg node's tensors are float, and integer positions must not meet an FP16
cast), so each op selects for itself: the two selections read the same logits and agree exactly.

Selection rule, the same in the reference and in every lowering: the N = min(num_points, H*W) positions of
largest uncertainty; among equal uncertainties the lower flat index (row-major) wins, as a stable
descending sort orders them. Without ties this is exactly ``torch.topk``'s set. Points are returned in
ascending flat-index order (the order does not matter to the point head, which treats points independently,
nor to the scatter).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import define_op

SAMPLE_NUM_POINTS = 5  # the generic op tests' num_points: below H*W at some sizes, above it at others


def most_uncertain_points(logits: torch.Tensor, num_points: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N) flat indices (int64, ascending) of the N = min(num_points, H*W) most uncertain
    positions; ties broken by the lower index. C >= 2."""
    top2 = torch.topk(logits, 2, dim=1).values  # (B, 2, H, W)
    uncertainty = (top2[:, 1] - top2[:, 0]).flatten(1)  # (B, HW): -(top1 - top2)
    n = torch.sym_min(num_points, uncertainty.shape[1])
    order = torch.sort(uncertainty, dim=1, descending=True, stable=True).indices[:, :n]  # (B, N)
    return torch.sort(order, dim=1).values


def point_grid(indices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, N) flat indices of an H x W map -> (B, 1, N, 2) grid_sample coordinates in [-1, 1] of their centres
    (mmseg's point coordinates (i + 0.5) / size, mapped as mmcv's ``point_sample`` maps them)."""
    x = ((indices % width).float() + 0.5) / width
    y = ((indices // width).float() + 0.5) / height
    return (torch.stack([x, y], dim=-1) * 2 - 1).unsqueeze(1)  # (B, 1, N, 2)


def uncertain_point_sample_reference(logits: torch.Tensor, features: torch.Tensor, num_points: int) -> torch.Tensor:
    """logits (B, C, H, W), features (B, F, h, w) of any size (the same image area) -> (B, F, 1, N): the features
    bilinearly sampled at the centres of the N most uncertain positions of ``logits``."""
    indices = most_uncertain_points(logits, num_points)  # (B, N)
    grid = point_grid(indices, logits.shape[2], logits.shape[3]).to(features.dtype)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def uncertain_point_scatter_reference(logits: torch.Tensor, values: torch.Tensor, num_points: int) -> torch.Tensor:
    """logits (B, C, H, W), values (B, C, 1, N) -> (B, C, H, W): ``logits`` with ``values`` written at its N most
    uncertain positions (the points ``uncertain_point_sample`` samples, in the same order)."""
    b, c, h, w = logits.shape
    indices = most_uncertain_points(logits, num_points)  # (B, N)
    flat = logits.flatten(2)  # (B, C, HW)
    out = flat.scatter(2, indices.unsqueeze(1).expand(-1, c, -1), values.flatten(2).to(flat.dtype))
    return out.view(b, c, h, w)


def _logits(batch: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Random logits with some exactly tied uncertainties (a few integer-valued positions), so the tie rule
    is exercised."""
    logits = rng.standard_normal((batch, 4, h, w)).astype(np.float32)
    tied = rng.random((batch, 1, h, w)) < 0.3
    return np.where(tied, np.round(logits), logits).astype(np.float32)


def sample_inputs_sample(batch: int, h: int, w: int, rng: np.random.Generator) -> list[np.ndarray]:
    """logits at h x w and features at about half that size (PointRend samples a stride-4 map at points of
    the finer grid)."""
    features = rng.standard_normal((batch, 3, (h + 1) // 2, (w + 1) // 2)).astype(np.float32)
    return [_logits(batch, h, w, rng), features]


def sample_inputs_scatter(batch: int, h: int, w: int, rng: np.random.Generator) -> list[np.ndarray]:
    n = min(SAMPLE_NUM_POINTS, h * w)
    return [_logits(batch, h, w, rng), rng.standard_normal((batch, 4, 1, n)).astype(np.float32)]


def _selected(logits: np.ndarray, num_points: int) -> list[list[int]]:
    """The selection written out: rank every position by (uncertainty descending, index ascending)."""
    out = []
    for plane in logits:
        top = np.sort(plane.reshape(plane.shape[0], -1), axis=0)
        uncertainty = top[-2] - top[-1]
        ranked = sorted(range(uncertainty.size), key=lambda i: (-uncertainty[i], i))
        out.append(sorted(ranked[:num_points]))
    return out


def definition_sample(logits: np.ndarray, features: np.ndarray, num_points: int) -> np.ndarray:
    """Point by point: the bilinear interpolation of the four neighbours of each selected centre (outside the
    map counts as zero), the paper's point features."""
    b, _, h, w = logits.shape
    _, f, fh, fw = features.shape
    selected = _selected(logits, num_points)
    out = np.zeros((b, f, 1, len(selected[0])), np.float32)
    for n, points in enumerate(selected):
        for k, i in enumerate(points):
            x = ((i % w) + 0.5) / w * fw - 0.5  # continuous pixel coordinates of the feature map
            y = ((i // w) + 0.5) / h * fh - 0.5
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= yy < fh and 0 <= xx < fw:
                        out[n, :, 0, k] += wy * wx * features[n, :, yy, xx]
    return out


def definition_scatter(logits: np.ndarray, values: np.ndarray, num_points: int) -> np.ndarray:
    out = logits.copy()
    b, c, h, w = logits.shape
    for n, points in enumerate(_selected(logits, num_points)):
        for k, i in enumerate(points):
            out[n, :, i // w, i % w] = values[n, :, 0, k]
    return out


uncertain_point_sample = define_op("uncertain_point_sample", uncertain_point_sample_reference, sample_inputs_sample,
                                   definition_sample, attributes={"num_points": SAMPLE_NUM_POINTS})
uncertain_point_scatter = define_op("uncertain_point_scatter", uncertain_point_scatter_reference,
                                    sample_inputs_scatter, definition_scatter,
                                    attributes={"num_points": SAMPLE_NUM_POINTS})
