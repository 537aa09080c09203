"""The ONNX side of ``models/ops/msda.py``: the ``seg::MultiScaleDeformableAttention`` node and its two lowerings.

- tensorrt: TensorRT's own ``MultiscaleDeformableAttnPlugin_TRT`` (faster than any decomposition). Version "1"
  (IPluginV2DynamicExt) is the only one TensorRT 10.0-10.10 ship (10.3 included); "2" (IPluginV3, same inputs
  and attributes) exists from 10.11, and 11.1 ships both, so "1" serves every target
  (NVIDIA/TensorRT plugin/README.md on release/10.3 and release/11.1). The parser reads the version from the
  node's ``plugin_version`` attribute. Inputs: value [N,S,M,D], spatial_shapes INT32 [L,2],
  level_start_index INT32 [L], sampling_locations [N,Lq,M,L,P,2], attention_weights [N,Lq,M,L,P]; output
  [N,Lq,M,D] (multiscaleDeformableAttnPlugin.cpp, getOutputDimensions / supportsFormatCombination).
- onnxruntime (and any graph that must run here): a GridSample decomposition into standard ops.

The plugin cannot run in ONNX Runtime; ``decompose_tensorrt_plugins`` turns a TensorRT-bound graph back into
the decomposition so that its accuracy can be measured here (export/compile/plugins.py).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.defs import OpSchema

from ..compile.plugins import register_plugin_decomposition
from ..compile.rewrites import Builder, nodes_of
from . import DOMAIN, VERSION, export_op

ONNX_NAME = "MultiScaleDeformableAttention"
INPUTS = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]
PLUGIN = "MultiscaleDeformableAttnPlugin_TRT"
PLUGIN_VERSION = "1"  # shipped by every TensorRT release from 10.0 to 11.1 (module docstring)
PLUGIN_DOMAIN = "trt"  # any domain: the parser's plugin fallback matches the op type; a non-default domain
# keeps onnx.checker from looking the op up among the standard ones
_INT_INPUTS = (1, 2)  # spatial_shapes, level_start_index: INT32 for the plugin

# The seg node's schema with its integer inputs typed (export_op's generic schema types every input float);
# registered first, export_op keeps it.
if not onnx.defs.has(ONNX_NAME, DOMAIN):
    onnx.defs.register_schema(OpSchema(
        ONNX_NAME, DOMAIN, VERSION,
        doc="Multi-scale deformable attention (Deformable DETR); reference: "
            "models.ops.msda.multiscale_deformable_attention_reference.",
        inputs=[OpSchema.FormalParameter(n, "I" if i in _INT_INPUTS else "T") for i, n in enumerate(INPUTS)],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors"),
                          ("I", ["tensor(int32)", "tensor(int64)"], "level sizes and starts")]))


def _static_levels(inputs: list[gs.Tensor]) -> int:
    """The number of levels L, which the decomposition unrolls: a static dim of any input that carries it."""
    for tensor, axis in ((inputs[1], 0), (inputs[2], 0), (inputs[3], 3), (inputs[4], 3)):
        shape = tensor.shape
        if shape is not None and len(shape) > axis and isinstance(shape[axis], (int, np.integer)):
            return int(shape[axis])
    raise ValueError(f"multi-scale deformable attention: the number of levels is not static in any of "
                     f"{[t.name for t in inputs]} (shapes {[t.shape for t in inputs]}); the GridSample "
                     f"decomposition unrolls one GridSample per level and needs it known")


def _decomposition(graph: gs.Graph, b: Builder, inputs: list[gs.Tensor]) -> gs.Variable:
    """The GridSample decomposition of models.ops.msda's reference, step by step; returns (N, Lq, M, D).

    Per level l: value[:, start_l : start_l + H_l*W_l] -> (N*M, D, H_l, W_l); GridSample (bilinear, zeros,
    align_corners 0) at 2 * locations - 1 -> (N*M, D, Lq, P); times the weights, summed over points, then
    over levels. Returns the result as (N, M, D, Lq): callers end with the Transpose to (N, Lq, M, D), which
    writes the tensor they replace (an Identity there would be removed by ONNX Runtime's optimizer, and
    export/compile/plugins.py finds a plugin's place by that tensor)."""
    value, shapes, starts, locations, weights = inputs
    levels = _static_levels(inputs)
    # GridSample's bilinear mode is spelled "linear" from opset 20 (TensorRT reads only the older spelling,
    # so graphs for it stay below 20: export/compile/compat.py, gridsample_mode).
    mode = "linear" if graph.opset >= 20 else "bilinear"
    shapes = b.op("Cast", shapes, attrs={"to": onnx.TensorProto.INT64})
    starts = b.op("Cast", starts, attrs={"to": onnx.TensorProto.INT64})
    v_shape = b.op("Shape", value)
    n, m, d = (b.op("Gather", v_shape, b.const([i])) for i in (0, 2, 3))  # each (1,)
    l_shape = b.op("Shape", locations)
    lq, p = (b.op("Gather", l_shape, b.const([i])) for i in (1, 4))
    two = b.const(2.0, np.float32)
    grids = b.op("Sub", b.op("Mul", locations, two), b.const(1.0, np.float32))  # (N, Lq, M, L, P, 2)
    value_t = b.op("Transpose", value, attrs={"perm": [0, 2, 3, 1]})  # (N, M, D, S)
    minus_one = b.const([-1])
    total = None
    for level in range(levels):
        hw = b.op("Gather", shapes, b.const(level))  # (2,): H_l, W_l
        start = b.op("Gather", starts, b.const([level]))  # (1,)
        end = b.op("Add", start, b.op("ReduceProd", hw, attrs={"keepdims": 1}))
        value_l = b.op("Slice", value_t, start, end, b.const([3]))  # (N, M, D, H_l*W_l)
        value_l = b.op("Reshape", value_l, b.op("Concat", minus_one, d, hw, attrs={"axis": 0}))  # (N*M, D, H_l, W_l)
        grid_l = b.op("Gather", grids, b.const(level), attrs={"axis": 3})  # (N, Lq, M, P, 2)
        grid_l = b.op("Transpose", grid_l, attrs={"perm": [0, 2, 1, 3, 4]})  # (N, M, Lq, P, 2)
        grid_l = b.op("Reshape", grid_l, b.op("Concat", minus_one, lq, p, b.const([2]), attrs={"axis": 0}))
        sampled = b.op("GridSample", value_l, grid_l,
                       attrs={"mode": mode, "padding_mode": "zeros", "align_corners": 0})  # (N*M, D, Lq, P)
        w_l = b.op("Gather", weights, b.const(level), attrs={"axis": 3})  # (N, Lq, M, P)
        w_l = b.op("Transpose", w_l, attrs={"perm": [0, 2, 1, 3]})  # (N, M, Lq, P)
        w_l = b.op("Reshape", w_l, b.op("Concat", minus_one, b.const([1]), lq, p, attrs={"axis": 0}))
        part = b.op("ReduceSum", b.op("Mul", sampled, w_l), b.const([3]), attrs={"keepdims": 0})  # (N*M, D, Lq)
        total = part if total is None else b.op("Add", total, part)
    return b.op("Reshape", total, b.op("Concat", n, m, d, lq, attrs={"axis": 0}))  # (N, M, D, Lq)


_TO_QUERY_MAJOR = {"perm": [0, 3, 1, 2]}  # (N, M, D, Lq) -> (N, Lq, M, D)


def lower_multiscale_deformable_attention(graph: gs.Graph) -> int:
    """seg::MultiScaleDeformableAttention -> Slice/Reshape/GridSample/Mul/ReduceSum per level (standard ops)."""
    nodes = nodes_of(graph, ONNX_NAME, DOMAIN)
    for node in nodes:
        b = Builder(graph, node.name or "msda")
        out = b.op("Transpose", _decomposition(graph, b, list(node.inputs)), attrs=_TO_QUERY_MAJOR)  # (N, Lq, M, D)
        b.replace(node, "Reshape", out, b.const([0, 0, -1]))  # (N, Lq, M*D)
    return len(nodes)


def plugin_multiscale_deformable_attention(graph: gs.Graph) -> int:
    """seg::MultiScaleDeformableAttention -> TensorRT's MultiscaleDeformableAttnPlugin_TRT, version "1"
    (shipped by 10.3 and 11.1), its integer inputs cast to INT32 as the plugin requires, and a Reshape of its
    (N, Lq, M, D) output to the op's (N, Lq, M*D)."""
    nodes = nodes_of(graph, ONNX_NAME, DOMAIN)
    for node in nodes:
        b = Builder(graph, node.name or "msda")
        inputs = list(node.inputs)
        for i in _INT_INPUTS:
            inputs[i] = b.op("Cast", inputs[i], attrs={"to": onnx.TensorProto.INT32})
        out = gs.Variable(f"{b.prefix}/{PLUGIN}_out", dtype=inputs[0].dtype or np.float32)
        plugin = gs.Node(PLUGIN, f"{b.prefix}/{PLUGIN}", {"plugin_version": PLUGIN_VERSION}, inputs, [out],
                         domain=PLUGIN_DOMAIN)
        graph.nodes.append(plugin)
        b.replace(node, "Reshape", out, b.const([0, 0, -1]))  # (N, Lq, M*D)
    if nodes:
        _import_domain(graph, PLUGIN_DOMAIN)
    return len(nodes)


@register_plugin_decomposition(PLUGIN)
def decompose_plugin(graph: gs.Graph) -> int:
    """Each MultiscaleDeformableAttnPlugin_TRT node -> the GridSample decomposition (same inputs, same
    (N, Lq, M, D) output): what export/compile/plugins.py runs in ONNX Runtime in the plugin's place. In an FP16
    graph the decomposition computes in FP32 between Casts (the plugin's FP16 kernel is not reproduced)."""
    nodes = [n for n in graph.nodes if n.op == PLUGIN]
    for node in nodes:
        b = Builder(graph, f"{node.name or 'msda_plugin'}/decomposition")
        inputs = list(node.inputs)
        if inputs[0].dtype == np.float16:  # an FP16 graph: ONNX Runtime's CPU GridSample is FP32 only
            inputs = [x if i in _INT_INPUTS else b.op("Cast", x, attrs={"to": onnx.TensorProto.FLOAT})
                      for i, x in enumerate(inputs)]
            out = b.op("Transpose", _decomposition(graph, b, inputs), attrs=_TO_QUERY_MAJOR)
            b.replace(node, "Cast", out, attrs={"to": onnx.TensorProto.FLOAT16})
        else:
            b.replace(node, "Transpose", _decomposition(graph, b, inputs), attrs=_TO_QUERY_MAJOR)
    return len(nodes)


def _import_domain(graph: gs.Graph, domain: str) -> None:
    domains = list(graph.import_domains or [onnx.helper.make_opsetid("", graph.opset)])
    if not any(d.domain == domain for d in domains):
        domains.append(onnx.helper.make_opsetid(domain, 1))
    graph.import_domains = domains


export_op(
    "multiscale_deformable_attention", ONNX_NAME,
    "Multi-scale deformable attention (Deformable DETR): value (N,S,M,D), spatial_shapes (L,2) int, "
    "level_start_index (L,) int, sampling_locations (N,Lq,M,L,P,2), attention_weights (N,Lq,M,L,P) -> "
    "(N,Lq,M*D); reference: models.ops.msda.multiscale_deformable_attention_reference.",
    INPUTS, ["output"],
    lowerings={"onnxruntime": lower_multiscale_deformable_attention,
               "tensorrt": plugin_multiscale_deformable_attention},
)
