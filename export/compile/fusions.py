"""Rewrites that remove work without changing what a graph computes, for the ONNX Runtime target only.

ONNX Runtime's own optimizer fuses what it has patterns for (Conv + activation, Gelu, LayerNorm + skip); these
are the costs it keeps that the profile shows (docs/cpu-performance.md; ``benchmarks/ort_profile.py``). They
are registered for ``onnxruntime`` only: the TensorRT-bound graph keeps the exporter's standard ops, for
TensorRT's own fusions and the op-table checks.
"""
from __future__ import annotations

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
    hw = b.op("Slice", sizes, b.const([2]), b.const([4]))
    return [roi, scales, b.op("Concat", nc, hw, attrs={"axis": 0})]
