"""Which INT8 kernels ONNX Runtime picks on this CPU, and whether an INT8 graph is exact with them.

ONNX Runtime's CPU kernels multiply uint8 activations by int8 weights (U8S8). How they accumulate depends on
the instruction set its MLAS library finds at run time (ONNX Runtime docs, "Quantize ONNX models", When and
why do I need to try U8U8?):

- x86-64 with AVX2, or AVX-512 without VNNI: VPMADDUBSW multiplies pairs of u8 x s8 and adds each pair into
  a *saturating* int16. Two products of 255 x 127 sum to 64770 > 32767, so sums clip and the output is
  wrong where activations and weights are both large (measured here under QEMU's Haswell model: the
  conformance SegFormer-B0 INT8 graph has relative L2 error 0.164 instead of 0.044).
- x86-64 with VNNI (AVX512-VNNI, AVX-VNNI) or AMX-INT8: VPDPBUSD / TDPBUSD accumulate straight into int32:
  exact.
- everything else ONNX Runtime runs on (SSE4.1-only x86, ARM64): the products are widened to 16 bits before
  any addition and accumulated in int32: exact.

With weights in 7 bits ([-64, 64], ONNX Runtime's ``reduce_range``) a pair is at most 2 x 255 x 64 = 32640,
which fits an int16: such a graph computes the same integers on every kernel (measured: bit-identical
logits on this machine's AMX/VNNI kernels and on emulated AVX2). ``export/compile/precision.py`` builds the CPU
placement that way; an engine whose weights use 8 bits is exact only where the kernels are.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

# Flags that decide which INT8 kernel MLAS runs (Linux /proc/cpuinfo spelling).
INT8_FLAGS = ("sse4_1", "avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
# The largest int8 weight magnitude whose u8 x s8 pairs never saturate an int16: 2 * 255 * 64 = 32640.
SATURATION_FREE_WEIGHT = 64


def int8_kernels(flags: set[str] | frozenset[str], machine: str) -> str:
    """The INT8 GEMM kernel family ONNX Runtime's MLAS uses on a CPU with ``flags``, most capable first."""
    if machine.lower() not in ("x86_64", "amd64"):
        return machine.lower()
    for flag, name in (("amx_int8", "amx"), ("avx512_vnni", "avx512-vnni"), ("avx_vnni", "avx-vnni"),
                       ("avx512bw", "avx512-without-vnni"), ("avx2", "avx2-without-vnni")):
        if flag in flags:
            return name
    return "sse"


def saturates(kernels: str) -> bool:
    """Whether these kernels add u8 x s8 pairs into a saturating int16 (VPMADDUBSW)."""
    return kernels in ("avx512-without-vnni", "avx2-without-vnni")


@lru_cache(maxsize=1)
def cpuinfo() -> tuple[dict[str, str], int | None]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none), and the number of physical
    cores (distinct (physical id, core id) pairs; None where the file has no core ids)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}, None
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    fields = [dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in b.splitlines())) for b in blocks]
    cores = {(f.get("physical id"), f.get("core id")) for f in fields if "core id" in f}
    return (fields[0] if fields else {}), (len(cores) or None)


def cpu_flags(info: dict[str, str]) -> frozenset[str]:
    """The feature flags of a cpuinfo block (x86 ``flags``, Arm ``Features``)."""
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def _cpuinfo() -> tuple[str, frozenset[str]]:
    info, _ = cpuinfo()
    return info.get("model name") or platform.processor() or platform.machine(), cpu_flags(info)


def this_cpu() -> dict:
    """What a manifest records of the CPU an INT8 engine was built and scored on."""
    model, flags = _cpuinfo()
    machine = platform.machine()
    kernels = int8_kernels(flags, machine)
    return {"model": model, "machine": machine, "int8_kernels": kernels, "int8_saturates": saturates(kernels),
            "int8_flags": [f for f in INT8_FLAGS if f in flags]}


def int8_note(manifest: dict, here: dict | None = None) -> str | None:
    """One line when an INT8 engine loaded on this CPU may not compute what its build scored, else None.

    It matters only where this CPU's kernels saturate and the engine's weights use more than 7 bits (or its
    manifest does not say), and the build ran on other kernels: then its accuracy here can be lower than
    the accuracy the build measured."""
    if manifest.get("precision") != "int8":
        return None
    here = here or this_cpu()
    built = (manifest.get("device") or {}).get("cpu") or {}
    weights = (manifest.get("int8") or {}).get("weight_max_abs")
    if not here["int8_saturates"] or (weights is not None and weights <= SATURATION_FREE_WEIGHT):
        return None
    if built.get("int8_kernels") == here["int8_kernels"]:
        return None  # scored on the same kernels: the build's accuracy is this CPU's
    bits = "8-bit weights" if weights is not None else "weights of unrecorded range"
    return (f"warning: {manifest.get('model', '?')} int8 has {bits} and was scored on "
            f"{built.get('int8_kernels', 'an unrecorded CPU')}; this CPU's INT8 kernels "
            f"({here['int8_kernels']}) saturate 16-bit sums, so its accuracy here may be lower than the build "
            f"measured; rebuild it with this version (7-bit weights): python -m export build --force "
            f"--models {manifest.get('model', '?')}")
