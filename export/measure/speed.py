"""Speed beside accuracy for ``python -m export check --data``.

Latency distributions at batch 1 and at batch N, peak resident memory, the model's FLOPs counted from its
ONNX graph, and the machine's peak FLOP/s to set the achieved rate against. Every number says how it was
obtained, because each of them is an estimate of a different kind:

- FLOPs: multiply-accumulates of Conv, ConvTranspose, MatMul and Gemm at the check's input size, with shapes
  from ``onnx.shape_inference`` (and one ONNX Runtime run for the tensors it cannot size); 1 MAC = 2 FLOPs. Normalization, activations, resizes, softmax and other
  elementwise work is left out (it is memory-bound and small next to the convolutions).
- Theoretical peak: physical cores x clock x fp32 FLOPs per cycle per core, from /proc/cpuinfo; the number
  of FMA units per core is not visible there and is assumed (stated in the result).
- Measured peak: a large fp32 matrix product (torch.mm) with the check's thread count, best of a few runs.
- Memory: growth of the process's peak resident set (VmHWM) over its resident set before the block.
"""
from __future__ import annotations

import ctypes
import os
import re
import resource
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from engines.cpu import cpu_flags, cpuinfo

from ..compile.plugins import runnable_on_onnxruntime

# Ops whose multiply-accumulates are counted; everything else is treated as free.
COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


# Latency ------------------------------------------------------------------------------------------------
def timed_calls(fn: Callable, inputs: Sequence, warmup: int, iterations: int) -> list[float]:
    """Milliseconds of each of ``iterations`` calls of ``fn`` (after ``warmup`` untimed calls)."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    times = []
    for i in range(iterations):
        t = time.perf_counter()
        fn(inputs[i % len(inputs)])
        times.append((time.perf_counter() - t) * 1000)
    return times


def latency_summary(ms: list[float], frames_per_call: int) -> dict:
    """Percentiles of per-call latency and frames per second (frames per call / mean call time)."""
    a = np.asarray(ms, np.float64)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "frames_per_call": frames_per_call,
            "throughput_fps": float(frames_per_call * 1000 / a.mean()), "latencies_ms": [float(v) for v in a]}


# Memory -------------------------------------------------------------------------------------------------
def _status_kib(key: str) -> int | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_free_heap() -> None:
    # Memory freed by earlier measurements stays in glibc's heap and would be reused silently by the next
    # one, hiding its growth; malloc_trim hands it back to the OS first. Not glibc: nothing to do.
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak resident-set growth of this process from ``start()`` to ``stop()``, in MiB.

    Linux: VmHWM (peak RSS) from /proc/self/status, reset at the start by writing 5 to /proc/self/clear_refs
    (Linux >= 4.0), minus VmRSS at the start. Where the reset is refused: ru_maxrss from getrusage, which only
    moves when the process exceeds its earlier peak, so the growth is a lower bound; ``method`` says which.
    """

    PROC = "VmHWM - VmRSS at start, /proc/self/status (peak reset via /proc/self/clear_refs)"
    RUSAGE = "ru_maxrss growth, getrusage (a lower bound: counts only growth past the process's earlier peak)"

    def __init__(self) -> None:
        self.method = self.RUSAGE
        self._base = 0

    def start(self) -> "PeakMemory":
        _release_free_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            rss = _status_kib("VmRSS")
            if rss is not None:
                self.method, self._base = self.PROC, rss
                return self
        except OSError:
            pass
        self.method, self._base = self.RUSAGE, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def stop(self) -> float:
        peak = _status_kib("VmHWM") if self.method == self.PROC else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, (peak or 0) - self._base) / 1024


# FLOPs --------------------------------------------------------------------------------------------------
def _fix_input_shapes(model: onnx.ModelProto, size: tuple[int, int]) -> onnx.ModelProto:
    """A copy with every symbolic image-input dimension set (batch 1 and the check's (H, W)) and no recorded
    intermediate shapes: the exporter's symbolic ones ('4*s39') would be kept by shape inference."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    initializers = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = inp.type.tensor_type.shape.dim
        nhwc = len(dims) == 4 and dims[3].HasField("dim_value") and dims[3].dim_value == 3
        values = {0: 1, 1: size[0], 2: size[1]} if nhwc else {0: 1, 2: size[0], 3: size[1]}
        for i, d in enumerate(dims):
            if not d.HasField("dim_value") and i in values:
                d.dim_value = values[i]
    return model


def count_macs(model: onnx.ModelProto, size: tuple[int, int]) -> dict:
    """Multiply-accumulates per frame of the Conv, ConvTranspose, MatMul and Gemm nodes of ``model`` at input
    size ``size`` (H, W), batch 1.

    Shapes come from ``onnx.shape_inference``. Its data propagation stops at the shape arithmetic the exporter
    emits for dynamic H and W (Div, Reshape of scalars), so the tensors it leaves unsized are sized by one ONNX
    Runtime run of the graph at ``size``; ``shapes_from`` says how many nodes took which. Nodes sized by
    neither are listed in ``uncounted_nodes``, not guessed.
    """
    fixed = _fix_input_shapes(model, size)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:  # onnx raises InferenceError and others from C++; fall back to the run below
        inferred = fixed
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape") \
                and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)

    counted = [n for n in inferred.graph.node if n.op_type in COUNTED_OPS and n.domain in ("", "ai.onnx")]
    inferred_nodes = {id(n) for n in counted if all(t in shapes for t in _operands(n))}
    missing = sorted({t for n in counted for t in _operands(n) if t not in shapes})
    run_error = None
    if missing:
        try:
            shapes.update(_run_shapes(fixed, missing))
        except Exception as exc:  # a graph ONNX Runtime cannot run (custom ops): count what inference sized
            run_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    by_op = {op: 0 for op in COUNTED_OPS}
    nodes = {op: 0 for op in COUNTED_OPS}
    uncounted: list[str] = []
    for node in counted:
        macs = _node_macs(node, shapes.get)
        if macs is None:
            uncounted.append(f"{node.op_type} {node.name}".strip())
            continue
        by_op[node.op_type] += macs
        nodes[node.op_type] += 1
    total = sum(by_op.values())
    from_run = sum(nodes.values()) - len(inferred_nodes)
    return {"macs": total, "flops": 2 * total, "gflops": 2 * total / 1e9, "macs_by_op": by_op, "nodes_by_op": nodes,
            "uncounted_nodes": uncounted, "size": list(size),
            "shapes_from": {"onnx.shape_inference": len(inferred_nodes), "onnxruntime run": from_run},
            **({"run_error": run_error} if run_error else {})}


def _operands(node: onnx.NodeProto) -> list[str]:
    """The tensors whose shapes give a counted node's MACs (see _node_macs)."""
    if node.op_type == "ConvTranspose":
        return [node.input[0], node.input[1]]
    if node.op_type == "Conv":
        return [node.input[1], node.output[0]]
    return [node.input[0], node.output[0]]  # MatMul, Gemm


def _run_shapes(model: onnx.ModelProto, names: list[str]) -> dict[str, list[int]]:
    """Shapes of the tensors ``names`` from one ONNX Runtime run of ``model`` (inputs fixed) on zeros."""
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(runnable_on_onnxruntime(model).SerializeToString())  # plugins decomposed
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node as exported
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    feeds = {i.name: np.zeros(i.shape, dtypes.get(i.type, np.float32)) for i in session.get_inputs()}
    return {n: list(v.shape) for n, v in zip(names, session.run(names, feeds))}


def _node_macs(node: onnx.NodeProto, known: Callable[[str], list[int] | None]) -> int | None:
    """A node's multiply-accumulates from its operands' shapes; None where a shape is unknown."""
    op = node.op_type
    if op == "Conv":
        w, y = known(node.input[1]), known(node.output[0])
        # Each output element sums (Cin / group) x kh x kw products: the weight's trailing dims.
        return None if w is None or y is None else int(np.prod(y, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "ConvTranspose":
        x, w = known(node.input[0]), known(node.input[1])
        # Each input element is scattered through (Cout / group) x kh x kw products.
        return None if x is None or w is None else int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "MatMul":
        a, y = known(node.input[0]), known(node.output[0])
        return None if a is None or y is None else int(np.prod(y, dtype=np.int64) * a[-1])
    if op == "Gemm":
        a, y = known(node.input[0]), known(node.output[0])
        if a is None or y is None:
            return None
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return int(np.prod(y, dtype=np.int64) * (a[0] if trans_a else a[-1]))
    return None


# Peak FLOP/s --------------------------------------------------------------------------------------------
ASSUMED_FMA_UNITS = 2


def theoretical_peak() -> dict:
    """fp32 peak FLOP/s = physical cores x clock x FLOPs per cycle per core, and where each factor comes from."""
    info, cores = cpuinfo()
    flags = cpu_flags(info)
    cores_source = "distinct (physical id, core id) pairs in /proc/cpuinfo (hyper-threads share FMA units)"
    if cores is None:
        cores, cores_source = os.cpu_count() or 1, "os.cpu_count() (logical CPUs; /proc/cpuinfo has no core ids)"
    units = ASSUMED_FMA_UNITS
    if "avx512f" in flags:
        isa, lanes, fma = "AVX-512 (avx512f)", 16, True
    elif "avx2" in flags and "fma" in flags:
        isa, lanes, fma = "AVX2 + FMA3", 8, True
    elif "avx" in flags:
        isa, lanes, fma = "AVX (no FMA: one multiply and one add port)", 8, False
    elif "asimd" in flags:  # aarch64 NEON: Cortex-A78AE (Jetson Orin) and A57 (Nano) have two 128-bit pipes
        isa, lanes, fma = "NEON (asimd)", 4, True
    elif "sse2" in flags:
        isa, lanes, fma = "SSE2 (no FMA: one multiply and one add port)", 4, False
    else:
        return {"gflops": None, "reason": "no SIMD flags recognised in /proc/cpuinfo"}
    # With FMA, one instruction per unit per cycle is lanes x 2 FLOPs; without, the multiply and add ports
    # each retire one lanes-wide instruction per cycle.
    per_cycle = lanes * 2 * units if fma else lanes * 2
    clock_ghz, clock_source = None, None
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.exists():
        try:
            clock_ghz = int(max_freq.read_text()) / 1e6
            clock_source = f"{max_freq} (maximum clock; sustained AVX clocks are lower, so this peak is optimistic)"
        except (OSError, ValueError):
            pass
    if clock_ghz is None and "cpu MHz" in info:
        clock_ghz = float(info["cpu MHz"]) / 1000
        clock_source = "'cpu MHz' in /proc/cpuinfo (the clock the kernel reports, not the maximum turbo clock)"
    if clock_ghz is None:
        return {"gflops": None, "reason": "no clock in /proc/cpuinfo or cpufreq"}
    return {
        "gflops": cores * clock_ghz * per_cycle,
        "formula": "physical cores x clock (GHz) x fp32 FLOPs per cycle per core",
        "cores": cores, "cores_source": cores_source, "clock_ghz": clock_ghz, "clock_source": clock_source,
        "flops_per_cycle_per_core": per_cycle, "isa": isa,
        "flops_per_cycle_source": (f"{lanes} fp32 lanes x 2 FLOPs per FMA x {units} FMA units per core (assumed: "
                                   "/proc/cpuinfo does not show the unit count; some CPUs have 1)") if fma else
                                  f"{lanes} fp32 lanes x (1 multiply + 1 add port)",
    }


def measured_peak(threads: int, n: int = 2048, repeats: int = 3) -> dict:
    """fp32 FLOP/s of a large matrix product with ``threads`` threads: what this machine's BLAS reaches."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up: thread pool, page faults
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(previous)
    return {"gflops": 2 * n**3 / best / 1e9, "threads": threads,
            "method": f"torch.mm of two {n}x{n} fp32 matrices, best of {repeats}, {threads} thread(s); 2 x {n}^3 FLOPs"}
