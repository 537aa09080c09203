"""Run a graph with ONNX Runtime on an emulated CPU: the INT8 kernels of a CPU this machine is not.

ONNX Runtime picks its INT8 kernels from CPUID at run time (engines/cpu.py), so the only way to run the
AVX2 kernels on an AVX-512 VNNI machine is to answer CPUID as an AVX2 CPU would: QEMU's user-mode
emulator (Debian's ``qemu-user``) runs this same Python under a chosen CPU model. QEMU 7.2 emulates AVX2 but
not AVX-512, so ``Haswell-v4`` is an AVX2-only CPU without VNNI, the kind whose u8 x s8 kernels saturate.
Emulation is slow (about 0.04 GFLOP/s here): for accuracy, never for speed.

    python -m engines.emulated_cpu GRAPH.onnx INPUTS.npz OUTPUTS.npz   # what the emulated process runs
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .base import EngineError

AVX2_WITHOUT_VNNI = "Haswell-v4"
QEMU = "qemu-x86_64"


def host_reason() -> str | None:
    """Why this host cannot emulate an x86 CPU at all (None: it can, once qemu-user is installed)."""
    if os.uname().machine != "x86_64":
        return f"emulating an x86 CPU needs an x86_64 host, this is {os.uname().machine}"
    return None


def unavailable_reason() -> str | None:
    if host_reason():
        return host_reason()
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt-get install qemu-user)"
    return None


def run_emulated(graph: bytes, feeds: list[dict[str, np.ndarray]], cpu: str = AVX2_WITHOUT_VNNI,
                 threads: int = 2, timeout: float = 1200) -> list[dict[str, np.ndarray]]:
    """Each feed's outputs, computed by ONNX Runtime's CPU provider in a process that sees ``cpu``."""
    reason = unavailable_reason()
    if reason:
        raise EngineError(f"cannot emulate CPU {cpu}: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        model, inputs, outputs = (Path(tmp) / n for n in ("graph.onnx", "inputs.npz", "outputs.npz"))
        model.write_bytes(graph)
        _save(inputs, feeds)
        command = [QEMU, "-cpu", cpu, sys.executable, "-m", "engines.emulated_cpu", str(model), str(inputs),
                   str(outputs), str(threads)]
        done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            last = [line for line in done.stderr.splitlines() if "warning: TCG" not in line][-1:]
            raise EngineError(f"ONNX Runtime under {QEMU} -cpu {cpu} failed: {' '.join(last) or done.returncode}")
        return _load(outputs)


def _save(path: Path | str, items: list[dict[str, np.ndarray]]) -> None:
    """A list of name -> array dicts as one .npz, keyed "<index>/<name>" (the process boundary's format)."""
    np.savez(path, **{f"{i}/{name}": value for i, item in enumerate(items) for name, value in item.items()})


def _load(path: Path | str) -> list[dict[str, np.ndarray]]:
    items: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            index, _, name = key.partition("/")
            items.setdefault(int(index), {})[name] = data[key]
    return [items[i] for i in sorted(items)]


def _main(model: str, inputs: str, outputs: str, threads: str = "2") -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    _save(outputs, [dict(zip(names, session.run(names, feed))) for feed in _load(inputs)])


if __name__ == "__main__":
    _main(*sys.argv[1:])
