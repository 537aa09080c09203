"""The ONNX side of ``models/ops/adaptive_pool.py``: the ``seg::AdaptiveAvgPool`` node and its lowering."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..compile.rewrites import Builder, nodes_of
from . import DOMAIN, export_op


def _bin_matrix(b: Builder, length: gs.Variable, bins: int) -> gs.Variable:
    """(bins, L) float: row i averages [floor(i L / n), ceil((i + 1) L / n)), L read from the graph."""
    i = b.const(np.arange(bins).reshape(bins, 1))  # (n, 1)
    start = b.op("Div", b.op("Mul", i, length), b.const(bins))  # floor: integer division of non-negatives
    end = b.op("Div", b.op("Add", b.op("Mul", b.op("Add", i, b.const(1)), length), b.const(bins - 1)),
               b.const(bins))  # ceil((i + 1) L / n)
    positions = b.op("Unsqueeze", b.op("Range", b.const(0), b.op("Squeeze", length, b.const([0])), b.const(1)),
                     b.const([0]))  # (1, L)
    inside = b.op("And", b.op("GreaterOrEqual", positions, start), b.op("Less", positions, end))  # (n, L)
    weights = b.op("Cast", inside, attrs={"to": 1})
    counts = b.op("Cast", b.op("Sub", end, start), attrs={"to": 1})  # (n, 1)
    return b.op("Div", weights, counts)


def lower_adaptive_avg_pool(graph: gs.Graph) -> int:
    """seg::AdaptiveAvgPool -> two MatMuls with bin matrices built from the input's shape (Range, Div,
    GreaterOrEqual/Less/And, Cast): out = A_H @ x @ A_W^T, exact for every size, dividing or not. The
    MatMuls stay in float (no Q/DQ, no FP16): their weights are averages computed in the graph."""
    nodes = nodes_of(graph, "AdaptiveAvgPool", DOMAIN)
    for node in nodes:
        (x,) = node.inputs
        bins = int(node.attrs["bins"])
        b = Builder(graph, node.name or "adaptive_avg_pool")
        shape = b.op("Shape", x)
        rows = _bin_matrix(b, b.op("Slice", shape, b.const([2]), b.const([3]), b.const([0])), bins)  # (n, H)
        cols = _bin_matrix(b, b.op("Slice", shape, b.const([3]), b.const([4]), b.const([0])), bins)  # (n, W)
        pooled_w = b.op("MatMul", x, b.op("Transpose", cols, attrs={"perm": [1, 0]}), keep_float=True)  # (B, C, H, n)
        b.replace(node, "MatMul", rows, pooled_w, keep_float=True)  # (B, C, n, n)
    return len(nodes)


export_op(
    "adaptive_avg_pool", "AdaptiveAvgPool",
    "Adaptive average pooling (PSPNet): x (B,C,H,W) -> (B,C,bins,bins), PyTorch's bin boundaries at every "
    "size; reference: models.ops.adaptive_pool.adaptive_avg_pool_reference.",
    ["x"], ["output"],
    lowerings={"onnxruntime": lower_adaptive_avg_pool, "tensorrt": lower_adaptive_avg_pool},
    attributes={"bins": "output height and width"},
)
