"""Stage 4: precision, written into the graph so that a strongly typed TensorRT network and ONNX Runtime
compute the same thing.

- fp32: the graph as rewritten.
- fp16: ONNX Runtime's float16 converter casts the graph to FP16 and keeps the overflow-prone ops
  (LayerNormalization, Softmax, reductions, exponentials) in FP32 behind Cast nodes; inputs and outputs
  stay FP32.
- int8: explicit QuantizeLinear/DequantizeLinear pairs from ONNX Runtime's static quantizer, calibrated on
  real images. The placement depends on the target: TensorRT wants symmetric INT8 (zero point 0),
  per-channel weights and Q/DQ only on the inputs of Conv/ConvTranspose/MatMul/Gemm, the layers it fuses;
  the CPU takes uint8 activations and 7-bit weights so that every x86 CPU computes the same integers
  (``CPU_INT8_SCHEMES``; engines/cpu.py has the kernel facts), in one of two placements
  (``CPU_INT8_PLACEMENTS``): ONNX Runtime's own (every op it has an integer kernel for) or only the four fused
  layers; the build picks per model the faster of those that hold the accuracy budget
  (export/compile/int8_placement.py).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from ..config import CPU_INT8_PLACEMENTS
from ..errors import UserError
from .plugins import around_plugins, plugin_nodes
from .rewrites import keep_float_nodes

# Ops whose FP16 evaluation overflows or loses too much: LayerNorm after attention (TensorRT #2781, #3692),
# large-magnitude Softmax inputs (TensorRT #3999), and reductions / powers whose intermediates exceed 65504.
FP16_KEEP_FP32 = [
    "LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
    "Pow", "Exp", "Sqrt", "Reciprocal",
]
TENSORRT_QUANTIZED_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]

# Integer types of the CPU placement (activations, weights, weight bits). An engine built on one x86 machine
# runs on others, and ONNX Runtime's u8 x s8 kernels saturate 16-bit sums on AVX2 and on AVX-512 without
# VNNI (engines/cpu.py). Measured side by side (benchmarks/int8_cpu_schemes.py; README, "INT8 on every
# x86 CPU"): with 8-bit weights (u8s8, s8s8, which ONNX Runtime runs as u8s8 on x86) the conformance
# SegFormer-B0 graph has relative L2 error 0.164 on emulated AVX2 against 0.044 on this VNNI/AMX machine;
# with 7-bit weights both give bit-identical logits, at the same speed (same kernels). u8u8 is exact too,
# but ONNX Runtime has no VNNI kernel for it, so it gives up VNNI/AMX speed for 1 bit of weight precision.
CPU_INT8_SCHEMES = {
    "u8s8-7bit": ("QUInt8", "QInt8", True),  # the default: exact on every kernel
    "u8s8": ("QUInt8", "QInt8", False),  # exact on VNNI/AMX, SSE and ARM64 only
    "u8u8": ("QUInt8", "QUInt8", False),
    "s8s8": ("QInt8", "QInt8", False),
}
DEFAULT_CPU_INT8_SCHEME = "u8s8-7bit"

# Where the CPU target puts Q/DQ, both with the CPU scheme's integer types:
# - all_ops: ONNX Runtime's own placement, every op type its quantizer has a QDQ or QLinear rule for (Add, Mul,
#   Resize, Concat, pooling... as well), so integer tensors flow between layers;
# - conv_matmul: only Conv/ConvTranspose/MatMul/Gemm, the layers TensorRT's placement quantizes. Unlike
#   TensorRT's, their outputs are quantized too: ONNX Runtime's CPU provider fuses DQ -> Conv -> Q into one
#   QLinearConv, while a Conv with Q/DQ on its inputs only runs as a float Conv on dequantized weights
#   (measured: CCNet at 256x256 1.79x slower than with the outputs quantized, 539 against 301 ms).
# all_ops ran 1.06x-1.18x faster on the three default models here (README, "Which ops carry Q/DQ"), but the
# gap depends on how much of a model's time goes to the ops between its layers, and on the CPU's kernels, so
# the build times both (``onnxruntime.int8_placement: auto``).
DEFAULT_CPU_INT8_PLACEMENT = "all_ops"  # CPU_INT8_PLACEMENTS: the names pipeline.yaml takes (export/config.py)


def quantized_op_types(target: str, placement: str = DEFAULT_CPU_INT8_PLACEMENT) -> list[str]:
    """The op types each INT8 placement quantizes: the four fused layers (TensorRT's placement, and the CPU's
    ``conv_matmul``), or every op ONNX Runtime's quantizer has a QDQ or QLinear rule for (its own default
    when ``op_types_to_quantize`` is not given; the CPU's ``all_ops``)."""
    if target != "tensorrt" and placement not in CPU_INT8_PLACEMENTS:
        raise ValueError(f"unknown CPU INT8 placement {placement!r}; known: {', '.join(CPU_INT8_PLACEMENTS)}")
    if target == "tensorrt" or placement == "conv_matmul":
        return list(TENSORRT_QUANTIZED_OPS)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def to_fp16(model: onnx.ModelProto, extra_block: list[str] | None = None) -> onnx.ModelProto:
    """Cast to FP16, keeping FP32 the ops in ``FP16_KEEP_FP32``, the nodes rewrites marked keep-float and the
    nodes named in ``extra_block`` (e.g. those ``accuracy_guard.fp16_with_range_guard`` measured near FP16's
    range)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    logging.getLogger("onnxruntime.transformers.float16").setLevel(logging.ERROR)
    out = convert_float_to_float16(model, keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FP32,
                                   node_block_list=keep_float_nodes(model) + list(extra_block or []))
    _drop_repeated_casts(out)
    _drop_fp16_round_trips(out, inserted_after=model)
    return out


def _drop_fp16_round_trips(model: onnx.ModelProto, inserted_after: onnx.ModelProto) -> None:
    """Let nodes kept in FP32 read each other's outputs in FP32.

    The float16 converter wraps each blocked node on its own: Cast to FP32 before it, Cast back to FP16 after
    it, so a tensor between two blocked nodes still passes through FP16 (FP32 -> FP16 -> FP32) and a value
    above 65504 becomes inf there. Each such round trip made of the converter's own Casts is cut: the
    Cast-to-FP32 is fed the FP32 tensor directly (a no-op Cast, which ONNX Runtime and TensorRT drop), and a
    Cast-to-FP16 left without readers is removed."""
    original = {n.name for n in inserted_after.graph.node}
    casts = {n.output[0]: n for n in model.graph.node if n.op_type == "Cast" and n.name not in original}

    def casts_to(node: onnx.NodeProto, dtype: int) -> bool:
        return any(a.name == "to" and a.i == dtype for a in node.attribute)

    for node in casts.values():
        first = casts.get(node.input[0])
        if casts_to(node, onnx.TensorProto.FLOAT) and first is not None and casts_to(first, onnx.TensorProto.FLOAT16):
            node.input[0] = first.input[0]
    read = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
    dead = [n for n in casts.values() if n.output[0] not in read]
    for node in dead:
        model.graph.node.remove(node)


def _drop_repeated_casts(model: onnx.ModelProto) -> None:
    """The converter inserts one Cast per consumer of an initializer it keeps in FP32, all with the same
    name and output; an initializer shared by several kept-FP32 nodes (the exporter merges identical
    constants, e.g. LayerNorm's initial ones) thus gets identical duplicate Casts, which ONNX Runtime
    rejects. Keep the first of each."""
    seen: set[tuple] = set()
    keep = []
    for node in model.graph.node:
        signature = (node.op_type, node.name, tuple(node.input), tuple(node.output))
        if node.op_type == "Cast" and signature in seen:
            continue
        seen.add(signature)
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self.batches = iter(batches)

    def get_next(self):
        x = next(self.batches, None)
        return None if x is None else {"images": x}

    def rewind(self):  # part of the protocol; one pass is all the calibrators here need
        pass


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def unshare_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every float initializer that several nodes read given one copy per extra reader.

    ONNX Runtime's quantizer refuses a weight that two quantized nodes share ("shared mode is not supported
    for weight"), and both the exporter and ONNX Runtime's constant sharing (run by ``quant_pre_process``)
    merge identical constants: GroupNorm's thirteen identical InstanceNormalization scales in DPT-Hybrid
    become one. Copies are small; each reader then gets its own quantization parameters."""
    init = {i.name: i for i in model.graph.initializer if i.data_type in FLOAT_TYPES}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name not in init:
                continue
            readers[name] = readers.get(name, 0) + 1
            if readers[name] > 1:
                copy_ = onnx.TensorProto()
                copy_.CopyFrom(init[name])
                copy_.name = f"{name}__reader{readers[name]}"
                model.graph.initializer.append(copy_)
                node.input[k] = copy_.name
    return model


def to_int8(model: onnx.ModelProto, calibration: list[np.ndarray], target: str, method: str = "minmax",
            scheme: str = DEFAULT_CPU_INT8_SCHEME, placement: str = DEFAULT_CPU_INT8_PLACEMENT) -> onnx.ModelProto:
    """Insert Q/DQ calibrated on ``calibration`` (preprocessed (1,3,H,W) batches). ``target`` picks the
    placement: 'tensorrt' or 'onnxruntime'; for the CPU, ``scheme`` its integer types (``CPU_INT8_SCHEMES``)
    and ``placement`` the ops quantized (``CPU_INT8_PLACEMENTS``). The TensorRT placement has one of each."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise UserError("INT8 needs calibration images: set calibration.images in pipeline.yaml to a folder of "
                        "real images (random data is not calibration)")
    if plugin_nodes(model):  # calibration runs the graph: around TensorRT plugin nodes (export/compile/plugins.py)
        return around_plugins(lambda runnable: to_int8(runnable, calibration, target, method, scheme, placement),
                              model)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if target == "tensorrt":
        settings = dict(
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=quantized_op_types(target),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           "DedicatedQDQPair": True, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                           # Q/DQ on the inputs only, the pattern TensorRT fuses; outputs stay float.
                           "OpTypesToExcludeOutputQuantization": TENSORRT_QUANTIZED_OPS},
        )
    else:
        if scheme not in CPU_INT8_SCHEMES:
            raise ValueError(f"unknown CPU INT8 scheme {scheme!r}; known: {', '.join(CPU_INT8_SCHEMES)}")
        activations, weights, reduce_range = CPU_INT8_SCHEMES[scheme]
        settings = dict(activation_type=QuantType[activations], weight_type=QuantType[weights], per_channel=True,
                        reduce_range=reduce_range, op_types_to_quantize=quantized_op_types(target, placement))
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs every node it skips
    with tempfile.TemporaryDirectory() as tmp:
        src, prep, out = (Path(tmp) / n for n in ("in.onnx", "prep.onnx", "int8.onnx"))
        onnx.save(model, str(src))
        # Shape inference and ONNX Runtime's basic fusions (Conv+BN etc.) first, as its docs recommend.
        quant_pre_process(str(src), str(prep), skip_symbolic_shape=True)
        onnx.save(unshare_initializers(onnx.load(str(prep))), str(prep))
        # The calibrator computes ranges for every tensor, including the -inf mask constants of lowered
        # attention that are excluded from quantization; numpy's warnings about those are noise.
        excluded = keep_float_nodes(model)
        if target != "tensorrt":
            excluded += normalized_streams(onnx.load(str(prep)))
        with np.errstate(all="ignore"):
            quantize_static(str(prep), str(out), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            calibrate_method=methods[method], nodes_to_exclude=excluded, **settings)
        return onnx.load(str(out))



def normalized_streams(model: onnx.ModelProto) -> list[str]:
    """The nodes both CPU placements keep float around every LayerNormalization: the normalization itself and
    the nodes that write its input (in a transformer, the residual Add or Concat of the token stream;
    ``conv_matmul`` leaves those float anyway, and the rule matters to it where a Conv or MatMul writes the
    normalization's input, e.g. SegFormer's patch embeddings, since it quantizes their outputs).

    A per-tensor activation scale is set by the tensor's largest token, and a LayerNorm divides each token by
    its own spread, so a token much smaller than the largest (Segmenter's class embeddings next to its patch
    tokens) comes out of quantize -> LayerNorm with its rounding error magnified by the ratio of the two.
    ONNX Runtime's CPU provider has no integer LayerNorm kernel (the normalization runs in float between a
    DequantizeLinear and a QuantizeLinear either way), so only the float residual Add is given up; the
    TensorRT placement never quantizes these tensors at all. Measured at the conformance configuration: the
    Segmenter-T graph's relative error 0.182 -> 0.055 (tests/test_conformance.py)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    kept = []
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            kept.append(node.name)
            if node.input[0] in producer:
                kept.append(producer[node.input[0]].name)
    return [n for n in dict.fromkeys(kept) if n]


def int8_weight_max(model: onnx.ModelProto) -> int | None:
    """The largest magnitude of the signed 8-bit weights of an INT8 graph (constant INT8 tensors a
    DequantizeLinear reads), the bytes an x86 u8 x s8 kernel multiplies as they are; None if it has none.
    At most ``engines.cpu.SATURATION_FREE_WEIGHT`` (64): no x86 INT8 kernel can saturate on this graph."""
    from onnx import numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    largest = None
    for node in model.graph.node:
        weight = init.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is not None and weight.data_type == onnx.TensorProto.INT8:
            q = numpy_helper.to_array(weight)
            if q.size:
                largest = max(largest or 0, int(np.abs(q.astype(np.int32)).max()))
    return largest
