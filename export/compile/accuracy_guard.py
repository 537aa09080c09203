"""Precision never silently costs accuracy: two guards around stage 4 (``precision.py``), measured with ONNX
Runtime on the CPU on the same graphs TensorRT and ONNX Runtime will run.

- ``int8_with_budget``: quantize everything; if the score drops by more than the budget, find the layers whose
  quantization costs the most and keep them in float (no Q/DQ: ``nodes_to_exclude``), one at a time, until the
  budget holds or ``max_fallback`` layers are kept. The report says which layers and what each recovered.
- ``fp16_with_range_guard``: run the FP32 graph on calibration data, record every tensor's largest magnitude,
  and keep in FP32 the nodes that would write (or read, or compute internally) a value near FP16's largest
  finite value, 65504, before they can turn it into inf/NaN.

Both work for both INT8 placements ('tensorrt' and 'onnxruntime'), because both only choose which nodes the
existing converters leave alone.
"""
from __future__ import annotations

import copy
import json
import logging
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .plugins import runnable_on_onnxruntime
from .precision import (DEFAULT_CPU_INT8_PLACEMENT, FP16_KEEP_FP32, TENSORRT_QUANTIZED_OPS, quantized_op_types,
                        to_fp16, to_int8)
from .rewrites import KEEP_FLOAT_KEY, keep_float_nodes

log = logging.getLogger(__name__)

FP16_MAX = 65504.0  # np.finfo(np.float16).max

# How many calibration batches the cheap per-node proxy looks at: it only orders the candidates, and it holds
# the inputs of every candidate layer of one batch in memory at once.
PROXY_BATCHES = 8


# ---------------------------------------------------------------------------------------------------------------
# INT8: sensitivity fallback
# ---------------------------------------------------------------------------------------------------------------

def int8_with_budget(fp32_model: onnx.ModelProto, calibration: list[np.ndarray], target: str, method: str,
                     evaluate: Callable[[onnx.ModelProto], float], reference_score: float, budget: float,
                     max_fallback: int = 8, top_k: int = 8,
                     placement: str = DEFAULT_CPU_INT8_PLACEMENT) -> tuple[onnx.ModelProto, dict]:
    """Quantize ``fp32_model`` with ``precision.to_int8`` (``placement``: the CPU target's, ignored for
    TensorRT); keep layers in float until ``reference_score - evaluate(model) <= budget``.

    ``evaluate(model)`` scores a graph on the user's evaluation set (higher is better, e.g. mIoU in points);
    ``reference_score`` is the score to protect (usually ``evaluate(fp32_model)``). Keeping something in
    float means passing node names to quantize_static's ``nodes_to_exclude`` (through the keep-float marks
    ``to_int8`` already honours), so they get no Q/DQ of their own and their weights stay float. Two kinds
    of candidate:

    - a layer: one quantized Conv/ConvTranspose/MatMul/Gemm node;
    - an op type: every node of one type the placement quantizes besides those layers (ONNX Runtime's CPU
      placement ``all_ops`` also quantizes Add, Mul, Resize, Concat, pooling, BatchNormalization...; the
      TensorRT placement and the CPU's ``conv_matmul`` have none). One such node alone is a weak
      candidate: the tensors it reads keep the Q/DQ its quantized neighbours put on them (on BiSeNetV2,
      excluding any one of its 22 such nodes alone moved mIoU by at most 0.05 points). Excluding the type takes all of their Q/DQ pairs out (e.g. residual sums
      computed in float, not in INT8) while the layers around them stay INT8.

    The method is greedy forward selection on the score the user cares about, "accuracy recovered when kept
    in higher precision":

    1. Proxy (no ``evaluate`` calls): one pass of the FP32 graph over the first ``PROXY_BATCHES`` calibration
       batches; each layer is replayed alone on its FP32 inputs and on the same inputs fake-quantized with
       the scales the quantizer chose (weights as the INT8 graph stores them). The proxy is the fraction of
       its output channels whose quantization noise reaches their signal (per-channel noise-to-signal,
       clipped at 1): per-channel, because one outlier channel that sets a per-tensor scale wipes out the
       small channels while hardly moving a per-tensor error. The ``top_k`` worst layers are shortlisted,
       and every op type joins the shortlist (there are few).
    2. Sensitivity analysis: each shortlisted candidate is excluded alone and the graph re-quantized and
       evaluated; the one that recovers most is kept.
    3. Each further step re-evaluates the remaining shortlist with the kept candidates already excluded (a
       layer's cost changes once another is kept: in both placements a tensor between two quantized layers
       keeps the Q/DQ its producer puts on its output until the producer is excluded too) and keeps the best.
       The search stops when the budget holds, ``max_fallback`` candidates are kept, the shortlist is used
       up, or no remaining candidate improves the score (keeping it would cost speed for nothing).

    Cost: every evaluation is one ``to_int8`` (a calibration pass plus quantization) and one ``evaluate``.
    With K candidates on the shortlist (min(top_k, layers) plus the op types) and F kept: 1 + K + (K-1) +
    ... + (K-F+1) evaluations, at most 1 + K * max_fallback. A model already within the budget costs 1.
    Candidates that only help together (neither alone) are found only if one helps alone.

    Returns the INT8 graph (the last improving step's, if the budget never holds) and a report: ``target``,
    ``placement`` ("tensorrt" for that target), ``method``, ``reference_score``, ``budget``,
    ``initial_score``, ``final_score``, ``held``, ``kept`` (node: the layer's name or "every <op type>", op
    type, the node names excluded, score recovered, score after),
    ``sensitivity`` (the single-exclusion analysis, with each layer's proxy; None for op types),
    ``candidates`` (quantized layers), ``op_types`` (op types analysed), ``evaluations``.
    """
    if max_fallback < 0 or top_k < 1:
        raise ValueError(f"max_fallback={max_fallback}, top_k={top_k}: expected max_fallback >= 0 and top_k >= 1")
    evaluations = 0

    def quantize_and_score(kept: list[str]) -> tuple[onnx.ModelProto, float]:
        nonlocal evaluations
        model = to_int8(_with_keep_float(fp32_model, kept), calibration, target, method, placement=placement)
        _check_kept_in_float(model, kept)
        evaluations += 1
        return model, float(evaluate(model))

    model, initial = quantize_and_score([])
    report = {"target": target, "placement": "tensorrt" if target == "tensorrt" else placement, "method": method,
              "reference_score": float(reference_score),
              "budget": float(budget), "initial_score": initial, "final_score": initial,
              "held": reference_score - initial <= budget, "kept": [], "sensitivity": [], "candidates": 0,
              "op_types": []}
    if report["held"] or max_fallback == 0:
        report["evaluations"] = evaluations
        return model, report

    shortlist, layers, op_types = _shortlist(fp32_model, model, target, placement, calibration, top_k)
    report.update(candidates=layers, op_types=op_types)
    log.info("INT8 score %.3f misses %.3f - %.3f; analysing %d of %d layers and %d op types", initial,
             reference_score, budget, len(shortlist) - len(op_types), layers, len(op_types))
    model, score, kept = _greedy_fallback(model, initial, shortlist, quantize_and_score,
                                          lambda score: reference_score - score <= budget, max_fallback, report)
    report["sensitivity"].sort(key=lambda row: -row["recovered"])
    report.update(final_score=score, held=reference_score - score <= budget)
    if not report["held"]:
        log.warning("INT8 misses its accuracy budget: %.3f vs reference %.3f (budget %.3f) with %d layers kept "
                    "in float", score, reference_score, budget, len(kept))
    report["evaluations"] = evaluations
    return model, report


def _shortlist(fp32_model: onnx.ModelProto, model: onnx.ModelProto, target: str, placement: str,
               calibration: list[np.ndarray], top_k: int) -> tuple[list["_Candidate"], int, list[str]]:
    """Step 1: the ``top_k`` layers the proxy finds worst, and every other op type the placement quantizes
    (all nodes of one type are a single candidate). Also returns the number of quantized layers and the op
    types."""
    quantized = _quantized_nodes(model, set(keep_float_nodes(fp32_model)))
    layer_op = {n.name: n.op_type for n in quantized if n.op_type in TENSORRT_QUANTIZED_OPS}
    other_types = set(quantized_op_types(target, placement)) - set(TENSORRT_QUANTIZED_OPS)
    groups: dict[str, list[str]] = {}
    for n in quantized:
        if n.op_type in other_types:
            groups.setdefault(n.op_type, []).append(n.name)
    proxy = _proxy_errors(_prepare_like_to_int8(fp32_model), model, list(layer_op), calibration[:PROXY_BATCHES])
    shortlist = [_Candidate(name, layer_op[name], [name], proxy[name])
                 for name in sorted(proxy, key=lambda name: -proxy[name])[:top_k]]
    shortlist += [_Candidate(f"every {op}", op, names, None) for op, names in groups.items()]
    return shortlist, len(layer_op), sorted(groups)


def _greedy_fallback(model: onnx.ModelProto, initial: float, shortlist: list["_Candidate"],
                     quantize_and_score: Callable[[list[str]], tuple[onnx.ModelProto, float]],
                     holds: Callable[[float], bool], max_fallback: int,
                     report: dict) -> tuple[onnx.ModelProto, float, list[str]]:
    """Steps 2-3: keep the candidate that recovers most, again with the kept ones excluded, until the budget
    ``holds``, ``max_fallback`` are kept, the shortlist is used up or nothing improves. Fills the report's
    ``sensitivity`` (first round) and ``kept``; returns the model, its score and the excluded node names."""
    kept: list[str] = []
    score = initial
    while shortlist and len(report["kept"]) < max_fallback:
        best, best_model, best_score = None, None, -np.inf
        for candidate in shortlist:
            trial_model, trial_score = quantize_and_score(kept + candidate.nodes)
            if not kept:
                report["sensitivity"].append({"node": candidate.label, "op_type": candidate.op_type,
                                              "proxy": candidate.proxy, "recovered": trial_score - initial})
            # Equal scores go to the layer the proxy finds worse; op types (no proxy) come last.
            if trial_score > best_score or (trial_score == best_score and candidate.rank > best.rank):
                best, best_model, best_score = candidate, trial_model, trial_score
        if best_score <= score:
            break
        kept += best.nodes
        shortlist.remove(best)
        report["kept"].append({"node": best.label, "op_type": best.op_type, "nodes": best.nodes,
                               "recovered": best_score - score, "score": best_score})
        model, score = best_model, best_score
        if holds(score):
            break
    return model, score, kept


class _Candidate(NamedTuple):
    """What the INT8 fallback may keep in float: one layer, or every node of one op type."""

    label: str  # the layer's node name, or "every <op type>"
    op_type: str
    nodes: list[str]  # kept in float together
    proxy: float | None  # layers only

    @property
    def rank(self) -> float:
        return -1.0 if self.proxy is None else self.proxy


def _with_keep_float(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose keep-float marks also name ``names``: ``to_int8`` passes the marks to
    quantize_static's ``nodes_to_exclude``, so the INT8 graph is built exactly as a normal build builds it."""
    out = copy.deepcopy(model)
    marks = keep_float_nodes(out) + [n for n in names if n not in keep_float_nodes(out)]
    for prop in out.metadata_props:
        if prop.key == KEEP_FLOAT_KEY:
            prop.value = json.dumps(marks)
            break
    else:
        out.metadata_props.add(key=KEEP_FLOAT_KEY, value=json.dumps(marks))
    return out


def _check_kept_in_float(model: onnx.ModelProto, names: list[str]) -> None:
    """A kept layer must exist in the INT8 graph with float weights. Names come from the quantizer's own
    pre-processed graph; if that ever renamed a node, the exclusion would silently do nothing."""
    producers = {o: n for n in model.graph.node for o in n.output}
    initializers = {i.name for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for name in names:
        if name not in nodes:
            raise RuntimeError(f"layer {name!r} chosen to stay in float is not in the INT8 graph; the quantizer's "
                               f"pre-processing renamed it, so excluding it has no effect")
        for tensor in nodes[name].input:
            dq = producers.get(tensor)
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in initializers:
                raise RuntimeError(f"layer {name!r} was excluded from quantization but its input {tensor!r} is "
                                   f"still quantized")


def _quantized_nodes(int8_model: onnx.ModelProto, already_float: set[str]) -> list[onnx.NodeProto]:
    """Named nodes of the INT8 graph that read at least one dequantized tensor and are not kept in float."""
    dq_outputs = {o for n in int8_model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n for n in int8_model.graph.node
            if n.name and n.name not in already_float and any(i in dq_outputs for i in n.input)]


def _prepare_like_to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """The FP32 graph the quantizer actually quantizes (``to_int8`` runs the same pre-processing): BatchNorm
    folded into Conv etc., node names kept, so its weights and tensors line up with the INT8 graph's."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        src, prep = Path(tmp) / "in.onnx", Path(tmp) / "prep.onnx"
        onnx.save(model, str(src))
        quant_pre_process(str(src), str(prep), skip_symbolic_shape=True)
        return onnx.load(str(prep))


def _proxy_errors(fp32_model: onnx.ModelProto, int8_model: onnx.ModelProto, names: list[str],
                  batches: list[np.ndarray]) -> dict[str, float]:
    """Per layer: the fraction of output channels its own quantization destroys (see ``int8_with_budget``);
    layers missing from ``fp32_model`` (which the quantizer's pre-processing would have to have renamed) get
    no entry.

    Each layer is replayed alone, on its FP32 inputs and on those inputs passed through the Q/DQ the INT8
    graph puts in front of it, so upstream errors do not leak into a layer's number.
    """
    import onnxruntime as ort

    fp32_nodes = {n.name: n for n in fp32_model.graph.node}
    int8_nodes = {n.name: n for n in int8_model.graph.node}
    fp32_init = {i.name: numpy_helper.to_array(i) for i in fp32_model.graph.initializer}
    int8_init = {i.name: numpy_helper.to_array(i) for i in int8_model.graph.initializer}
    int8_producer = {o: n for n in int8_model.graph.node for o in n.output}
    names = [n for n in names if n in fp32_nodes]
    needed = {t for n in names for t in fp32_nodes[n].input if t and t not in fp32_init}

    replays = {n: ort.InferenceSession(_single_node_model(int8_nodes[n], fp32_model).SerializeToString(),
                                       providers=["CPUExecutionProvider"]) for n in names}
    noise: dict[str, np.ndarray] = {}
    signal: dict[str, np.ndarray] = {}
    for values in _run_exposing(fp32_model, batches, needed):
        for name in names:
            node8 = int8_nodes[name]
            exact, quantized = {}, {}
            for i, (t32, t8) in enumerate(zip(fp32_nodes[name].input, node8.input)):
                if not t32:
                    continue
                x = fp32_init[t32] if t32 in fp32_init else values[t32]
                exact[f"in{i}"] = x.astype(np.float32)
                quantized[f"in{i}"] = _through_qdq(x, t8, int8_producer, int8_init).astype(np.float32)
            y = replays[name].run(None, exact)[0]
            y_q = replays[name].run(None, quantized)[0]
            axis = 1 if node8.op_type in ("Conv", "ConvTranspose") else y.ndim - 1
            reduce = tuple(a for a in range(y.ndim) if a != axis)
            noise[name] = noise.get(name, 0) + np.sum(np.square(y_q - y, dtype=np.float64), axis=reduce)
            signal[name] = signal.get(name, 0) + np.sum(np.square(y, dtype=np.float64), axis=reduce)
    out = {}
    for name in names:
        with np.errstate(divide="ignore", invalid="ignore"):
            nsr = np.where(signal[name] > 0, noise[name] / signal[name], (noise[name] > 0).astype(np.float64))
        out[name] = float(np.mean(np.minimum(nsr, 1.0)))
    return out


def _single_node_model(node: onnx.NodeProto, like: onnx.ModelProto) -> onnx.ModelProto:
    inputs = [f"in{i}" for i, t in enumerate(node.input) if t]
    single = helper.make_node(node.op_type, [f"in{i}" if t else "" for i, t in enumerate(node.input)], ["out"],
                              domain=node.domain)
    single.attribute.extend(node.attribute)
    graph = helper.make_graph([single], "replay",
                              [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in inputs],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=like.opset_import, ir_version=like.ir_version)


def _through_qdq(x: np.ndarray, int8_tensor: str, producer: dict[str, onnx.NodeProto],
                 initializers: dict[str, np.ndarray]) -> np.ndarray:
    """What the INT8 graph feeds a layer in place of the FP32 value ``x``: a DequantizeLinear of a stored
    integer initializer (weights, ORT's int32 biases), a Q/DQ pair applied to ``x`` (activations), or ``x``."""
    dq = producer.get(int8_tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return x
    stored = dq.input[0]
    if stored in initializers:
        return _dequantize(initializers[stored], dq, initializers)
    q = producer.get(stored)
    if q is None or q.op_type != "QuantizeLinear":
        return x
    scale, zero = _qparams(q, initializers)
    axis = _axis(q, x.ndim)
    info = np.iinfo(zero.dtype)
    integers = np.clip(np.rint(x / _along(scale, axis, x.ndim)) + _along(zero, axis, x.ndim), info.min, info.max)
    return _dequantize(integers.astype(zero.dtype), dq, initializers)


def _dequantize(integers: np.ndarray, dq: onnx.NodeProto, initializers: dict[str, np.ndarray]) -> np.ndarray:
    scale, zero = _qparams(dq, initializers)
    axis = _axis(dq, integers.ndim)
    return ((integers.astype(np.float64) - _along(zero, axis, integers.ndim)) * _along(scale, axis, integers.ndim))


def _qparams(node: onnx.NodeProto, initializers: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    scale = initializers[node.input[1]].astype(np.float64)
    zero = initializers[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, np.uint8)
    return scale, zero


def _axis(node: onnx.NodeProto, ndim: int) -> int:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return axis % ndim if ndim else 0


def _along(param: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A per-tensor (scalar) or per-channel (1-D) quantization parameter, broadcastable along ``axis``."""
    if param.ndim == 0:
        return param.astype(np.float64)
    shape = [1] * ndim
    shape[axis] = -1
    return param.astype(np.float64).reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# FP16: range guard
# ---------------------------------------------------------------------------------------------------------------

# Ops that square their input internally (variance, L2 norm) without storing the square in a tensor: in FP16
# the square overflows once |x| > 256, even where input and output are small.
_SQUARES_INPUT = {"LayerNormalization", "InstanceNormalization", "GroupNormalization", "RMSNormalization",
                  "LpNormalization", "ReduceL2", "ReduceSumSquare"}


def fp16_with_range_guard(fp32_model: onnx.ModelProto, calibration: list[np.ndarray],
                          margin: float = 0.5) -> tuple[onnx.ModelProto, dict]:
    """``precision.to_fp16`` with the nodes that come near FP16's range kept in FP32.

    Runs ``fp32_model`` on ``calibration`` with every intermediate tensor exposed as a graph output and
    records each float tensor's largest |value| (initializers included). A node is kept in FP32 when it
    writes a tensor above ``margin * 65504``, reads one (otherwise the converter would cast that tensor to
    FP16 at the node's input: no FP16 tensor may hold it), or squares an input above ``sqrt(margin * 65504)``
    internally (normalizations, L2 norms). The margin leaves room for FP16 rounding drifting above what FP32
    measured and for inputs larger than the calibration set's. Nodes inside If/Loop subgraphs are not measured.

    Returns the FP16 graph and a report: ``limit``, ``kept`` (node, op type, the tensor and magnitude that
    triggered it, why, and whether the op-type rules had kept it in FP32 anyway), ``largest`` (the biggest
    magnitude measured anywhere), ``largest_finite`` and ``non_finite_tensors`` (how many hold inf or NaN).
    """
    if not 0 < margin <= 1:
        raise ValueError(f"margin={margin}: expected 0 < margin <= 1 (a fraction of FP16's largest value)")
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    limit = margin * FP16_MAX
    magnitude = _max_magnitudes(fp32_model, calibration)
    by_op_type = set(DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FP32)
    marked = set(keep_float_nodes(fp32_model))
    kept: dict[str, dict] = {}

    def keep(node: onnx.NodeProto, tensor: str, value: float, why: str) -> None:
        if node.name in kept and kept[node.name]["max_abs"] >= value:
            return
        kept[node.name] = {"node": node.name, "op_type": node.op_type, "tensor": tensor, "max_abs": value,
                           "why": why, "already_fp32": node.op_type in by_op_type or node.name in marked}

    for node in fp32_model.graph.node:
        for why, tensors in (("writes", node.output), ("reads", node.input)):
            for t in tensors:
                if magnitude.get(t, 0.0) > limit:
                    keep(node, t, magnitude[t], why)
        if node.op_type in _SQUARES_INPUT and node.input and magnitude.get(node.input[0], 0.0) ** 2 > limit:
            keep(node, node.input[0], magnitude[node.input[0]] ** 2, "squares")
    unnamed = [row for name, row in kept.items() if not name]
    if unnamed:
        raise RuntimeError(f"{len(unnamed)} unnamed {unnamed[0]['op_type']} node(s) come near FP16's range; the "
                           f"converter blocks nodes by name: name every node before converting")
    model = to_fp16(fp32_model, extra_block=sorted(kept))
    report = {"margin": margin, "limit": limit, "kept": sorted(kept.values(), key=lambda r: -r["max_abs"]),
              "largest": max(magnitude.values(), default=0.0),
              # inf is usually on purpose (the -inf masks of lowered attention); what is finite shows the headroom.
              "largest_finite": max((v for v in magnitude.values() if np.isfinite(v)), default=0.0),
              "non_finite_tensors": sum(1 for v in magnitude.values() if not np.isfinite(v))}
    if report["kept"]:
        log.info("FP16 range guard keeps %d node(s) in FP32 (largest |value| %.3g)", len(kept), report["largest"])
    return model, report


def _max_magnitudes(model: onnx.ModelProto, batches: list[np.ndarray]) -> dict[str, float]:
    """Largest |value| of every float tensor of the main graph over ``batches`` (inf where it is not finite)."""
    out: dict[str, float] = {}

    def record(name: str, value: np.ndarray) -> None:
        if np.issubdtype(value.dtype, np.floating) and value.size:
            with np.errstate(invalid="ignore"):
                m = float(np.max(np.abs(value)))
            out[name] = max(out.get(name, 0.0), np.inf if np.isnan(m) else m)

    for init in model.graph.initializer:
        record(init.name, numpy_helper.to_array(init))
    tensors = {o for n in model.graph.node for o in n.output if o}
    for values in _run_exposing(model, batches, tensors):
        for name, value in values.items():
            record(name, value)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Shared: run a graph with chosen intermediate tensors as outputs
# ---------------------------------------------------------------------------------------------------------------

def _run_exposing(model: onnx.ModelProto, batches: Iterable[np.ndarray],
                  tensors: set[str]) -> Iterator[dict[str, np.ndarray]]:
    """Per batch: the graph's inputs and every tensor named in ``tensors``. ONNX Runtime returns any tensor
    listed as a graph output, typed or not, so the graph is copied with those names appended as outputs."""
    import onnxruntime as ort

    exposed = copy.deepcopy(runnable_on_onnxruntime(model))  # TensorRT plugin nodes as their decomposition
    initializers = {i.name for i in exposed.graph.initializer}
    feeds = [i.name for i in exposed.graph.input if i.name not in initializers]
    if len(feeds) != 1:
        raise ValueError(f"expected a graph with one input (images); got {feeds}")
    present = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=t) for t in sorted(tensors - present - set(feeds)))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for batch in batches:
        values = dict(zip(names, session.run(None, {feeds[0]: batch})))
        values[feeds[0]] = batch
        yield values
