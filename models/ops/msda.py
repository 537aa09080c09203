"""Multi-scale deformable attention (Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object
Detection", ICLR 2021) as the custom op ``seg::multiscale_deformable_attention``; its ONNX side is
export/ops/msda.py (TensorRT's ``MultiscaleDeformableAttnPlugin_TRT`` where the target ships it, a GridSample
decomposition everywhere else).

The inputs are the plugin's, in its order (NVIDIA/TensorRT plugin/multiscaleDeformableAttnPlugin/README.md).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import NAMESPACE, define_op


def multiscale_deformable_attention_reference(value: torch.Tensor, spatial_shapes: torch.Tensor,
                                              level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                                              attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention, the formulation of mmcv's ``multi_scale_deformable_attn_pytorch``.

    value (N, S, M, D): the L levels' maps flattened and concatenated (S = sum of H_l * W_l), M heads of D
    channels; spatial_shapes (L, 2) integer (H_l, W_l); level_start_index (L,) integer, where each level
    starts in S; sampling_locations (N, Lq, M, L, P, 2): (x, y) in [0, 1] of each level's map;
    attention_weights (N, Lq, M, L, P). Each query's output is the weighted sum over levels and points of
    the bilinearly sampled value (zero outside the map, pixel centres at (i + 0.5) / size). Returns
    (N, Lq, M * D).
    """
    n, _, m, d = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] coordinates
    out = value.new_zeros(n * m, d, lq)
    for level in range(levels):
        h, w = int(spatial_shapes[level, 0]), int(spatial_shapes[level, 1])
        start = int(level_start_index[level])
        value_l = value[:, start:start + h * w]  # (N, H_l*W_l, M, D)
        value_l = value_l.permute(0, 2, 3, 1).reshape(n * m, d, h, w)  # (N*M, D, H_l, W_l)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N*M, Lq, P, 2)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (N*M, D, Lq, P)
        weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(n * m, 1, lq, points)
        out = out + (sampled * weights).sum(-1)  # (N*M, D, Lq)
    return out.reshape(n, m * d, lq).transpose(1, 2).contiguous()  # (N, Lq, M*D)


def _fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    # The reference reads the level sizes from spatial_shapes' values, which fake tensors do not have; the
    # output's shape needs only the input shapes (torch.library.opcheck checks this against the reference).
    n, _, m, d = value.shape
    return value.new_empty(n, sampling_locations.shape[1], m * d)


LEVELS, HEADS, CHANNELS, POINTS = 3, 2, 3, 4  # the sample inputs' sizes
# The sample inputs' dims (then the output's) for tests that build a graph of the op: a name for a dim that
# follows the sizes, a number for a fixed one.
SYMBOLIC_DIMS = [["N", "S", HEADS, CHANNELS], [LEVELS, 2], [LEVELS], ["N", "Lq", HEADS, LEVELS, POINTS, 2],
                 ["N", "Lq", HEADS, LEVELS, POINTS], ["N", "Lq", HEADS * CHANNELS]]


def level_shapes(h: int, w: int, levels: int = LEVELS) -> list[tuple[int, int]]:
    """The levels of a feature pyramid whose finest map is h x w, each half the previous (rounded up)."""
    shapes = [(h, w)]
    for _ in range(levels - 1):
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    return shapes


def sample_inputs(batch: int, h: int, w: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A 3-level pyramid from h x w, 2 heads of 3 channels, 4 points, one query per position of the finest
    level; locations spread a little beyond [0, 1] so the zero padding at the borders is exercised."""
    shapes = np.array(level_shapes(h, w), dtype=np.int64)
    sizes = shapes.prod(1)
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    lq = h * w
    value = rng.standard_normal((batch, int(sizes.sum()), HEADS, CHANNELS)).astype(np.float32)
    locations = rng.uniform(-0.1, 1.1, (batch, lq, HEADS, LEVELS, POINTS, 2)).astype(np.float32)
    weights = rng.uniform(0, 1, (batch, lq, HEADS, LEVELS, POINTS)).astype(np.float32)
    weights /= weights.sum((-1, -2), keepdims=True)
    return [value, shapes, start, locations, weights]


def definition(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> np.ndarray:
    """Deformable DETR's eq. 3 sample by sample: for each query, head, level and point, bilinear
    interpolation of the four neighbouring pixels at (x * W_l - 0.5, y * H_l - 0.5) (zero outside the map),
    weighted by the point's attention weight."""
    n, _, m, d = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    out = np.zeros((n, lq, m, d), dtype=np.float64)

    def pixel(b, start, h, w, y, x, head):
        return value[b, start + y * w + x, head] if 0 <= y < h and 0 <= x < w else 0.0

    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for level in range(levels):
                    h, w = (int(s) for s in spatial_shapes[level])
                    start = int(level_start_index[level])
                    for p in range(points):
                        x = sampling_locations[b, q, head, level, p, 0] * w - 0.5
                        y = sampling_locations[b, q, head, level, p, 1] * h - 0.5
                        x0, y0 = int(np.floor(x)), int(np.floor(y))
                        fx, fy = x - x0, y - y0
                        sample = ((1 - fy) * (1 - fx) * pixel(b, start, h, w, y0, x0, head)
                                  + (1 - fy) * fx * pixel(b, start, h, w, y0, x0 + 1, head)
                                  + fy * (1 - fx) * pixel(b, start, h, w, y0 + 1, x0, head)
                                  + fy * fx * pixel(b, start, h, w, y0 + 1, x0 + 1, head))
                        out[b, q, head] += attention_weights[b, q, head, level, p] * sample
    return out.reshape(n, lq, m * d).astype(np.float32)


multiscale_deformable_attention = define_op("multiscale_deformable_attention",
                                            multiscale_deformable_attention_reference, sample_inputs, definition)
multiscale_deformable_attention.register_fake(_fake)


@torch.library.custom_op(f"{NAMESPACE}::multiscale_deformable_attention_backward", mutates_args=())
def _backward_op(grad: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                 level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                 attention_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of the reference for value, sampling_locations and attention_weights. An op of its own,
    for the same reason as the forward: traced backward passes (torch.compile) see fake tensors, and the
    level sizes are values of spatial_shapes."""
    _, vjp = torch.func.vjp(
        lambda v, loc, att: multiscale_deformable_attention_reference(v, spatial_shapes, level_start_index, loc, att),
        value, sampling_locations, attention_weights)
    return tuple(g.contiguous() for g in vjp(grad))


@_backward_op.register_fake
def _backward_fake(grad, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: torch.Tensor):
    # define_op's generic backward differentiates every tensor input through the reference; here
    # spatial_shapes and level_start_index are integers (no gradient) whose values set the level sizes.
    value, shapes, start, locations, weights = ctx.saved_tensors
    g_value, g_locations, g_weights = _backward_op(grad, value, shapes, start, locations, weights)
    return g_value, None, None, g_locations, g_weights


multiscale_deformable_attention.register_autograd(_backward, setup_context=_setup_context)
