"""The ONNX side of ``models/ops/max_unpool.py``: the ``seg::MaxUnpool`` node and its lowering."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ..compile.rewrites import Builder, nodes_of
from . import DOMAIN, export_op

_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))  # a 2x2 window in raster order: ties go to the earliest


def lower_max_unpool(graph: gs.Graph) -> int:
    """seg::MaxUnpool -> strided Slice, Max, Equal, And/Not/Or, Where, Concat, Reshape, Pad: all in TensorRT
    10.3's table (which has no MaxPool indices output and no MaxUnpool).

    Same computation as ``models.ops.max_unpool.max_unpool_reference``: the four strided views x_k of the
    source, one per window position, their maximum m; position k takes the value where x_k == m and no
    earlier position did; the four maps are interleaved back to (2h, 2w) and padded with zeros to the
    source's size (the row or column odd sizes leave out).
    """
    nodes = nodes_of(graph, "MaxUnpool", DOMAIN)
    for node in nodes:
        values, source = node.inputs
        b = Builder(graph, node.name or "max_unpool")
        shape = b.op("Shape", source)
        hw = b.op("Slice", shape, b.const([2]), b.const([4]), b.const([0]))  # [H, W]
        even = b.op("Mul", b.op("Div", hw, b.const([2, 2])), b.const([2, 2]))  # [2h, 2w]
        views = [b.op("Slice", source, b.const([di, dj]), even, b.const([2, 3]), b.const([2, 2]))
                 for di, dj in _OFFSETS]  # each (B, C, h, w)
        peak = b.op("Max", *views)
        zero = b.op("CastLike", b.const(0.0, dtype=float), values)
        taken, placed = None, []
        for view in views:
            hit = b.op("Equal", view, peak)  # (B, C, h, w) bool
            first = hit if taken is None else b.op("And", hit, b.op("Not", taken))
            taken = hit if taken is None else b.op("Or", taken, hit)
            placed.append(b.op("Unsqueeze", b.op("Where", first, values, zero), b.const([-1])))  # (B, C, h, w, 1)
        # Interleave: rows 2i take positions 0, 1 (columns 2j, 2j+1), rows 2i+1 positions 2, 3.
        batch_channels = b.op("Slice", b.op("Shape", values), b.const([0]), b.const([2]), b.const([0]))
        rows = [b.op("Concat", placed[k], placed[k + 1], attrs={"axis": -1}) for k in (0, 2)]  # (B, C, h, w, 2)
        stacked = b.op("Concat", *(b.op("Unsqueeze", r, b.const([3])) for r in rows), attrs={"axis": 3})  # (B, C, h, 2, w, 2)
        full = b.op("Reshape", stacked, b.op("Concat", batch_channels, even, attrs={"axis": 0}))  # (B, C, 2h, 2w)
        pads = b.op("Concat", b.const([0, 0, 0, 0, 0, 0]), b.op("Sub", hw, even), attrs={"axis": 0})
        b.replace(node, "Pad", full, pads)
    return len(nodes)


export_op(
    "max_unpool", "MaxUnpool",
    "Max unpooling after 2x2 stride-2 max pooling (SegNet): values (B,C,H//2,W//2), source (B,C,H,W), the "
    "map that was pooled -> (B,C,H,W); reference: models.ops.max_unpool.max_unpool_reference.",
    ["values", "source"], ["output"],
    lowerings={"onnxruntime": lower_max_unpool, "tensorrt": lower_max_unpool},
)
