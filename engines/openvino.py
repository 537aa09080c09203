"""OpenVINO: an optional engine for x86 CPUs, built from the ONNX Runtime-target graphs (fusions included).

The engine is OpenVINO's compiled model, exported (``CompiledModel.export_model``) and imported on load
(``Core.import_model``): like a TensorRT plan it belongs to one plugin and one OpenVINO version, which the
manifest records and the runner checks. Measured here (OpenVINO 2026.4.1, AMD EPYC Zen 5, 2 threads) against
compiling the ONNX graph at every load: importing takes 0.07 s instead of 0.31 s (SegFormer-B0 fp32), 0.24 s
instead of 1.71 s (SegFormer-B0 int8), 0.10 s instead of 0.71 s (BiSeNetV2 int8); the blob keeps the dynamic
N, H and W (``[?,3,?,?]``), its outputs are bit-identical to the freshly compiled model's at every size tried,
and it runs as fast.

Inference precision is pinned to f32: on CPUs with AVX-512 BF16 or AMX, OpenVINO would otherwise run fp32
graphs in bf16 and silently cost accuracy. ``openvino`` is imported lazily, inside the functions that need
it, so the CPU path never needs it (the ``openvino`` extra installs it).
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Mapping

import numpy as np

from .base import EngineError, Runner
from .manifest import read_manifest, verify_engine_file

DEVICE = "CPU"
X86 = ("x86_64", "amd64", "i386", "i686", "x86")
INSTALL = "pip install -e '.[openvino]'"


def version() -> str | None:
    """OpenVINO's version without its build tag (2026.4.1), None where it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.__version__.split("-")[0]


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """Why OpenVINO engines cannot be built or run here, in one line; None where they can. Never raises."""
    if platform.machine().lower() not in X86:
        return f"OpenVINO engines are for x86 CPUs; this is {platform.machine() or 'an unknown machine'}"
    try:
        import openvino  # noqa: F401  (importing it is the check)
    except ImportError:
        return f"OpenVINO is not installed ({INSTALL})"
    except Exception as exc:  # the wheel is present but its libraries are not
        return f"OpenVINO could not be imported: {one_line(exc)}"
    try:
        devices = core().available_devices
    except Exception as exc:  # OpenVINO raises RuntimeError with C++ text
        return f"OpenVINO could not start: {one_line(exc)}"
    if DEVICE not in devices:
        return f"OpenVINO's CPU plugin is not available (devices: {', '.join(devices) or 'none'})"
    return None


@functools.lru_cache(maxsize=1)
def core():
    """The process's one ``openvino.Core``. Every Core starts its own CPU plugin, and the plugin swaps the calling
    thread's alternate signal stack in and back out when it starts and ends; where two of them end out of order
    (one Core per call, dropped with the models it compiled) the thread is left with a freed signal stack, and
    the next signal handled on it (Ctrl-C in the main thread) is a segmentation fault. Seen with OpenVINO
    2026.4.1: two engines loaded with a Core each and dropped first-loaded first, then SIGINT handled in the
    main thread, crashed the process (SIGSEGV); with one Core it does not (tests/test_openvino_backend.py)."""
    import openvino as ov

    return ov.Core()


def one_line(exc: BaseException) -> str:
    """OpenVINO's errors are C++ traces ('Exception from src/...' lines first): the last line that says what."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip() and not s.strip().startswith("Exception from")]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def compile_config(threads: int = 0) -> dict:
    """One stream with the latency hint (frames come one call at a time); f32 inference precision (module
    docstring). ``threads`` 0: OpenVINO's default, every core."""
    config = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def build_engine(graph: bytes, threads: int = 0) -> bytes:
    """Compile an ONNX graph with OpenVINO's CPU plugin and return the compiled model's exported bytes."""
    try:
        compiled = core().compile_model(core().read_model(graph, b""), DEVICE, compile_config(threads))
        blob = compiled.export_model()
    except Exception as exc:  # the ONNX frontend and the plugin raise RuntimeError with C++ text
        raise EngineError(f"OpenVINO could not compile the graph: {one_line(exc)}") from None
    return blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob)  # a BytesIO in 2026.4


def check_manifest(manifest: dict, path: Path) -> None:
    """A compiled model is the plugin's own format: another OpenVINO version may not read it, or read it wrong."""
    built, here = manifest.get("backend_version"), version()
    if built != here:
        raise EngineError(f"engine {path} was built with OpenVINO {built}, this is {here}; rebuild with "
                          f"python -m export build --force --backends openvino --models {manifest.get('model', '?')}")


class OpenVINORunner(Runner):
    """Runs an OpenVINO engine (an exported compiled model, as a file or bytes) on the CPU plugin."""

    name = "openvino"

    def __init__(self, engine: Path | bytes, threads: int = 0) -> None:
        super().__init__()
        self.engine, self.threads = engine, threads
        self.compiled = self.request = None

    @classmethod
    def from_engine(cls, engine_path: Path, threads: int | None = None) -> "OpenVINORunner":
        """Load a built engine after checking it against its manifest (file hash, OpenVINO version)."""
        manifest = read_manifest(engine_path)
        if manifest.get("backend") != "openvino":
            raise EngineError(f"{engine_path} is a {manifest.get('backend')} engine, not an OpenVINO one")
        reason = unavailable_reason()
        if reason:
            raise EngineError(f"{engine_path}: {reason}")
        verify_engine_file(engine_path, manifest)
        check_manifest(manifest, engine_path)
        settings = manifest.get("openvino") or {}
        return cls(Path(engine_path), settings.get("threads", 0) if threads is None else threads)

    def activate_impl(self) -> None:
        data = self.engine.read_bytes() if isinstance(self.engine, Path) else self.engine
        try:
            self.compiled = core().import_model(data, DEVICE, compile_config(self.threads))
            self.request = self.compiled.create_infer_request()
        except Exception as exc:  # a damaged blob or another plugin's
            where = self.engine if isinstance(self.engine, Path) else "engine"
            raise EngineError(f"OpenVINO cannot load {where}: {one_line(exc)}; rebuild it with "
                              "python -m export build --force --backends openvino") from None

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # share_outputs=False: the arrays are copies, not views of buffers the next call overwrites.
        results = self.request.infer(dict(feed), share_outputs=False)
        return {out.get_any_name(): results[out] for out in self.compiled.outputs}

    def deactivate_impl(self) -> None:
        self.request = self.compiled = None
