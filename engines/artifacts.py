"""The layout of a build folder, in one place: build writes it, check and evaluate discover what is in it,
the runtime picks engines from it.

    <out>/<model>/export.onnx
    <out>/<model>/<target>/rewritten.onnx
    <out>/<model>/<target>/<precision>.onnx          the precision-annotated graph (for TensorRT: the
                                                     TensorRT-bound graph, compiled on the device)
    <out>/<model>/onnxruntime/<precision>.engine.onnx
    <out>/<model>/tensorrt/<precision>.plan
    <out>/<model>/openvino/<precision>.blob          OpenVINO's compiled model, from the onnxruntime graph
    each artifact beside its <artifact>.manifest.json
"""
from __future__ import annotations

from pathlib import Path

from .manifest import manifest_path

TARGETS = ("onnxruntime", "tensorrt")  # the rewrite targets: the graphs engines are built from
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIX = {"onnxruntime": ".engine.onnx", "tensorrt": ".plan", "openvino": ".blob"}  # per backend


def exported_graph(out: Path, model: str) -> Path:
    return Path(out) / model / "export.onnx"


def rewritten_graph(out: Path, model: str, target: str) -> Path:
    return Path(out) / model / target / "rewritten.onnx"


def precision_graph(out: Path, model: str, target: str, precision: str) -> Path:
    return Path(out) / model / target / f"{precision}.onnx"


def engine(out: Path, model: str, backend: str, precision: str) -> Path:
    """The engine file of ``backend`` (a key of ENGINE_SUFFIX)."""
    return Path(out) / model / backend / f"{precision}{ENGINE_SUFFIX[backend]}"


def refusal(artifact: Path) -> Path:
    """Where the build records that it measured and refused an artifact (an optional backend's unit that failed
    parity or the accuracy budget), so that a rebuild with the same inputs does not measure it again."""
    return Path(artifact).with_name(Path(artifact).name + ".refused.json")


def built(out: Path, model: str) -> list[Path]:
    """Every artifact with a manifest for ``model``: ONNX Runtime engines, TensorRT plans, OpenVINO engines and
    TensorRT-bound graphs, each group in precision order."""
    found = []
    kinds = [*ENGINE_SUFFIX.items(), ("tensorrt", ".onnx")]
    for backend, suffix in kinds:  # the TensorRT-bound graph (precision_graph) is an artifact where TensorRT is not
        for precision in PRECISIONS:
            path = Path(out) / model / backend / f"{precision}{suffix}"
            if path.exists() and manifest_path(path).exists():
                found.append(path)
    return found
