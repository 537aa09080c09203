"""A built engine as the runtime sees it: frames in, class maps out, everything else from its manifest.

The manifest says the input size, the normalization, the class names and palette, and whether
normalization and argmax live inside the engine (``embed_pre_post``); when they do, the host only resizes
and copies uint8 pixels, otherwise it normalizes before and takes the argmax after.

Frames are resized to the engine's input size, except with a tiling (``--tile``): then a frame keeps its
own resolution and is covered by tiles the engine takes, their logits averaged (engines/tiling.py), and the
class map comes out at the frame's size.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engines import artifacts as layout
from engines import triton
from engines.base import EngineError, Runner
from engines.manifest import embeds_pre_post, read_manifest
from engines.onnxruntime import OnnxRuntimeRunner
from engines.openvino import OpenVINORunner
from engines.openvino import unavailable_reason as openvino_reason  # plain Python: imports no OpenVINO
from engines.tiling import TiledRunner, Tiling, check_tiling

from .types import Legend, RuntimeFault

# On a CPU the quantized graph is fastest (measured: BiSeNetV2 int8 19.7 ms vs fp32 32.3 ms) and fp16 is
# emulated; on a GPU, INT8 then FP16 use the tensor cores. OpenVINO builds no fp16 (export/compile/backends.py).
# Only engines whose build-time parity passed count.
PREFERENCE = {"tensorrt": ["int8", "fp16", "fp32"], "onnxruntime": ["int8", "fp32", "fp16"],
              "openvino": ["int8", "fp32"]}
NAMES = {"tensorrt": "TensorRT", "onnxruntime": "ONNX Runtime (CPU)", "openvino": "OpenVINO (CPU)"}


def tensorrt_reason() -> str | None:
    from engines.tensorrt import unavailable_reason

    return unavailable_reason()


def resolve_engine(spec: str, build_dir: Path, backend: str | None = None) -> tuple[Path, str]:
    """``spec`` is an engine file, ``MODEL`` / ``MODEL:PRECISION`` to pick among the engines built in
    ``build_dir`` (TensorRT when it can run here, else ONNX Runtime; OpenVINO when ``backend`` asks for it, or
    when it is all that is built), or ``triton://HOST:PORT/MODEL`` (a model on a Triton Inference Server,
    returned as is). Returns the engine and why it was chosen."""
    if spec.startswith(triton.SCHEME):
        try:
            address, model = triton.parse_url(spec)
        except EngineError as exc:
            raise RuntimeFault(str(exc)) from None
        return spec, f"{model} on the Triton Inference Server at {address} (gRPC)"
    path = Path(spec)
    if path.suffix in (".plan", ".onnx") or path.exists():
        if not path.is_file():
            raise RuntimeFault(f"engine {spec} does not exist; build it with python -m export build")
        return path, f"engine file {path}"
    model, _, precision = spec.partition(":")
    folder = build_dir / model
    if not folder.is_dir():
        built = sorted(p.name for p in build_dir.iterdir() if p.is_dir()) if build_dir.is_dir() else []
        raise RuntimeFault(f"no engines for {model!r} in {build_dir} (built: {', '.join(built) or 'none'}); "
                           f"run python -m export build --models {model}")
    reason = tensorrt_reason()
    if backend:
        backends = [backend]
    else:
        backends = (["tensorrt", "onnxruntime"] if reason is None else ["onnxruntime"])
        # Last, and only where some are built: asking OpenVINO whether it runs here imports it.
        backends += ["openvino"] if (folder / "openvino").is_dir() and openvino_reason() is None else []
    if backend == "tensorrt" and reason:
        raise RuntimeFault(f"--backend tensorrt: TensorRT cannot run here: {reason}")
    if backend == "openvino" and openvino_reason():
        raise RuntimeFault(f"--backend openvino: OpenVINO cannot run here: {openvino_reason()}")
    for b in backends:
        for p in ([precision] if precision else PREFERENCE[b]):
            candidate = layout.engine(build_dir, model, b, p)
            if candidate.exists() and _passed(candidate):
                why = NAMES[b] + (f": {reason}" if b == "onnxruntime" and reason else "")
                return candidate, f"{model} {p} on {why}"
    want = f"{model}:{precision}" if precision else model
    raise RuntimeFault(f"no usable engine for {want} in {folder} for backend {' or '.join(backends)}; "
                       f"run python -m export build --models {model}")


def _passed(path: Path) -> bool:
    try:
        return bool(read_manifest(path).get("parity", {}).get("passed", False))
    except EngineError:
        return False


class SegmentationEngine:
    """Loads an engine through its manifest and turns BGR frames into (h, w) uint8 class maps."""

    def __init__(self, path: Path | str, threads: int | None = None, tiling: Tiling | None = None,
                 reconnect_timeout: float = 30.0) -> None:
        """``path``: an engine file, or ``triton://HOST:PORT/MODEL`` (the manifest then comes from the server,
        inference runs there; ``reconnect_timeout`` bounds how long a lost server is retried). ``threads``: ONNX
        Runtime's intra-op threads or OpenVINO's inference threads (default: the manifest's settings). On a small CPU, leaving a core
        to capture and drawing keeps the pipeline at the engine's pace. ``tiling``: run each frame at its own
        size in sliding windows instead of resized to the engine's."""
        remote = isinstance(path, str) and path.startswith(triton.SCHEME)
        try:
            if remote:
                address, model = triton.parse_url(path)
                self.manifest = triton.remote_manifest(address, model)
            else:
                self.manifest = read_manifest(path)
            if self.manifest.get("kind") != "engine":
                raise RuntimeFault(f"{path} is a TensorRT-bound graph, not an engine; compile it on the GPU machine "
                                   "with python -m export build --backends tensorrt")
            if tiling is not None:
                check_tiling(self.manifest, tiling, path)  # before loading: a refusal costs nothing
            if remote:
                self.runner: Runner = triton.TritonRunner(address, model, self.manifest["output"]["name"],
                                                          reconnect_timeout=reconnect_timeout)
            elif self.manifest["backend"] == "tensorrt":
                self.runner = _tensorrt_runner(path)
            elif self.manifest["backend"] == "openvino":
                self.runner = OpenVINORunner.from_engine(path, threads)
            else:
                self.runner = OnnxRuntimeRunner.from_engine(path, threads)
        except EngineError as exc:
            raise RuntimeFault(str(exc)) from None
        m = self.manifest
        self.path = path
        self.size = tuple(m["input"]["size"])  # (H, W) the engine runs at
        self.pre_post = embeds_pre_post(m)
        self.input_name, self.output_name = m["input"]["name"], m["output"]["name"]
        self.tiling = tiling
        if tiling is not None:
            self.runner = TiledRunner(self.runner, tiling, self.input_name, self.output_name)
        self.mean = np.asarray(m["normalization"]["mean"], np.float32)
        self.inv_std = 1 / np.asarray(m["normalization"]["std"], np.float32)
        self.legend = Legend(m["classes"], m["palette"])

    def __enter__(self) -> "SegmentationEngine":
        try:
            self.runner.activate()
        except EngineError as exc:
            raise RuntimeFault(str(exc)) from None
        return self

    def __exit__(self, *exc) -> None:
        self.runner.deactivate()

    def preprocess(self, frame_bgr: np.ndarray) -> dict[str, np.ndarray]:
        h, w = self.size
        if self.tiling is None and frame_bgr.shape[:2] != (h, w):
            frame_bgr = cv2.resize(frame_bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        if self.pre_post:
            return {self.input_name: rgb[None]}  # (1, H, W, 3) uint8: normalization happens in the engine
        x = (rgb.astype(np.float32) - self.mean) * self.inv_std
        return {self.input_name: np.ascontiguousarray(x.transpose(2, 0, 1)[None])}  # (1, 3, H, W)

    def postprocess(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        out = outputs[self.output_name]
        if self.pre_post:
            return out[0]  # (H, W) uint8 from the engine's argmax
        return out[0].argmax(0).astype(np.uint8)  # (C, H, W) logits -> (H, W)

    def segment(self, frame_bgr: np.ndarray) -> np.ndarray:
        """One frame, synchronously: the reference the pipeline is tested against."""
        return self.postprocess(self.runner.infer(self.preprocess(frame_bgr)))


def _tensorrt_runner(path: Path) -> Runner:
    from engines.tensorrt import TensorRTRunner

    return TensorRTRunner.from_engine(path)
