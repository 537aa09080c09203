"""The ONNX side of ``models/ops/criss_cross.py``: the ``seg::CrissCrossAttention`` node and its lowering."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..compile.rewrites import Builder, nodes_of
from . import DOMAIN, export_op


def lower_criss_cross_attention(graph: gs.Graph) -> int:
    """seg::CrissCrossAttention -> Transpose/MatMul/Where/Softmax/Slice, all in TensorRT 10.3's table.

    Same computation as ``models.ops.criss_cross.criss_cross_attention_reference``: column energies with the position
    itself masked out, row energies, one softmax over both, then the two weighted sums of ``value``.
    No Einsum: TensorRT before 10.12 restricts it.
    """
    nodes = nodes_of(graph, "CrissCrossAttention", DOMAIN)
    for node in nodes:
        q, k, v = node.inputs
        b = Builder(graph, node.name or "cca")
        shape = b.op("Shape", q)
        h = b.op("Gather", shape, b.const(2))  # scalar H
        h_1d = b.op("Unsqueeze", h, b.const([0]))
        w_1d = b.op("Gather", shape, b.const([3]))
        # Column energies: (B, W, H, C') @ (B, W, C', H') -> (B, W, H, H'), self position masked.
        e_col = b.op("MatMul", b.op("Transpose", q, attrs={"perm": [0, 3, 2, 1]}),
                     b.op("Transpose", k, attrs={"perm": [0, 3, 1, 2]}))
        r = b.op("Range", b.const(0), h, b.const(1))
        eye = b.op("Equal", b.op("Unsqueeze", r, b.const([1])), b.op("Unsqueeze", r, b.const([0])))  # (H, H')
        # From the -inf mask to the softmax, values stay in float: a quantizer would calibrate on -inf.
        e_col = b.op("Where", eye, b.const(-np.inf, np.float32), e_col, keep_float=True)
        e_col = b.op("Transpose", e_col, attrs={"perm": [0, 2, 1, 3]}, keep_float=True)  # (B, H, W, H')
        # Row energies: (B, H, W, C') @ (B, H, C', W') -> (B, H, W, W').
        e_row = b.op("MatMul", b.op("Transpose", q, attrs={"perm": [0, 2, 3, 1]}),
                     b.op("Transpose", k, attrs={"perm": [0, 2, 1, 3]}))
        energy = b.op("Concat", e_col, e_row, attrs={"axis": -1}, keep_float=True)  # (B, H, W, H'+W')
        att = b.op("Softmax", energy, attrs={"axis": -1}, keep_float=True)
        att_col = b.op("Slice", att, b.const([0]), h_1d, b.const([3]))  # (B, H, W, H')
        att_row = b.op("Slice", att, h_1d, b.op("Add", h_1d, w_1d), b.const([3]))  # (B, H, W, W')
        # (B, W, C, H') @ (B, W, H', H) -> (B, W, C, H) -> (B, C, H, W)
        out_col = b.op("MatMul", b.op("Transpose", v, attrs={"perm": [0, 3, 1, 2]}),
                       b.op("Transpose", att_col, attrs={"perm": [0, 2, 3, 1]}))
        out_col = b.op("Transpose", out_col, attrs={"perm": [0, 2, 3, 1]})
        # (B, H, C, W') @ (B, H, W', W) -> (B, H, C, W) -> (B, C, H, W)
        out_row = b.op("MatMul", b.op("Transpose", v, attrs={"perm": [0, 2, 1, 3]}),
                       b.op("Transpose", att_row, attrs={"perm": [0, 1, 3, 2]}))
        out_row = b.op("Transpose", out_row, attrs={"perm": [0, 2, 1, 3]})
        b.replace(node, "Add", out_col, out_row)
    return len(nodes)


export_op(
    "criss_cross_attention", "CrissCrossAttention",
    "Criss-cross attention (CCNet): query, key (B,C',H,W), value (B,C,H,W) -> (B,C,H,W); "
    "reference: models.ops.criss_cross.criss_cross_attention_reference.",
    ["query", "key", "value"], ["output"],
    lowerings={"onnxruntime": lower_criss_cross_attention, "tensorrt": lower_criss_cross_attention},
)
