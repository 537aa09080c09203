"""TensorRT plugin nodes in TensorRT-bound graphs, and how such a graph is measured where TensorRT is missing.

A lowering for the ``tensorrt`` target may emit a TensorRT plugin node (export/ops/msda.py:
``MultiscaleDeformableAttnPlugin_TRT``); ONNX Runtime cannot run it. ``runnable_on_onnxruntime`` gives the same
graph with each plugin node replaced by its decomposition into standard ops, which computes what the plugin
computes (both equal the op's PyTorch reference: tests/test_msda.py). The plugin's kernel itself is not run
here: accuracy measured this way is the graph's, with the decomposition in the plugin's place.
"""
from __future__ import annotations

from typing import Callable

import onnx
import onnx_graphsurgeon as gs

# plugin op type -> rewrite replacing each such node by standard ops (same inputs and output)
PLUGIN_DECOMPOSITIONS: dict[str, Callable[[gs.Graph], int]] = {}


def register_plugin_decomposition(op_type: str):
    """Register ``fn(graph) -> nodes replaced`` as the standard-op equivalent of plugin ``op_type``."""

    def decorator(fn: Callable[[gs.Graph], int]) -> Callable[[gs.Graph], int]:
        if op_type in PLUGIN_DECOMPOSITIONS:
            raise ValueError(f"plugin {op_type!r} has two decompositions")
        PLUGIN_DECOMPOSITIONS[op_type] = fn
        return fn

    return decorator


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The main graph's nodes whose op type is a plugin with a registered decomposition."""
    from .. import ops  # noqa: F401  (registers the decompositions)

    return [n for n in model.graph.node if n.op_type in PLUGIN_DECOMPOSITIONS]


def runnable_on_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every TensorRT plugin node replaced by its standard-op decomposition, so ONNX Runtime can
    run it; a graph without plugin nodes is returned as it is. The plugin's own kernel is not run: this
    measures the graph around it, with the decomposition (equal to the plugin's definition) in its place."""
    if not plugin_nodes(model):
        return model
    graph = gs.import_onnx(model)
    for fn in PLUGIN_DECOMPOSITIONS.values():
        fn(graph)
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    used = {n.domain for n in out.graph.node} | {"", "ai.onnx"}
    keep = [o for o in out.opset_import if o.domain in used]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


def around_plugins(transform: Callable[[onnx.ModelProto], onnx.ModelProto],
                   model: onnx.ModelProto) -> onnx.ModelProto:
    """``transform(model)`` for a transformation that runs the graph in ONNX Runtime (INT8 calibration:
    ``precision.to_int8``): applied to ``runnable_on_onnxruntime(model)``, after which each plugin node is put
    back, reading the same tensors, in place of its decomposition. The transformation must keep the plugin's
    input and output tensors (TensorRT's INT8 placement only adds Q/DQ before Conv/MatMul/Gemm inputs)."""
    plugins = plugin_nodes(model)
    if not plugins:
        return transform(model)
    runnable = runnable_on_onnxruntime(model)
    # The plugin's tensors become graph outputs for the transformation, so that no optimisation inside it
    # (constant folding, fusions of the quantizer's pre-processing) can fold them away; dropped afterwards.
    graph_outputs = [o.name for o in model.graph.output]
    kept = [t for p in plugins for t in [*p.input, *p.output] if t not in graph_outputs]
    runnable.graph.output.extend(onnx.ValueInfoProto(name=t) for t in dict.fromkeys(kept))
    out = transform(runnable)
    graph = gs.import_onnx(out)
    tensors = graph.tensors()
    for proto in plugins:
        missing = [t for t in [*proto.input, *proto.output] if t not in tensors]
        if missing:
            raise ValueError(f"plugin node {proto.name!r}: the transformed graph lost its tensors {missing}; "
                             f"it cannot be put back")
        (output,) = proto.output
        producer = tensors[output].inputs[0]
        producer.outputs.clear()
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        graph.nodes.append(gs.Node(proto.op_type, proto.name, attrs, [tensors[t] for t in proto.input],
                                   [tensors[output]], domain=proto.domain))
    graph.outputs = [t for t in graph.outputs if t.name in graph_outputs]
    graph.cleanup().toposort()
    restored = gs.export_onnx(graph)
    domains = {o.domain for o in restored.opset_import}
    restored.opset_import.extend(o for o in model.opset_import if o.domain not in domains
                                 and o.domain in {p.domain for p in plugins})
    del restored.metadata_props[:]
    restored.metadata_props.extend(out.metadata_props)
    return restored
