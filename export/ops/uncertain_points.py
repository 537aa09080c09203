"""The ONNX side of ``models/ops/uncertain_points.py``: the ``seg::UncertainPointSample`` and
``seg::UncertainPointScatter`` nodes and their lowering, one for every target.

The selection of the N most uncertain points uses only TopK calls with a constant K below TensorRT's limit
(``TOPK_MAX``), whatever N is (mmseg's PointRend uses N = 8196), and selects exactly the reference's set:

1. the N-th largest uncertainty ``t``, by peeling: R = ceil(N / K) rounds of TopK(K) over the uncertainties
   (padded with R * K entries of -inf, so every round has K values to take even when H*W < N), each round
   overwriting what it found with -inf (ScatterElements). TopK's values are the K largest of what remains
   whatever its tie order, so round r's j-th value is the (r K + j + 1)-th largest overall, and t is exact;
2. the mask: every position above t, and of those equal to t the first N - #(above t) in index order
   (CumSum), i.e. the reference's rule (ties to the lower index). With N >= H*W, t = -inf: all positions;
3. the indices, ascending, without a sort: a stable partition. Selected position i goes to slot
   (#selected before i), the others after the N selected slots; the slots form a permutation of 0..HW-1,
   written with one ScatterElements (no duplicate indices), and its first N entries are the points.

Counts run in float32 CumSums (TensorRT's CumSum takes floats only; exact below 2^24 positions, more than
the export's 4096 x 4096 limit), and every node is kept in FP32 and out of quantization: an FP16 count or
coordinate would select or sample wrong points.
"""
from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from ..compile.compat import known_tensorrt_versions, tensorrt_table
from ..compile.rewrites import Builder, nodes_of
from . import DOMAIN, export_op

# The largest TopK K every known TensorRT release takes: its table's rule says "K < limit" (3840, from
# onnx-tensorrt operators.md, "K must be less than 3840"; NvInfer.h reads "at most 3840": the stricter
# reading is kept, one fact in one place, export/compile/data/tensorrt_onnx_ops.yaml), so K = limit - 1.
TOPK_MAX = min(tensorrt_table(v).checks["topk"]["k_less_than"] for v in known_tensorrt_versions()) - 1
_NEG_INF = -np.inf


class _FP32Builder(Builder):
    """A Builder whose every node is kept in FP32 and out of quantization: indices, counts and coordinates
    pass through float tensors here (6143 is 6144 in FP16)."""

    def op(self, op_type: str, *inputs, attrs: dict | None = None, outputs: list | None = None,
           keep_float: bool = True) -> gs.Variable:
        return super().op(op_type, *inputs, attrs=attrs, outputs=outputs, keep_float=True)

    def replace(self, node: gs.Node, op_type: str, *inputs, attrs: dict | None = None,
                keep_float: bool = True) -> None:
        super().replace(node, op_type, *inputs, attrs=attrs, keep_float=True)


def _topk(b: Builder, x: gs.Variable, k: int, axis: int) -> tuple[gs.Variable, gs.Variable]:
    name = f"{b.prefix}/topk_{b.count}"
    values, indices = gs.Variable(f"{name}_values"), gs.Variable(f"{name}_indices")
    b.op("TopK", x, b.const([k]), attrs={"axis": axis}, outputs=[values, indices])
    return values, indices


def _most_uncertain_points(b: Builder, logits: gs.Variable, num_points: int) -> gs.Variable:
    """(B, C, H, W) -> (B, N) int64 flat indices, ascending: the reference's ``most_uncertain_points``."""
    k = min(num_points, TOPK_MAX)
    rounds = math.ceil(num_points / k)
    top2, _ = _topk(b, logits, 2, axis=1)  # (B, 2, H, W)
    second = b.op("Slice", top2, b.const([1]), b.const([2]), b.const([1]))
    first = b.op("Slice", top2, b.const([0]), b.const([1]), b.const([1]))
    u = b.op("Flatten", b.op("Sub", second, first), attrs={"axis": 1})  # (B, HW)
    shape_u = b.op("Shape", u)  # [B, HW]
    hw = b.op("Slice", shape_u, b.const([1]), b.const([2]), b.const([0]))  # [HW]
    n = b.op("Min", hw, b.const([num_points]))  # [N]
    n_f = b.op("Cast", n, attrs={"to": 1})

    # 1. The N-th largest uncertainty, by rounds of TopK(k).
    pad_shape = b.op("Concat", b.op("Slice", shape_u, b.const([0]), b.const([1]), b.const([0])),
                     b.const([rounds * k]), attrs={"axis": 0})
    pad = b.op("Expand", b.const([[_NEG_INF]], np.float32), pad_shape)  # (B, R k)
    remaining = b.op("Concat", u, pad, attrs={"axis": 1})  # (B, HW + R k)
    for r in range(rounds):
        values, found = _topk(b, remaining, k, axis=1)  # (B, k), sorted descending
        if r < rounds - 1:
            removed = b.op("Expand", b.const([[_NEG_INF]], np.float32), b.op("Shape", found))
            remaining = b.op("ScatterElements", remaining, found, removed, attrs={"axis": 1})
    j = num_points - 1 - (rounds - 1) * k
    t = b.op("Slice", values, b.const([j]), b.const([j + 1]), b.const([1]))  # (B, 1)

    # 2. The mask: above t, and the first N - #above of the positions equal to t.
    above = b.op("Greater", u, t)
    tied = b.op("Equal", u, t)
    count_above = b.op("ReduceSum", b.op("Cast", above, attrs={"to": 1}), b.const([1]),
                       attrs={"keepdims": 1})  # (B, 1)
    tie_rank = b.op("CumSum", b.op("Cast", tied, attrs={"to": 1}), b.const(1))
    take_tied = b.op("LessOrEqual", tie_rank, b.op("Sub", n_f, count_above))
    take = b.op("Or", above, b.op("And", tied, take_tied))  # (B, HW), N true per row
    take_f = b.op("Cast", take, attrs={"to": 1})

    # 3. Stable partition: selected positions to slots 0..N-1, the others to N..HW-1.
    one = b.const(1.0, np.float32)
    before = b.op("Sub", b.op("CumSum", take_f, b.const(1)), one)
    after = b.op("Add", n_f, b.op("Sub", b.op("CumSum", b.op("Sub", one, take_f), b.const(1)), one))
    slots = b.op("Cast", b.op("Where", take, before, after), attrs={"to": 7})  # (B, HW) int64
    positions = b.op("Expand", b.op("Unsqueeze", b.op("Range", b.const(0), b.op("Squeeze", hw, b.const([0])),
                                                      b.const(1)), b.const([0])), shape_u)  # (B, HW)
    permutation = b.op("ScatterElements", positions, slots, positions, attrs={"axis": 1})
    return b.op("Slice", permutation, b.const([0]), n, b.const([1]))  # (B, N)


def _point_grid(b: Builder, indices: gs.Variable, logits: gs.Variable) -> gs.Variable:
    """(B, N) flat indices of ``logits``' H x W -> (B, 1, N, 2) GridSample coordinates of their centres."""
    shape = b.op("Shape", logits)
    h, w = (b.op("Slice", shape, b.const([i]), b.const([i + 1]), b.const([0])) for i in (2, 3))

    def centre(index: gs.Variable, size: gs.Variable) -> gs.Variable:  # 2 (i + 0.5) / size - 1, (B, N, 1)
        x = b.op("Add", b.op("Cast", index, attrs={"to": 1}), b.const(0.5, np.float32))
        x = b.op("Div", x, b.op("Cast", size, attrs={"to": 1}))
        x = b.op("Sub", b.op("Mul", x, b.const(2.0, np.float32)), b.const(1.0, np.float32))
        return b.op("Unsqueeze", x, b.const([2]))

    xy = b.op("Concat", centre(b.op("Mod", indices, w), w), centre(b.op("Div", indices, w), h),
              attrs={"axis": 2})  # (B, N, 2)
    return b.op("Unsqueeze", xy, b.const([1]))


def lower_uncertain_point_sample(graph: gs.Graph) -> int:
    """seg::UncertainPointSample -> the selection above, then one GridSample (bilinear, zero padding,
    align_corners=0: mmcv's point_sample; mode spelled "bilinear", which TensorRT's importer reads, at the
    export's opset 18)."""
    nodes = nodes_of(graph, "UncertainPointSample", DOMAIN)
    for node in nodes:
        logits, features = node.inputs
        b = _FP32Builder(graph, node.name or "uncertain_point_sample")
        grid = _point_grid(b, _most_uncertain_points(b, logits, int(node.attrs["num_points"])), logits)
        b.replace(node, "GridSample", features, grid,
                  attrs={"mode": "bilinear", "padding_mode": "zeros", "align_corners": 0})
    return len(nodes)


def lower_uncertain_point_scatter(graph: gs.Graph) -> int:
    """seg::UncertainPointScatter -> the selection above, then one ScatterElements (no reduction attribute)
    on the logits flattened to (B, C, HW)."""
    nodes = nodes_of(graph, "UncertainPointScatter", DOMAIN)
    for node in nodes:
        logits, values = node.inputs
        b = _FP32Builder(graph, node.name or "uncertain_point_scatter")
        indices = _most_uncertain_points(b, logits, int(node.attrs["num_points"]))  # (B, N)
        shape = b.op("Shape", logits)
        flat_shape = b.op("Concat", b.op("Slice", shape, b.const([0]), b.const([2]), b.const([0])), b.const([-1]),
                          attrs={"axis": 0})
        flat = b.op("Reshape", logits, flat_shape)  # (B, C, HW)
        updates = b.op("Reshape", values, flat_shape)  # (B, C, N)
        at = b.op("Expand", b.op("Unsqueeze", indices, b.const([1])), b.op("Shape", updates))  # (B, C, N)
        written = b.op("ScatterElements", flat, at, updates, attrs={"axis": 2})
        b.replace(node, "Reshape", written, shape)
    return len(nodes)


_NUM_POINTS = {"num_points": "how many points (mmseg: subdivision_num_points); min(num_points, H*W) are taken"}

export_op(
    "uncertain_point_sample", "UncertainPointSample",
    "PointRend point features: logits (B,C,H,W), features (B,F,h,w) -> (B,F,1,N), features sampled bilinearly at "
    "the centres of the N most uncertain positions of logits; reference: "
    "models.ops.uncertain_points.uncertain_point_sample_reference.",
    ["logits", "features"], ["output"],
    lowerings={"onnxruntime": lower_uncertain_point_sample, "tensorrt": lower_uncertain_point_sample},
    attributes=_NUM_POINTS,
)
export_op(
    "uncertain_point_scatter", "UncertainPointScatter",
    "PointRend refinement: logits (B,C,H,W), values (B,C,1,N) -> logits with values written at its N most "
    "uncertain positions; reference: models.ops.uncertain_points.uncertain_point_scatter_reference.",
    ["logits", "values"], ["output"],
    lowerings={"onnxruntime": lower_uncertain_point_scatter, "tensorrt": lower_uncertain_point_scatter},
    attributes=_NUM_POINTS,
)
