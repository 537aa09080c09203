"""The ONNX side of ``models/ops/psa_mask.py``: the ``seg::PSAMask`` node and its lowering."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..compile.rewrites import Builder, nodes_of
from . import DOMAIN, export_op

_INT32 = 6  # TensorProto.INT32: TensorRT computes indices in int32; half the memory of int64
_NP_INT32 = np.int32


def _axis_terms(b: Builder, length: gs.Variable, mask: int, stride: gs.Variable, target_axis: int,
                source_axis: int, weight: gs.Variable, sentinel: gs.Variable) -> gs.Variable:
    """One spatial axis's share of the flat gather index, a 4-D tensor broadcast over the other axis:
    ``cell * stride + source * weight`` where cell = target - source + (mask - 1) // 2 is the window cell
    linking target to source along this axis, or ``sentinel`` where that cell is outside the window.

    ``target_axis`` / ``source_axis`` say which of the index's 4 axes (row_h, row_w, col_h, col_w) hold the
    target and the source position."""
    r = b.op("Range", b.const(0, _NP_INT32), length, b.const(1, _NP_INT32))  # (L,)
    target = b.op("Unsqueeze", r, b.const([a for a in range(4) if a != target_axis]))
    source = b.op("Unsqueeze", r, b.const([a for a in range(4) if a != source_axis]))
    cell = b.op("Add", b.op("Sub", target, source), b.const((mask - 1) // 2, _NP_INT32))  # broadcast (L, L)
    inside = b.op("And", b.op("GreaterOrEqual", cell, b.const(0, _NP_INT32)),
                  b.op("Less", cell, b.const(mask, _NP_INT32)))
    term = b.op("Add", b.op("Mul", cell, stride), b.op("Mul", source, weight))
    return b.op("Where", inside, term, sentinel)


def lower_psa_mask(graph: gs.Graph) -> int:
    """seg::PSAMask -> one Gather from the flattened input, its indices computed from the input's shape
    (Shape, Range, Sub/Add/Mul, GreaterOrEqual/Less/And, Where, Min): one graph for every H, W, all in
    TensorRT 10.3's table (no ScatterND, no loops).

    Output element (a, b) of the (HW, HW) map reads input element ``cell(q, p) * HW + p`` of the flattened
    (N, mask_h * mask_w * HW) input, q = a, p = b for collect and the reverse for distribute; a cell outside
    the window reads the zero appended by Pad. The index is the sum of a row term (H, 1, H, 1) and a column
    term (1, W, 1, W), each already at the sentinel ``mask_h * mask_w * HW`` where its cell is outside the
    window, so only the final Add, Min and Gather touch all (HW)^2 elements."""
    nodes = nodes_of(graph, "PSAMask", DOMAIN)
    for node in nodes:
        (x,) = node.inputs
        mask_h, mask_w = int(node.attrs["mask_h"]), int(node.attrs["mask_w"])
        distribute = int(node.attrs.get("distribute", 0))
        b = Builder(graph, node.name or "psa_mask")
        shape = b.op("Shape", x)
        h = b.op("Cast", b.op("Gather", shape, b.const(2)), attrs={"to": _INT32})  # scalar H
        w = b.op("Cast", b.op("Gather", shape, b.const(3)), attrs={"to": _INT32})  # scalar W
        hw = b.op("Mul", h, w)
        sentinel = b.op("Mul", hw, b.const(mask_h * mask_w, _NP_INT32))  # the appended zero's index
        # Axes of the index: (row_h, row_w, col_h, col_w) of the output (HW rows, H x W columns).
        target_h, source_h, target_w, source_w = (2, 0, 3, 1) if distribute else (0, 2, 1, 3)
        rows = _axis_terms(b, h, mask_h, b.op("Mul", hw, b.const(mask_w, _NP_INT32)), target_h, source_h,
                           w, sentinel)
        cols = _axis_terms(b, w, mask_w, hw, target_w, source_w, b.const(1, _NP_INT32), sentinel)
        index = b.op("Min", b.op("Add", rows, cols), sentinel)  # (H, W, H, W)
        flat = b.op("Reshape", x, b.const([0, -1]))  # (N, mask_h * mask_w * HW)
        flat = b.op("Pad", flat, b.const([0, 0, 0, 1]))  # (N, mask_h * mask_w * HW + 1): the zero
        gathered = b.op("Gather", flat, index, attrs={"axis": 1})  # (N, H, W, H, W)
        out_shape = b.op("Concat", b.const([0, -1]), b.op("Slice", shape, b.const([2]), b.const([4])),
                         attrs={"axis": 0})
        b.replace(node, "Reshape", gathered, out_shape)  # (N, HW, H, W)
    return len(nodes)


export_op(
    "psa_mask", "PSAMask",
    "PSANet's point-wise spatial attention mask: x (N, mask_h*mask_w, H, W) -> (N, H*W, H, W), each position's "
    "window of weights placed into the map (collect) or transposed (distribute), as mmcv's PSAMask; "
    "reference: models.ops.psa_mask.psa_mask_reference.",
    ["x"], ["output"],
    lowerings={"onnxruntime": lower_psa_mask, "tensorrt": lower_psa_mask},
    attributes={"mask_h": "window height", "mask_w": "window width",
                "distribute": "0: collect, 1: distribute (the collect map transposed)"},
)
