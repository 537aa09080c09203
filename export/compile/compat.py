"""Static check of an ONNX graph against what TensorRT's ONNX parser accepts.

There is no TensorRT (and no GPU) where graphs are exported, so a graph bound for TensorRT is checked
against the parser's own support table instead: ``data/tensorrt_onnx_ops.yaml`` records, per TensorRT
version, the onnx-tensorrt ``docs/operators.md`` table (which ops, which restrictions), the plugins
TensorRT ships, and the restrictions that can be checked without running anything. Its sources
(repository, commit) are in the file.

    violations = check_tensorrt_compat(onnx.load("model.onnx"), trt_version="10.3")
    for v in violations:
        print(v)    # node 'x/MaxUnpool_3' (MaxUnpool): not supported by TensorRT 10.3 (onnx-tensorrt ...)

Every node is checked, including the nodes of If/Loop/Scan bodies and of model-local functions
(the parser expands those, unless a plugin has the function's name). A node is accepted when it is a
supported op of the default ONNX domain that meets the table's restrictions, or when its op type is
the name of a TensorRT plugin (any domain: the parser imports unknown ops through its plugin
fallback) of a version that TensorRT release ships. Anything else in a non-default domain is a custom
op that export/ has not lowered.

What cannot be decided statically: a restriction on a value the graph computes at run time (TopK's
K, a Q/DQ zero point, Reduce axes given as a computed tensor) is reported as a violation that says
so. This checker is the gate before an engine is built on a device, so passing it should mean every
documented restriction was verified; fold constants first (onnx-simplifier, polygraphy) to resolve
such values. Rank restrictions (GridSample, pooling, DeformConv) are checked only where ONNX shape
inference knows the rank.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import numpy_helper

DATA_FILE = Path(__file__).with_name("data") / "tensorrt_onnx_ops.yaml"
TABLE_SOURCE = "onnx-tensorrt docs/operators.md"
PLUGIN_SOURCE = "TensorRT plugin/README.md"
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


@dataclass(frozen=True)
class Violation:
    """One node that TensorRT's ONNX parser would reject, or whose restriction cannot be verified."""

    node: str
    op_type: str
    domain: str
    rule: str

    def __str__(self) -> str:
        op = self.op_type if self.domain in _DEFAULT_DOMAINS else f"{self.domain}::{self.op_type}"
        return f"node '{self.node}' ({op}): {self.rule}"


@dataclass(frozen=True)
class TensorRTTable:
    """One TensorRT version's entry in DATA_FILE: its ONNX op table, plugins and static checks."""

    version: str
    source: Mapping[str, Any]
    operators: Mapping[str, Mapping[str, Any]]
    plugins: Mapping[str, tuple[str, ...]]
    checks: Mapping[str, Mapping[str, Any]]

    def supports(self, op_type: str) -> bool:
        """Whether the table marks this default-domain op as supported (restrictions aside)."""
        return bool(self.operators.get(op_type, {}).get("supported", False))


def known_tensorrt_versions() -> list[str]:
    """The TensorRT versions (major.minor) DATA_FILE has a table for, oldest first."""
    return sorted(_load_data()["versions"], key=_version_tuple)


def tensorrt_table(trt_version: str) -> TensorRTTable:
    """The table for ``trt_version`` ("10.3", "10.3.0" or "10.3.0.26" all select "10.3")."""
    parts = str(trt_version).split(".")
    key = ".".join(parts[:2])
    versions = _load_data()["versions"]
    if len(parts) < 2 or key not in versions:
        raise ValueError(
            f"unknown TensorRT version '{trt_version}'; known: {', '.join(known_tensorrt_versions())} "
            f"(add a table to {DATA_FILE.name} to support another release)")
    entry = versions[key]
    return TensorRTTable(
        version=key,
        source=entry["source"],
        operators=entry["operators"],
        plugins={name: tuple(str(v) for v in vs) for name, vs in entry["plugins"].items()},
        checks=entry["checks"],
    )


def check_tensorrt_compat(model: onnx.ModelProto, trt_version: str = "10.3") -> list[Violation]:
    """Every node of ``model`` (subgraph and local-function bodies included) that TensorRT
    ``trt_version`` would not take, or whose restriction cannot be verified statically."""
    table = tensorrt_table(trt_version)
    model = _with_inferred_shapes(model)
    context = _Context.of(model, table)
    violations: list[Violation] = []
    for node in _walk(model.graph.node, _Scope.of(model.graph), context, prefix=""):
        violations.extend(_check_node(node, table))
    return violations


def _check_node(node: _Node, table: TensorRTTable) -> Iterator[Violation]:
    op, domain = node.proto.op_type, node.proto.domain

    def violation(text: str, source: str) -> Violation:
        return Violation(node.label, op, domain, f"{text} ({source})")

    if domain in _DEFAULT_DOMAINS and op in table.operators:
        if not table.supports(op):
            yield violation(f"not supported by TensorRT {table.version}", TABLE_SOURCE)
            return
        for rule_id, params in table.checks.items():
            if op in _ops_of(params):
                for text in _RULES[rule_id](node, params):
                    yield violation(text, params.get("source", TABLE_SOURCE))
    elif op in table.plugins:
        # The parser's plugin fallback reads the version from this attribute, default "1".
        version = str(node.attr("plugin_version", "1"))
        if version not in table.plugins[op]:
            yield violation(
                f"plugin version '{version}' is not shipped with TensorRT {table.version} "
                f"(versions: {', '.join(table.plugins[op])}); set the plugin_version attribute", PLUGIN_SOURCE)
        for rule_id, params in table.checks.items():  # plugin checks (plugin_inputs) name the plugin as the op
            if op in _ops_of(params):
                for text in _RULES[rule_id](node, params):
                    yield violation(text, params.get("source", PLUGIN_SOURCE))
    elif domain not in _DEFAULT_DOMAINS:
        yield violation(
            f"custom op with no lowering: add a rewrite in export/ or a TensorRT plugin "
            f"(no TensorRT {table.version} plugin is named '{op}')", PLUGIN_SOURCE)
    else:
        yield violation(f"not in TensorRT {table.version}'s ONNX operator table", TABLE_SOURCE)


# ---------------------------------------------------------------------------------------------------
# The graph as the rules see it.


@dataclass(frozen=True)
class _Scope:
    """What a (sub)graph's nodes can see: constants and ranks of their graph and enclosing graphs."""

    initializers: Mapping[str, onnx.TensorProto]
    constant_nodes: Mapping[str, onnx.NodeProto]
    identities: Mapping[str, str]
    ranks: Mapping[str, int]
    types: Mapping[str, int] = field(default_factory=dict)  # element types (onnx.TensorProto) where known

    @classmethod
    def of(cls, graph: onnx.GraphProto | onnx.FunctionProto, outer: _Scope | None = None) -> _Scope:
        """The scope of a graph, a subgraph (sees ``outer``) or a function body (sees only itself)."""
        initializers = {} if isinstance(graph, onnx.FunctionProto) else {t.name: t for t in graph.initializer}
        constants = {n.output[0]: n for n in graph.node
                     if n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS and n.output}
        # onnx-tensorrt looks through Identity to the weights behind it.
        identities = {n.output[0]: n.input[0] for n in graph.node
                      if n.op_type == "Identity" and n.domain in _DEFAULT_DOMAINS and n.input and n.output}
        ranks = {name: len(t.dims) for name, t in initializers.items()}
        types = {name: t.data_type for name, t in initializers.items()}
        for n in constants.values():
            for attr in n.attribute:
                if attr.name == "value":
                    types[n.output[0]] = attr.t.data_type
        infos = [*graph.value_info] if isinstance(graph, onnx.FunctionProto) else [
            *graph.input, *graph.output, *graph.value_info]
        for info in infos:
            tensor_type = info.type.tensor_type
            if info.type.HasField("tensor_type") and tensor_type.HasField("shape"):
                ranks[info.name] = len(tensor_type.shape.dim)
            if info.type.HasField("tensor_type") and tensor_type.elem_type:
                types[info.name] = tensor_type.elem_type
        if outer is None:
            return cls(initializers, constants, identities, ranks, types)
        return cls({**outer.initializers, **initializers}, {**outer.constant_nodes, **constants},
                   {**outer.identities, **identities}, {**outer.ranks, **ranks}, {**outer.types, **types})

    def _resolve(self, name: str) -> str:
        seen = set()
        while name in self.identities and name not in seen:
            seen.add(name)
            name = self.identities[name]
        return name

    def is_constant(self, name: str) -> bool:
        name = self._resolve(name)
        return name in self.initializers or name in self.constant_nodes

    def tensor(self, name: str) -> onnx.TensorProto | None:
        """The TensorProto behind a constant (an initializer or a Constant's ``value``), if any."""
        name = self._resolve(name)
        if name in self.initializers:
            return self.initializers[name]
        node = self.constant_nodes.get(name)
        if node is not None:
            for attr in node.attribute:
                if attr.name == "value":
                    return attr.t
        return None

    def value(self, name: str) -> np.ndarray | None:
        """A constant's value, or None when it is computed at run time or cannot be read here."""
        tensor = self.tensor(name)
        if tensor is not None:
            try:
                return numpy_helper.to_array(tensor)
            except Exception:  # external data not loaded, or a type numpy cannot hold
                return None
        node = self.constant_nodes.get(self._resolve(name))
        if node is None:
            return None
        for attr in node.attribute:
            if attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
                return np.asarray(onnx.helper.get_attribute_value(attr))
        return None


@dataclass(frozen=True)
class _Node:
    """A node plus what its graph knows about its inputs and outputs."""

    proto: onnx.NodeProto
    label: str
    scope: _Scope
    context: _Context

    @property
    def version(self) -> str:
        return self.context.version

    def input(self, i: int) -> str:
        return self.proto.input[i] if i < len(self.proto.input) else ""

    def has_attr(self, name: str) -> bool:
        return any(a.name == name for a in self.proto.attribute)

    def attr(self, name: str, default: Any = None) -> Any:
        for a in self.proto.attribute:
            if a.name == name:
                value = onnx.helper.get_attribute_value(a)
                if isinstance(value, bytes):
                    return value.decode()
                if isinstance(value, list) and value and isinstance(value[0], bytes):
                    return [v.decode() for v in value]
                return value
        return default

    def output_used(self, i: int) -> bool:
        """Whether output ``i`` exists and feeds a node or a graph output."""
        return i < len(self.proto.output) and self.proto.output[i] != "" and self.proto.output[i] in self.context.used

    def input_rank(self, i: int) -> int | None:
        return self.scope.ranks.get(self.input(i))

    def input_type(self, i: int) -> int | None:
        """The element type (onnx.TensorProto) of input ``i``, where shape inference or a constant tells it."""
        return self.scope.types.get(self.input(i))

    def is_constant(self, i: int) -> bool:
        return bool(self.input(i)) and self.scope.is_constant(self.input(i))

    def constant(self, i: int) -> np.ndarray | None:
        return self.scope.value(self.input(i)) if self.input(i) else None


@dataclass(frozen=True)
class _Context:
    """Model-wide facts: which tensors are read, the model-local functions, the target release."""

    used: frozenset[str]
    functions: Mapping[tuple[str, str], onnx.FunctionProto]
    plugins: frozenset[str]
    version: str
    opset: int = 0  # the model's default-domain opset (attribute spellings changed between opsets)

    @classmethod
    def of(cls, model: onnx.ModelProto, table: TensorRTTable) -> _Context:
        used = set(_used_tensor_names(model.graph.node, [o.name for o in model.graph.output]))
        for fn in model.functions:
            used.update(_used_tensor_names(fn.node, list(fn.output)))
        functions = {(fn.domain, fn.name): fn for fn in model.functions}
        opset = max((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), default=0)
        return cls(frozenset(used), functions, frozenset(table.plugins), table.version, opset)

    def inlined_function(self, node: onnx.NodeProto) -> onnx.FunctionProto | None:
        """The local function the parser expands this node into; plugins take priority (10.7 changelog)."""
        if node.op_type in self.plugins:
            return None
        return self.functions.get((node.domain, node.op_type))


def _walk(nodes: Iterable[onnx.NodeProto], scope: _Scope, context: _Context, prefix: str,
          calling: tuple[str, ...] = ()) -> Iterator[_Node]:
    """Every node to check: subgraph bodies included, local function calls replaced by their bodies."""
    for index, proto in enumerate(nodes):
        label = prefix + (proto.name or f"<unnamed {proto.op_type} #{index}>")
        function = context.inlined_function(proto)
        if function is not None and function.name not in calling:
            yield from _walk(function.node, _Scope.of(function), context, f"{label}/{function.name}/",
                             calling + (function.name,))
            continue
        yield _Node(proto, label, scope, context)
        for attr in proto.attribute:
            for sub in _subgraphs(attr):
                yield from _walk(sub.node, _Scope.of(sub, scope), context, f"{label}/{attr.name}/", calling)


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def _used_tensor_names(nodes: Iterable[onnx.NodeProto], outputs: list[str]) -> Iterator[str]:
    """Names read by some node or returned by the graph, at any nesting depth."""
    yield from outputs
    for node in nodes:
        yield from node.input
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                yield from _used_tensor_names(sub.node, [o.name for o in sub.output])


def _with_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # best effort: ranks only sharpen the rank checks (fails e.g. on models > 2 GB)
        return model


# ---------------------------------------------------------------------------------------------------
# Restrictions: one function per rule id used under `checks:` in DATA_FILE. Each yields the text of
# every violation it finds; the checker adds the node and the source.

_Rule = Callable[[_Node, Mapping[str, Any]], Iterator[str]]
_RULES: dict[str, _Rule] = {}


def _rule(rule_id: str) -> Callable[[_Rule], _Rule]:
    def register(fn: _Rule) -> _Rule:
        if rule_id in _RULES:
            raise ValueError(f"rule '{rule_id}' registered twice")
        _RULES[rule_id] = fn
        return fn
    return register


def _ops_of(params: Mapping[str, Any]) -> list[str]:
    return list(params.get("ops") or params.get("inputs") or [])


@_rule("einsum_lowering")
def _einsum_lowering(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    yield (f"TensorRT {node.version} restricts Einsum (ellipsis, diagonal and broadcasting only from "
           f"{params['supported_from']}): lower it to MatMul in export/")


@_rule("maxpool_indices_output")
def _maxpool_indices_output(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    if node.output_used(1):
        yield (f"the Indices output '{node.proto.output[1]}' is used, but TensorRT {node.version} "
               f"supports only MaxPool's first output: rewrite the unpooling without indices")


@_rule("pool_dilations")
def _pool_dilations(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    dilations = node.attr("dilations") or []
    if any(d != 1 for d in dilations):
        yield f"dilations {list(dilations)}: TensorRT {node.version} pools only with dilations of 1"


@_rule("pool_spatial_rank")
def _pool_spatial_rank(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    rank = node.input_rank(0)
    if rank is not None and rank - 2 not in params["spatial_ranks"]:
        yield f"{rank - 2}-D pooling (input rank {rank}): TensorRT {node.version} pools in 2-D or 3-D only"


@_rule("topk")
def _topk(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    if node.attr("sorted", 1) != params["sorted"]:
        yield f"sorted=0 is unsupported by TensorRT {node.version}: set sorted=1"
    limit = params["k_less_than"]
    if node.has_attr("k"):  # opset < 10
        k = np.asarray(node.attr("k"))
    elif node.input(1):
        k = node.constant(1)
    else:
        return
    if k is None:
        yield (f"K comes from the computed tensor '{node.input(1)}', so 'K < {limit}' cannot be checked "
               f"statically: fold it to a constant")
    elif int(k.reshape(-1)[0]) >= limit:
        yield f"K={int(k.reshape(-1)[0])}, but TensorRT {node.version} needs K < {limit}"


_QUANTIZED_TYPE_NAMES = {
    onnx.TensorProto.INT8: "INT8", onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.INT4: "INT4", onnx.TensorProto.UINT4: "UINT4",
    onnx.TensorProto.FLOAT8E4M3FN: "FP8", onnx.TensorProto.FLOAT4E2M1: "FP4",
}


@_rule("qdq_zero_point")
def _qdq_zero_point(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    name = node.input(2)
    if not name:  # no zero point: the parser quantizes to INT8 with zero point 0
        return
    tensor, value = node.scope.tensor(name), node.constant(2)
    if value is None:
        yield (f"zero point '{name}' is not a readable constant, so 'zero point must be 0' cannot be "
               f"checked statically")
        return
    if tensor is not None:
        qtype = _QUANTIZED_TYPE_NAMES.get(tensor.data_type, onnx.TensorProto.DataType.Name(tensor.data_type))
        if qtype not in params["quantized_types"]:
            yield (f"{qtype} zero point '{name}': TensorRT {node.version} quantizes to "
                   f"{', '.join(params['quantized_types'])} only (signed, symmetric)")
    if np.any(value.astype(np.float32) != 0):
        yield f"zero point '{name}' is non-zero: TensorRT {node.version} supports only symmetric quantization (zero point 0)"


@_rule("resize")
def _resize(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    settings = [
        ("mode", "nearest", "modes"),
        ("coordinate_transformation_mode", "half_pixel", "coordinate_transformation_modes"),
        ("nearest_mode", "round_prefer_floor", "nearest_modes"),
        ("keep_aspect_ratio_policy", "stretch", "keep_aspect_ratio_policies"),
    ]
    for attr, default, allowed_key in settings:
        value = node.attr(attr, default)
        if value not in params[allowed_key]:
            yield (f"{attr}='{value}' is unsupported by TensorRT {node.version}: use one of "
                   f"{', '.join(params[allowed_key])}")
    if node.attr("antialias", 0) and not params["antialias"]:
        yield f"antialias=1 is unsupported by TensorRT {node.version}: export with antialias=False"


@_rule("scatternd_reduction")
def _scatternd_reduction(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    if not node.has_attr("reduction"):
        return
    reduction, allowed = node.attr("reduction"), params["reductions"]
    if reduction in allowed:
        return
    if not allowed:
        yield (f"TensorRT {node.version} rejects ScatterND's reduction attribute, even 'none' "
               f"(here '{reduction}'): remove it")
    else:
        yield f"reduction='{reduction}' is unsupported by TensorRT {node.version}: use one of {', '.join(allowed)}"


@_rule("gridsample_rank")
def _gridsample_rank(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    rank = node.input_rank(0)
    if rank is not None and rank != params["input_rank"]:
        yield f"input rank {rank}: TensorRT {node.version} samples {params['input_rank']}-D input only"


@_rule("gridsample_mode")
def _gridsample_mode(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    # ONNX opset 20 renamed GridSample's modes bilinear/bicubic to linear/cubic (and made linear the default);
    # the importer knows only the old spellings and samples with nearest on any other string, silently.
    renamed_in, renamed = params["renamed_in_opset"], params["renamed"]
    opset = node.context.opset
    default = "linear" if opset >= renamed_in else "bilinear"
    mode = node.attr("mode", default)
    if mode in params["modes"]:
        return
    how = "" if node.has_attr("mode") else f" (the default at opset {opset})"
    if mode in renamed:
        yield (f"mode='{mode}'{how}, the opset-{renamed_in} spelling of '{renamed[mode]}': TensorRT "
               f"{node.version}'s importer reads only {', '.join(params['modes'])} and would sample with nearest; "
               f"export at opset < {renamed_in} or spell the mode '{renamed[mode]}'")
    else:
        yield (f"mode='{mode}'{how} is unknown to TensorRT {node.version}'s importer (it reads "
               f"{', '.join(params['modes'])}) and would sample with nearest")


_TYPE_NAMES = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16",
               onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT8: "INT8",
               onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.DOUBLE: "FP64", onnx.TensorProto.UINT8: "UINT8"}


@_rule("plugin_inputs")
def _plugin_inputs(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    # A plugin's inputs are positional and typed (its supportsFormatCombination); the parser passes them as
    # they come, so a wrong order or type fails only when the engine is built, on the device.
    spec = params["inputs"][node.proto.op_type]  # input name -> a type, or "float": one of float_types
    names = list(spec)
    if len(node.proto.input) != len(names):
        yield (f"{len(node.proto.input)} inputs, but the plugin takes {len(names)}, in this order: "
               f"{', '.join(names)}")
        return
    float_types = []
    for i, (name, wanted) in enumerate(spec.items()):
        actual = node.input_type(i)
        if actual is None:
            yield (f"the type of input '{name}' ('{node.input(i)}') is unknown, so the plugin's input types "
                   f"cannot be checked statically: run shape inference")
            continue
        actual = _TYPE_NAMES.get(actual, onnx.TensorProto.DataType.Name(actual))
        allowed = params["float_types"] if wanted == "float" else [wanted]
        if actual not in allowed:
            yield (f"input {i} '{name}' is {actual}, but the plugin takes {' or '.join(allowed)} there in "
                   f"TensorRT {node.version}" + (": cast it" if wanted != "float" else ""))
        elif wanted == "float":
            float_types.append(actual)
    if len(set(float_types)) > 1:
        yield (f"float inputs of different types ({', '.join(float_types)}): the plugin takes all of them in "
               f"one type")


@_rule("uint8_cast")
def _uint8_cast(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    # TensorRT converts UINT8 only from and to FLOAT and HALF (NvInferRuntimeBase.h, DataType::kUINT8); the ONNX
    # parser turns Cast/CastLike into an ICastLayer with the types as given, so e.g. INT64 -> UINT8 fails on the device.
    source = node.input_type(0)
    target = node.attr("to") if node.proto.op_type == "Cast" else node.input_type(1)
    uint8 = onnx.TensorProto.UINT8
    if uint8 not in (source, target) or source == target:
        return
    allowed = params["convertible"]
    names = [None if t is None else _TYPE_NAMES.get(t, onnx.TensorProto.DataType.Name(t)) for t in (source, target)]
    other = names[1] if source == uint8 else names[0]
    if other is None:
        yield (f"a UINT8 conversion whose other type is unknown, so 'UINT8 converts only from/to "
               f"{', '.join(allowed)}' cannot be checked statically: run shape inference")
    elif other not in allowed:
        yield (f"{names[0]} -> {names[1]}: TensorRT {node.version} converts UINT8 only from and to "
               f"{' and '.join(allowed)}; cast through FLOAT (e.g. {names[0]} -> FLOAT -> {names[1]})")


@_rule("constant_inputs")
def _constant_inputs(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    for name, index in params["inputs"][node.proto.op_type].items():
        if node.input(index) and not node.is_constant(index):
            yield (f"'{name}' comes from the computed tensor '{node.input(index)}'; TensorRT {node.version} "
                   f"needs it as an initializer or Constant (fold constants first)")


@_rule("layernorm_outputs")
def _layernorm_outputs(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    usable = params["usable_outputs"]
    extra = [node.proto.output[i] for i in range(usable, len(node.proto.output)) if node.output_used(i)]
    if extra:
        yield (f"output {', '.join(repr(e) for e in extra)} used, but TensorRT {node.version} supports only "
               f"the first output (Y): compute mean / inverse std dev with separate ops")


@_rule("deformconv")
def _deformconv(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    pads = list(node.attr("pads") or [])
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        yield (f"pads {pads} differ at begin and end of an axis; TensorRT {node.version} needs them equal: "
               f"pad the input with a Pad node instead")
    rank = node.input_rank(0)
    if rank is not None and rank - 2 not in params["spatial_ranks"]:
        yield f"{rank - 2}-D input (rank {rank}): TensorRT {node.version} takes 1-D or 2-D spatial input only"


@_rule("constant_attributes")
def _constant_attributes(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    for attr in params["unsupported"]:
        if node.has_attr(attr):
            yield f"attribute '{attr}' is unsupported by TensorRT {node.version}: store a dense 'value' tensor"


@_rule("dropout_inference")
def _dropout_inference(node: _Node, params: Mapping[str, Any]) -> Iterator[str]:
    if not node.input(2):
        return
    value = node.constant(2)
    if value is None or bool(value.reshape(-1)[0]):
        yield f"training_mode must be a constant False for TensorRT {node.version}"


# ---------------------------------------------------------------------------------------------------


@functools.cache
def _load_data() -> dict[str, Any]:
    with DATA_FILE.open() as f:
        data = yaml.safe_load(f)
    for version, entry in data["versions"].items():
        unknown = sorted(set(entry["checks"]) - set(_RULES))
        if unknown:
            raise ValueError(
                f"{DATA_FILE}: TensorRT {version} lists checks {unknown} that export/compile/compat.py does not "
                f"implement; implemented: {', '.join(sorted(_RULES))}")
    return data


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))
