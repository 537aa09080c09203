"""ONNX Runtime: the embedded CPU default.

"Compiling" for ONNX Runtime means running its graph optimizer once, offline, and saving the optimized
graph, so devices load a graph that needs no further rewriting. Only the portable optimization levels are
used offline: 'extended' output is still plain ONNX plus ONNX Runtime's contrib ops, while 'all' adds
layout transforms (NCHWc) tied to the CPU that runs them (ONNX Runtime docs, "Graph optimizations":
offline mode should use basic or extended). So 'all' is applied when the engine is loaded, on the device
itself: measured here it takes BiSeNetV2 fp32 from 46.6 to 32.0 ms. The session settings that load an
engine are stored in its manifest.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from .base import EngineError, Runner
from .cpu import int8_note
from .manifest import read_manifest, verify_engine_file

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
VERSION = ort.__version__
log = logging.getLogger(__name__)


def session_options(threads: int = 0, optimization_level: str = "all", simulate_qdq: bool = False) -> ort.SessionOptions:
    """``simulate_qdq``: run Q/DQ pairs as written (quantize, dequantize, then the float op) instead of fusing
    them into integer kernels: the INT8 arithmetic TensorRT does (int32 accumulation), in FP32, the same on
    every CPU. That is how a TensorRT-bound INT8 graph is measured here; ONNX Runtime's own integer kernels
    would add this CPU's rounding and, on AVX2 without VNNI, 16-bit saturation (engines/cpu.py)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[optimization_level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: on a small CPU the engine shares cores with capture,
    # drawing and encoding, and spinning threads starve them (measured on 2 cores: the video runtime went
    # from 0.70 to 0.75 of the engine's raw throughput, the raw throughput itself did not change).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if simulate_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


def build_engine(onnx_model: bytes, optimization_level: str = "extended") -> bytes:
    """Optimize an ONNX graph with ONNX Runtime's CPU provider and return the optimized graph's bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        options = session_options(1, optimization_level)
        options.optimized_model_filepath = out
        try:
            ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own exception types from C++
            raise EngineError(f"ONNX Runtime could not load the graph: {str(exc).splitlines()[0]}") from None
        return Path(out).read_bytes()


def check_manifest(manifest: dict, path: Path) -> None:
    """An engine optimized by another ONNX Runtime version may use kernels or fusions this one lacks."""
    built = manifest.get("backend_version")
    if built != VERSION:
        raise EngineError(f"engine {path} was built with ONNX Runtime {built}, this is {VERSION}; rebuild with "
                          f"python -m export build --force --models {manifest.get('model', '?')}")


class OnnxRuntimeRunner(Runner):
    """Runs an engine file (or raw ONNX bytes) on ONNX Runtime's CPU provider."""

    name = "onnxruntime"

    def __init__(self, model: Path | bytes, threads: int = 0, optimization_level: str = "all",
                 simulate_qdq: bool = False) -> None:
        super().__init__()
        self.model, self.threads, self.optimization_level = model, threads, optimization_level
        self.simulate_qdq = simulate_qdq
        self.session: ort.InferenceSession | None = None

    @classmethod
    def from_engine(cls, engine_path: Path, threads: int | None = None) -> "OnnxRuntimeRunner":
        """Load a built engine after checking it against its manifest (file hash, ONNX Runtime version)."""
        manifest = read_manifest(engine_path)
        if manifest.get("backend") != "onnxruntime":
            raise EngineError(f"{engine_path} is a {manifest.get('backend')} engine, not an ONNX Runtime one")
        verify_engine_file(engine_path, manifest)
        check_manifest(manifest, engine_path)
        note = int8_note(manifest)
        if note:
            log.warning(note)
        settings = manifest.get("session", {})
        return cls(Path(engine_path), settings.get("threads", 0) if threads is None else threads,
                   settings.get("load_optimization_level", "all"))

    def activate_impl(self) -> None:
        model = str(self.model) if isinstance(self.model, Path) else self.model
        try:
            options = session_options(self.threads, self.optimization_level, self.simulate_qdq)
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # corrupt or incompatible file
            raise EngineError(f"ONNX Runtime cannot load {self.model if isinstance(self.model, Path) else 'graph'}: "
                              f"{str(exc).splitlines()[0]}; rebuild it with python -m export build --force") from None

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, dict(feed))))

    def deactivate_impl(self) -> None:
        self.session = None
