"""Rewrites that remove work without changing what a graph computes, for the ONNX Runtime target only.

ONNX Runtime's own optimizer fuses what it has patterns for (Conv + activation, Gelu, LayerNorm + skip); these
are the costs it keeps that the profile shows (docs/cpu-performance.md; ``benchmarks/ort_profile.py``). They
are registered for ``onnxruntime`` only: the TensorRT-bound graph keeps the exporter's standard ops, for
TensorRT's own fusions and the op-table checks.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import onnx_graphsurgeon as gs

from .rewrites import Builder, nodes_of, register_rewrite

# Resize modes that are linear maps of the input (every output a weighted sum of inputs of the same channel,
# the weights summing to 1); tf_crop_and_resize writes extrapolation_value outside the crop, so it is affine.
_LINEAR_RESIZE = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"}


def _known_shape(t: gs.Tensor) -> list | None:
    shape = getattr(t, "shape", None)
    if not shape or any(d is None or d == "" or (isinstance(d, str) and d.startswith("unk__")) for d in shape):
        return None
    return list(shape)


def _linear_resize(node: gs.Node) -> bool:
    return (node.op == "Resize" and (node.domain or "") == ""
            and node.attrs.get("coordinate_transformation_mode", "half_pixel") in _LINEAR_RESIZE
            and node.attrs.get("keep_aspect_ratio_policy", "stretch") == "stretch")


@register_rewrite("onnxruntime")
def drop_identity_resize(graph: gs.Graph) -> int:
    """A Resize whose output has its input's shape (the same sizes, or the same symbols under dynamic H and W)
    is the identity for every linear mode: SegFormer's decoder "upsamples" its stride-4 stage to stride 4."""
    count = 0
    for node in nodes_of(graph, "Resize"):
        src, out = node.inputs[0], node.outputs[0]
        shape_in, shape_out = _known_shape(src), _known_shape(out)
        if not _linear_resize(node) or shape_in is None or shape_in != shape_out or out in graph.outputs:
            continue
        for consumer in list(out.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is out:
                    consumer.inputs[i] = src
        node.outputs.clear()
        node.inputs.clear()
        count += 1
    return count


def _pointwise(conv: gs.Node) -> np.ndarray | None:
    """The weight (O, I) of a 1x1, stride-1, unpadded, ungrouped Conv with constant weights, else None."""
    w = conv.inputs[1] if len(conv.inputs) > 1 else None
    a = conv.attrs
    if not isinstance(w, gs.Constant) or w.values.ndim != 4 or w.values.shape[2:] != (1, 1):
        return None
    if a.get("group", 1) != 1 or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or any(a.get("pads", [])) \
            or any(s != 1 for s in a.get("strides", [])) or any(d != 1 for d in a.get("dilations", [])):
        return None
    if len(conv.inputs) > 2 and not isinstance(conv.inputs[2], gs.Constant):
        return None
    return w.values[:, :, 0, 0]


@register_rewrite("onnxruntime")
def pointwise_conv_before_upsampling(graph: gs.Graph) -> int:
    """Conv1x1(Concat_c(Resize(x_i), ...)) = sum_i Resize(Conv1x1_i(x_i)): a pointwise convolution over a channel
    concatenation is the sum of its weight's column blocks applied to each part, and it commutes with a linear
    Resize (one acts across channels, the other within each channel), so each block runs at its part's own,
    smaller resolution and the concatenation is never materialized. The bias goes to one part (a linear
    Resize keeps constants). SegFormer's all-MLP decoder: its fuse convolution over four upsampled 256-channel
    maps was a quarter of the fp32 engine's time."""
    count = 0
    for conv in nodes_of(graph, "Conv"):
        weight = _pointwise(conv)
        x = conv.inputs[0]
        if weight is None or len(x.inputs) != 1 or len(x.outputs) != 1 or x in graph.outputs:
            continue
        cat = x.inputs[0]
        if cat.op != "Concat" or (cat.domain or "") != "" or cat.attrs.get("axis") not in (1, -3):
            continue
        parts = list(cat.inputs)
        channels = [(_known_shape(p) or [None, None])[1] for p in parts]
        if any(not isinstance(c, int) for c in channels) or sum(channels) != weight.shape[1]:
            continue
        # A part that is no such Resize's only output keeps its own block of the convolution, after it.
        resized = [p.inputs[0] if len(p.inputs) == 1 and _linear_resize(p.inputs[0]) and len(p.outputs) == 1
                   and "axes" not in p.inputs[0].attrs and p not in graph.outputs else None for p in parts]
        if not any(resized):
            continue
        b = Builder(graph, f"{conv.name}/before_upsampling")
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        biased = next((i for i, r in enumerate(resized) if r is None), 0)  # a part at full resolution, if any
        branches, offset = [], 0
        for i, (part, c, resize) in enumerate(zip(parts, channels, resized)):
            block = np.ascontiguousarray(weight[:, offset:offset + c, None, None])
            offset += c
            inputs = [resize.inputs[0] if resize else part, b.const(block, weight.dtype)]
            if bias is not None and i == biased:
                inputs.append(bias)
            y = b.op("Conv", *inputs, attrs={"kernel_shape": [1, 1]})
            if resize:
                y = b.op("Resize", y, *_resize_targets(b, resize, y), attrs=dict(resize.attrs))
            branches.append(y)
        total = branches[0]
        for y in branches[1:-1]:
            total = b.op("Add", total, y)
        b.replace(conv, "Add", total, branches[-1])
        count += 1
    return count


def _resize_targets(b: Builder, resize: gs.Node, y: gs.Variable) -> list:
    """roi, scales and sizes for ``resize`` (no ``axes``) applied to ``y``, which has other channels than its
    old input: sizes take N and C from ``y`` (scales of N and C are 1, and stay)."""
    roi, scales, sizes = (list(resize.inputs[1:]) + [gs.Variable.empty()] * 3)[:3]
    if not sizes.name:
        return [roi, scales, sizes]
    nc = b.op("Slice", b.op("Shape", y), b.const([0]), b.const([2]))
    return [roi, scales, b.op("Concat", nc, _spatial_sizes(b, sizes), attrs={"axis": 0})]


def _spatial_sizes(b: Builder, sizes: gs.Tensor) -> gs.Tensor:
    """sizes[2:4]. The exporter writes sizes as Concat(Shape(input)[0:2], target H, W): then the target itself,
    so that the old input's shape is no longer read and the old input can go (fold_channel_linear_into_
    pointwise_conv needs that)."""
    cat = _producer(sizes, "Concat")
    if cat is not None:
        lengths = [(_known_shape(t) or [None])[0] for t in cat.inputs]
        taken = 0
        for i, n in enumerate(lengths):
            if not isinstance(n, int) or taken >= 2:
                break
            taken += n
            if taken == 2 and all(isinstance(m, int) for m in lengths[i + 1:]) and sum(lengths[i + 1:]) == 2:
                rest = list(cat.inputs[i + 1:])
                return rest[0] if len(rest) == 1 else b.op("Concat", *rest, attrs={"axis": 0})
    return b.op("Slice", sizes, b.const([2]), b.const([4]))


def _only_consumer(t: gs.Tensor, node: gs.Node, graph: gs.Graph) -> bool:
    return len(t.outputs) == 1 and t.outputs[0] is node and t not in graph.outputs


def _producer(t: gs.Tensor, op: str) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) == 1 and t.inputs[0].op == op and (t.inputs[0].domain or "") == "" else None


@register_rewrite("onnxruntime")
def fold_channel_linear_into_pointwise_conv(graph: gs.Graph) -> int:
    """Conv1x1(NHWC->NCHW(Linear(NCHW->NHWC(x)))) = Conv1x1'(x), with weight Wc W^T and bias bc + Wc b: a Linear
    over the channels of a map, written as transposes around a MatMul, followed by a pointwise convolution, is
    one pointwise convolution on the map itself, and both transposes go. SegFormer's decoder: each stage's
    projection to the decoder width and its block of the fuse convolution (pointwise_conv_before_upsampling)
    become one convolution from the stage's channels, at the stage's resolution."""
    graph.cleanup()  # nodes earlier rewrites disconnected downstream still read the tensors matched here
    count = 0
    for conv in nodes_of(graph, "Conv"):
        weight = _pointwise(conv)
        if weight is None:
            continue
        back = _producer(conv.inputs[0], "Transpose")
        if back is None or back.attrs.get("perm") != [0, 3, 1, 2] or not _only_consumer(conv.inputs[0], conv, graph):
            continue
        linear, bias = back.inputs[0], None
        add = _producer(linear, "Add")
        if add is not None:
            if not _only_consumer(linear, back, graph):
                continue
            consts = [t for t in add.inputs if isinstance(t, gs.Constant)]
            if len(consts) != 1 or consts[0].values.ndim != 1:
                continue
            bias = consts[0].values
            linear = next(t for t in add.inputs if t is not consts[0])
        matmul = _producer(linear, "MatMul")
        if matmul is None or not _only_consumer(linear, add or back, graph) \
                or not isinstance(matmul.inputs[1], gs.Constant) or matmul.inputs[1].values.ndim != 2:
            continue
        w1 = matmul.inputs[1].values  # (C, E)
        forth = _producer(matmul.inputs[0], "Transpose")
        if forth is None or forth.attrs.get("perm") != [0, 2, 3, 1] or w1.shape[1] != weight.shape[1]:
            continue
        conv_bias = conv.inputs[2].values if len(conv.inputs) > 2 else np.zeros(weight.shape[0], weight.dtype)
        folded = (weight.astype(np.float64) @ w1.T.astype(np.float64)).astype(weight.dtype)  # (O, C)
        new_bias = conv_bias.astype(np.float64)
        if bias is not None:
            new_bias = new_bias + weight.astype(np.float64) @ bias.astype(np.float64)
        b = Builder(graph, f"{conv.name}/folded")
        conv.inputs = [forth.inputs[0], b.const(folded[:, :, None, None], weight.dtype),
                       b.const(new_bias.astype(weight.dtype), weight.dtype)]
        count += 1
    return count


# Names in the dimension expressions of ONNX Runtime's symbolic shape inference that are functions, not dims.
_SYMPY_FUNCTIONS = {"floor", "ceiling", "Max", "Min", "Mod", "Abs", "Float", "Integer", "Rational"}


def _integer_ratios(graph: gs.Graph) -> dict[str, list[int]]:
    """For each linear Resize by ``sizes`` whose output is provably an integer multiple of its input along
    each spatial axis for every input size the graph accepts, those multiples, by the Resize's output.

    The exporter names each dynamic dimension with its own symbol (a stride-32 map's height is ``s39``, the
    input's ``32*h``), so the ratio is found by ONNX Runtime's symbolic shape inference, which carries the
    input's symbols through every node (``floor(8*h - 1/4) + 1``), solved by sympy with the symbols taken as
    positive integers."""
    import sympy
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    candidates = [n for n in nodes_of(graph, "Resize") if _linear_resize(n) and "axes" not in n.attrs
                  and len(n.inputs) == 4 and n.inputs[3].name and not isinstance(n.inputs[3], gs.Constant)]
    if not candidates:
        return {}
    copy = graph.copy()
    copy.cleanup().toposort()
    model = gs.export_onnx(copy)
    logger = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = logger.level
    logger.setLevel("ERROR")
    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # a graph it cannot follow keeps its sizes: nothing is rewritten
        return {}
    finally:
        logger.setLevel(level)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
              if v.type.tensor_type.HasField("shape")}

    def expression(dim, symbols: dict):
        for name in re.findall(r"[A-Za-z_]\w*", str(dim)):
            if name not in _SYMPY_FUNCTIONS:
                symbols.setdefault(name, sympy.Symbol(name, integer=True, positive=True))
        return sympy.sympify(str(dim), locals=symbols)

    found = {}
    for node in candidates:
        src, out = shapes.get(node.inputs[0].name), shapes.get(node.outputs[0].name)
        if not src or not out or len(src) != 4 or len(out) != 4 or any(d in ("", 0) for d in src + out):
            continue
        symbols: dict = {}
        try:
            ratios = [sympy.simplify(expression(o, symbols) / expression(i, symbols)) for i, o in zip(src, out)]
        except (TypeError, ValueError, SyntaxError, sympy.SympifyError):  # a dimension sympy cannot read
            continue
        if ratios[:2] == [1, 1] and all(r.is_Integer and r >= 1 for r in ratios[2:]):
            found[node.outputs[0].name] = [int(r) for r in ratios[2:]]
    return found


@register_rewrite("onnxruntime")
def resize_by_constant_scales(graph: gs.Graph) -> int:
    """A linear Resize to ``sizes`` that are, for every accepted input size, an integer multiple of its input's
    spatial size (the decoders' x2/x4/x8 upsamplings, computed at run time from the shapes under dynamic H and
    W) is the same Resize by constant ``scales``; ``pytorch_half_pixel`` is then ``half_pixel`` (the two differ
    only where an output length is 1 and its input's is not, which an integer scale never gives). ONNX Runtime
    runs only that form in its blocked NCHWc layout (its NCHWc transformer's Resize rule needs constant
    integer scales and a mode other than pytorch_half_pixel): without it every upsampling reorders its input
    out of and back into the convolutions' layout and runs the plain kernel."""
    ratios_of, count = _integer_ratios(graph), 0
    for node in nodes_of(graph, "Resize"):
        ratios = ratios_of.get(node.outputs[0].name)
        if ratios is None:
            continue
        b = Builder(graph, f"{node.name or node.outputs[0].name}/by_scales")
        node.inputs = [node.inputs[0], node.inputs[1] if node.inputs[1].name else gs.Variable.empty(),
                       b.const([1.0, 1.0, *map(float, ratios)], np.float32)]
        if node.attrs.get("coordinate_transformation_mode") == "pytorch_half_pixel":
            node.attrs["coordinate_transformation_mode"] = "half_pixel"
        count += 1
    return count
