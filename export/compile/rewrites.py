"""Stage 2: graph surgery with onnx-graphsurgeon, chosen per target.

A rewrite is one function named by intent, registered with the targets it applies to (custom ops' lowerings
live beside their schemas in export/ops/ and register here). It matches nodes by
op type and domain (never by tensor names), builds the replacement, and disconnects the original; the
shared tail (constant folding, cleanup, toposort, shape inference) removes what is left.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from engines.artifacts import TARGETS



@dataclass(frozen=True)
class Rewrite:
    name: str
    fn: Callable[[gs.Graph], int]
    targets: tuple[str, ...]


REWRITES: dict[str, Rewrite] = {}


def register_rewrite(*targets: str):
    """Register ``fn(graph) -> number of nodes rewritten`` for the given targets (default: all)."""

    def decorator(fn: Callable[[gs.Graph], int]) -> Callable[[gs.Graph], int]:
        if fn.__name__ in REWRITES:
            raise ValueError(f"rewrite {fn.__name__!r} is registered twice")
        REWRITES[fn.__name__] = Rewrite(fn.__name__, fn, targets or TARGETS)
        return fn

    return decorator


KEEP_FLOAT_KEY = "seg.keep_float_nodes"


class Builder:
    """Adds nodes to a graph with generated names: ``b.op("MatMul", a, c)`` returns the output tensor.

    ``keep_float=True`` marks a node that must not be quantized or cast to FP16 (it carries -inf masks or
    similar); the marks travel in the model's metadata (``KEEP_FLOAT_KEY``) to the precision stage.
    """

    def __init__(self, graph: gs.Graph, prefix: str) -> None:
        self.graph, self.prefix, self.count = graph, prefix, 0
        self.keep_float: list[str] = graph.__dict__.setdefault("_keep_float", [])

    def op(self, op_type: str, *inputs, attrs: dict | None = None, outputs: list | None = None,
           keep_float: bool = False) -> gs.Variable:
        self.count += 1
        name = f"{self.prefix}/{op_type}_{self.count}"
        outs = outputs or [gs.Variable(f"{name}_out")]
        self.graph.nodes.append(gs.Node(op_type, name, attrs or {}, list(inputs), outs))
        if keep_float:
            self.keep_float.append(name)
        return outs[0]

    def replace(self, node: gs.Node, op_type: str, *inputs, attrs: dict | None = None,
                keep_float: bool = False) -> None:
        """The last node of a lowering: it writes ``node``'s one output, and ``node`` is disconnected, so
        ``cleanup()`` removes it."""
        outputs = list(node.outputs)
        node.outputs.clear()
        self.op(op_type, *inputs, attrs=attrs, outputs=outputs, keep_float=keep_float)
        node.inputs.clear()

    def const(self, value, dtype=np.int64) -> gs.Constant:
        self.count += 1
        return gs.Constant(f"{self.prefix}/const_{self.count}", np.array(value, dtype=dtype))


def nodes_of(graph: gs.Graph, op_type: str, domain: str = "") -> list[gs.Node]:
    """The nodes of one op type and domain: rewrites match by these, never by tensor names."""
    return [n for n in graph.nodes if n.op == op_type and (n.domain or "") == domain]


def apply_rewrites(model: onnx.ModelProto, target: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Run every rewrite registered for ``target``, then fold constants, clean up, sort and infer shapes.

    Returns the new graph and how many nodes each rewrite changed.
    """
    from .. import ops  # noqa: F401  (registers the custom ops' lowerings)
    from . import fusions  # noqa: F401  (registers the ONNX Runtime target's fusions, after the lowerings)

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    graph = gs.import_onnx(model)
    counts = {r.name: r.fn(graph) for r in REWRITES.values() if target in r.targets}
    graph.cleanup().toposort()
    logging.getLogger("ModelImporter").setLevel(logging.ERROR)
    gs.logger.G_LOGGER.module_severity = gs.logger.G_LOGGER.ERROR
    graph.fold_constants().cleanup().toposort()
    out = gs.export_onnx(graph)
    _drop_unused_opsets(out)
    alive = {n.name for n in out.graph.node}
    keep = sorted(set(keep_float_nodes(model)) | set(graph.__dict__.get("_keep_float", [])))
    _set_metadata(out, KEEP_FLOAT_KEY, json.dumps([n for n in keep if n in alive]))
    out = onnx.shape_inference.infer_shapes(out)
    return out, {k: v for k, v in counts.items() if v}


def keep_float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes rewrites marked as must-stay-float."""
    for prop in model.metadata_props:
        if prop.key == KEEP_FLOAT_KEY:
            return json.loads(prop.value)
    return []


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)
