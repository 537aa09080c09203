"""``python -m export build``: the stages, in order, for every model, precision and backend in pipeline.yaml.

Every stage reads and writes a file under the output folder (the layout: engines/artifacts.py), so any
stage can be inspected or re-run:

    <out>/<model>/export.onnx                 1. PyTorch -> ONNX (custom ops kept as seg:: nodes)
    <out>/<model>/<target>/rewritten.onnx     2. graph surgery for the target (onnxruntime | tensorrt)
                                              3. TensorRT-bound graphs checked against TensorRT's op table
    <out>/<model>/<target>/<precision>.onnx   4. precision annotated in the graph (fp32 | fp16 | int8)
    <out>/<model>/onnxruntime/<precision>.engine.onnx, <out>/<model>/tensorrt/<precision>.plan,
    <out>/<model>/openvino/<precision>.blob   5. engines, each with a manifest (6) and build-time parity (7)

Where TensorRT is missing, the TensorRT-bound graph of step 4 is the artifact (copy it to the device and
build there); its accuracy is still measured here, by ONNX Runtime running that same graph. The opt-in
``openvino`` backend compiles the onnxruntime graphs; a unit of it that fails parity or the accuracy budget
is refused (``status`` refused, nothing written) and the build goes on.
"""
from __future__ import annotations

import datetime
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

import engines.onnxruntime as ort_engine
import engines.openvino as ov_engine
from engines import artifacts as layout
from engines.base import EngineError, Runner
from engines.manifest import atomic_write, read_manifest, sha256_bytes, sha256_file, sha256_json, write_engine
from models import get_spec

from . import compat
from ..config import Batch, ModelConfig, Pipeline, class_names, palette
from ..errors import UserError
from ..images import list_images, preprocess, read_rgb
from ..log import log
from ..measure.samples import Samples, parity, parity_problems, sample_inputs
from ..measure.scoring import AccuracyScorer
from .backends import Backend, backend_for, onnxruntime_engine
from .pre_post import embed_pre_post
from .onnx_export import OPSET, export_onnx
from .precisions import PRECISIONS, Converted
from .rewrites import apply_rewrites
from .sources import source_hash
from .weights import load_model


@dataclass
class BuildOptions:
    models: list[str] | None = None
    precisions: list[str] | None = None
    backends: list[str] | None = None  # None: the pipeline's backends, TensorRT skipped with a note if absent
    out_dir: str | None = None
    force: bool = False
    verify: bool = True


def calibration_set(pipeline: Pipeline, cfg: ModelConfig) -> tuple[list[np.ndarray], str]:
    """The calibration images, preprocessed, and a hash of the files and the method."""
    files = list_images(pipeline.resolve(pipeline.calibration.images), "calibration.images",
                        pipeline.calibration.max_images)
    batches = [preprocess(read_rgb(p), tuple(cfg.input.size), cfg.mean, cfg.std) for p in files]
    return batches, sha256_json([[p.name, sha256_file(p)] for p in files] + [pipeline.calibration.method])


def tensorrt_reason() -> str | None:
    from engines.tensorrt import unavailable_reason  # lazy: never imports tensorrt itself unless present

    return unavailable_reason()


def openvino_reason() -> str | None:
    return ov_engine.unavailable_reason()


class ModelBuild:
    """Everything built for one model entry. The stages every artifact shares (export, rewrite per target,
    calibration, parity inputs, the accuracy scorer) run once, when first needed; each artifact is then one
    ``build_unit``: precision handler (export/compile/precisions.py), backend (export/compile/backends.py),
    parity gate, manifest."""

    def __init__(self, pipeline: Pipeline, cfg: ModelConfig, out: Path, options: BuildOptions, code: str) -> None:
        self.pipeline, self.cfg, self.options, self.code = pipeline, cfg, options, code
        self.out = out
        self.spec = get_spec(cfg.name)
        self.model, self.weights_hash = load_model(cfg, pipeline)
        self._exported: onnx.ModelProto | None = None
        self._rewritten: dict[str, onnx.ModelProto] = {}
        self._precision_graphs: dict[tuple[str, str], onnx.ModelProto] = {}
        self._calibration: tuple[list[np.ndarray], str] | None = None
        self._samples: Samples | None = None
        self._scorer: AccuracyScorer | None = None
        self.converted: dict[tuple[str, str], Converted] = {}

    # Shared, lazily computed stages ---------------------------------------------------------------------
    def exported(self) -> onnx.ModelProto:
        if self._exported is None:
            t = time.perf_counter()
            self._exported = export_onnx(self.model, layout.exported_graph(self.out, self.cfg.name),
                                         tuple(self.cfg.input.size), self.spec.size_divisor, self.spec.dynamic_hw)
            log(f"  {self.cfg.name}: exported to ONNX (opset {OPSET}) in {time.perf_counter() - t:.1f}s")
        return self._exported

    def rewritten(self, target: str) -> onnx.ModelProto:
        if target not in self._rewritten:
            graph, counts = apply_rewrites(self.exported(), target)
            atomic_write(layout.rewritten_graph(self.out, self.cfg.name, target), graph.SerializeToString())
            done = ", ".join(f"{k} x{v}" for k, v in counts.items()) or "nothing to lower"
            log(f"  {self.cfg.name}: rewritten for {target} ({done})")
            self._rewritten[target] = graph
        return self._rewritten[target]

    def calibration(self) -> tuple[list[np.ndarray], str]:
        if self._calibration is None:
            self._calibration = calibration_set(self.pipeline, self.cfg)
        return self._calibration

    def accuracy_scorer(self) -> AccuracyScorer:
        if self._scorer is None:
            self._scorer = AccuracyScorer(self.pipeline, self.cfg, self.model)
        return self._scorer

    def samples(self) -> Samples:
        if self._samples is None:
            self._samples = sample_inputs(self.pipeline, self.cfg, self.pipeline.parity.num_inputs, self.model)
        return self._samples

    def parity(self, make_runner) -> dict:
        # The batch the engine is tuned for (TensorRT's opt), at least 2 so that batching itself is checked.
        batch = min(max(2, self.pipeline.batch.opt), self.pipeline.batch.max)
        return parity(make_runner, self.samples(), self.cfg.embed_pre_post, self.cfg.input.size, batch)

    def check_tensorrt(self, graph: onnx.ModelProto, precision: str) -> None:
        """The final TensorRT-bound graph (precision casts, Q/DQ and embedded I/O included) against the op
        tables of every TensorRT version the pipeline targets."""
        for version in self.pipeline.tensorrt.check_versions:
            violations = compat.check_tensorrt_compat(graph, version)
            if violations:
                more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
                raise UserError(f"{self.cfg.name} {precision}: TensorRT-bound graph fails the compatibility check: "
                                f"{violations[0]}{more}")
        log(f"  {self.cfg.name} {precision}: TensorRT-bound graph passes the op tables of TensorRT "
            f"{', '.join(self.pipeline.tensorrt.check_versions)}")

    def with_pre_post(self, graph: onnx.ModelProto) -> onnx.ModelProto:
        return embed_pre_post(graph, self.cfg.mean, self.cfg.std) if self.cfg.embed_pre_post else graph

    def cpu_engine(self, graph: onnx.ModelProto) -> Callable[[], Runner]:
        """A runner factory for the ONNX Runtime engine the onnxruntime backend would build from the stage-4
        ``graph`` (pre/post-processing embedded as ``precision_graph`` embeds it): what a choice measured on
        the engine itself (INT8's CPU placement) times and checks."""
        return onnxruntime_engine(self.with_pre_post(graph).SerializeToString(), self.pipeline.onnxruntime)[1]

    def precision_graph(self, target: str, precision: str) -> onnx.ModelProto:
        """Stage 4: the target's rewritten graph in ``precision`` (its handler's guard included), with
        pre/post-processing embedded if asked, checked against TensorRT when bound for it, and saved. Once per
        build: the backends that take the same target (onnxruntime, openvino) share it."""
        if (target, precision) not in self._precision_graphs:
            self._precision_graphs[(target, precision)] = self._precision_graph(target, precision)
        return self._precision_graphs[(target, precision)]

    def _precision_graph(self, target: str, precision: str) -> onnx.ModelProto:
        converted = PRECISIONS[precision].convert(self, self.rewritten(target), target)
        self.converted[(target, precision)] = converted
        graph = self.with_pre_post(converted.graph)
        if target == "tensorrt":
            self.check_tensorrt(graph, precision)
        atomic_write(layout.precision_graph(self.out, self.cfg.name, target, precision), graph.SerializeToString())
        return graph

    # One unit: (backend, precision) --------------------------------------------------------------------
    def inputs_hash(self, backend: Backend, precision: str, version: str) -> str:
        """The artifact's cache key: everything that shapes it."""
        return sha256_json({
            "model": asdict(self.cfg), "weights": self.weights_hash, "code": self.code, "precision": precision,
            "backend": backend.name, "backend_version": version, "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort_engine.VERSION, "batch": asdict(self.pipeline.batch),
            **PRECISIONS[precision].cache_inputs(self, backend.target), **backend.cache_inputs(self.pipeline),
        })

    def up_to_date(self, artifact: Path, key: str) -> bool:
        if self.options.force or not artifact.exists():
            return False
        try:
            manifest = read_manifest(artifact)
        except EngineError:
            return False
        return manifest.get("hashes", {}).get("inputs") == key and manifest.get("engine", {}).get("sha256") == sha256_file(artifact)

    def build_unit(self, backend: Backend, precision: str) -> dict:
        """Build one artifact unless an identical build exists; returns its summary row."""
        artifact, version = backend.artifact(self.out, self.cfg.name, precision), backend.version()
        key = self.inputs_hash(backend, precision, version)
        row = {"model": self.cfg.name, "precision": precision, "backend": backend.name, "artifact": str(artifact),
               "kind": backend.kind}
        unit = f"{self.cfg.name} {precision} {backend.name}"
        note = backend.refuses(precision)
        if note:
            log(f"  note: {unit}: {note}; skipped")
            return {**row, "status": "skipped", "reason": note}
        if self.up_to_date(artifact, key):
            log(f"  {unit}: up to date ({artifact.name}), skipped")
            return {**row, "status": "cached", "parity": read_manifest(artifact).get("parity")}
        refused = self.refused_before(artifact, key)
        if refused:
            log(f"  warning: {unit}: refused before with the same inputs ({refused['reason']}); not built "
                "(--force measures it again)")
            return {**row, "status": "refused", **{k: refused.get(k) for k in ("reason", "parity", "accuracy")}}
        start = time.perf_counter()
        graph = self.precision_graph(backend.target, precision)
        try:
            compiled = backend.compile(self, graph.SerializeToString(), precision)
        except EngineError as exc:
            if not backend.optional:
                raise
            return self.refuse(backend, precision, row, key, str(exc), None, None)
        converted = self.converted[(backend.target, precision)]
        problems = self.gate(precision, backend, compiled.parity, converted.guard, compiled.accuracy)
        if problems and self.options.verify:  # an optional backend's unit (gate raised for the others)
            return self.refuse(backend, precision, row, key, "; ".join(problems), compiled.parity, compiled.accuracy)
        manifest = engine_manifest(self, backend, precision, artifact, graph, compiled, key, converted,
                                   time.perf_counter() - start)
        write_engine(artifact, compiled.data, manifest)
        layout.refusal(artifact).unlink(missing_ok=True)
        err = compiled.parity["max_abs_error"]
        log(f"  {self.cfg.name} {precision} {backend.name}: built {artifact.name} in {time.perf_counter() - start:.1f}s, "
            f"max|err| {'n/a (argmax in graph)' if err is None else f'{err:.3g}'}, "
            f"pixel agreement {compiled.parity['pixel_agreement']:.4f}")
        return {**row, "status": "built", "parity": compiled.parity}

    def gate(self, precision: str, backend: Backend, parity: dict, guard: dict | None,
             accuracy: dict | None = None) -> list[str]:
        """Refuse an artifact whose agreement with PyTorch or whose accuracy budget failed (unless
        ``--no-verify``): the previous artifact stays. The artifact's own accuracy, where its backend measured
        it, is held to the budget instead of the guard's. Returns the problems: an ``optional`` backend's unit
        with problems is refused by the caller, the build goes on."""
        problems = parity_problems(getattr(self.pipeline.parity, precision), parity,
                                   guard if accuracy is None else None, accuracy)
        parity["passed"] = not problems
        if problems and self.options.verify and not backend.optional:
            raise UserError(f"{self.cfg.name} {precision} {backend.name}: parity with PyTorch failed ({'; '.join(problems)}); "
                            f"the previous artifact is kept. Loosen parity.{precision} or accuracy in pipeline.yaml, "
                            "or pass --no-verify")
        if problems and not self.options.verify:
            log(f"  warning: {self.cfg.name} {precision} {backend.name}: parity failed ({'; '.join(problems)}), kept (--no-verify)")
        return problems

    def refuse(self, backend: Backend, precision: str, row: dict, key: str, reason: str, parity: dict | None,
               accuracy: dict | None) -> dict:
        """An optional backend's unit that failed: nothing written over the artifact (an earlier one stays), a
        warning with the numbers, a record so that the same inputs are not measured again, a summary row."""
        artifact = Path(row["artifact"])
        others = [f"the earlier {artifact.name} is kept"] if artifact.exists() else []
        fallback = layout.engine(self.out, self.cfg.name, backend.target, precision)
        if backend.target != backend.name and fallback.exists() and _passed(fallback):
            others.append(f"the {backend.target} {precision} engine holds it")
        log(f"  warning: {self.cfg.name} {precision} {backend.name}: {reason}: not built"
            + "".join(f"; {o}" for o in others))
        record = {"inputs": key, "reason": reason, "parity": parity, "accuracy": accuracy,
                  "backend_version": backend.version(),
                  "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        atomic_write(layout.refusal(artifact), json.dumps(record, indent=2, default=str).encode())
        return {**row, "status": "refused", "reason": reason, "parity": parity, "accuracy": accuracy}

    def refused_before(self, artifact: Path, key: str) -> dict | None:
        """The record of an earlier refusal of this unit with the same inputs (None with --force)."""
        path = layout.refusal(artifact)
        if self.options.force or not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("inputs") == key else None


def _passed(path: Path) -> bool:
    try:
        return bool(read_manifest(path).get("parity", {}).get("passed", False))
    except EngineError:
        return False


def io_description(cfg: ModelConfig, size_divisor: int, dynamic_hw: bool, batch: Batch) -> dict:
    """The manifest's ``input`` and ``output``: frames in and class maps out when pre/post-processing is
    embedded, else normalized tensors in and logits out."""
    size = cfg.input
    if cfg.embed_pre_post:
        tensor_in = {"name": "frames", "layout": "NHWC", "dtype": "uint8"}
        tensor_out = {"name": "classes", "layout": "NHW", "dtype": "uint8"}
    else:
        tensor_in = {"name": "images", "layout": "NCHW", "dtype": "float32"}
        tensor_out = {"name": "logits", "layout": "NCHW", "dtype": "float32"}
    return {
        "embed_pre_post": cfg.embed_pre_post,
        "input": {**tensor_in, "size": size.size, "min": size.min or size.size, "max": size.max or size.size,
                  "size_divisor": size_divisor, "dynamic_hw": dynamic_hw,
                  "batch": {"min": batch.min, "opt": batch.opt, "max": batch.max}},
        "output": {**tensor_out, "num_classes": cfg.num_classes},
    }


def engine_manifest(unit: ModelBuild, backend: Backend, precision: str, artifact: Path, graph: onnx.ModelProto,
                    compiled, key: str, converted: Converted, seconds: float) -> dict:
    """What the runtime and ``export check`` read beside an artifact (engines/manifest.py)."""
    cfg, pipeline = unit.cfg, unit.pipeline
    return {
        "model": cfg.name, "family": unit.spec.family, "variant": cfg.name, "precision": precision,
        "backend": backend.name, "backend_version": backend.version(), "kind": backend.kind,
        "classes": class_names(cfg), "palette": palette(cfg),
        **io_description(cfg, unit.spec.size_divisor, unit.spec.dynamic_hw, pipeline.batch),
        "normalization": {"mean": cfg.mean, "std": cfg.std, "color": "RGB", "scale": "0-255"},
        "device": compiled.device,
        "session": pipeline.onnxruntime.session() if backend.name == "onnxruntime" else None,
        "tensorrt": asdict(pipeline.tensorrt) if backend.name == "tensorrt" else None,
        "hashes": {"inputs": key, "weights": unit.weights_hash, "onnx": sha256_bytes(graph.SerializeToString()),
                   "config": sha256_json(asdict(cfg)), "code": unit.code},
        "engine": {"file": artifact.name, "sha256": sha256_bytes(compiled.data), "bytes": len(compiled.data)},
        "build_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 2),
        "parity": compiled.parity,
        "precision_guard": converted.guard,  # the graph's placement, measured with the target's runtime (ONNX Runtime)
        "accuracy": compiled.accuracy,  # the artifact's own mIoU, where its backend measured it
        **compiled.fields,
        # The INT8 record is the graph's: the target's placement (openvino takes the onnxruntime graph).
        **PRECISIONS[precision].manifest_fields(backend.target, graph, converted.record),
    }


def build(pipeline: Pipeline, options: BuildOptions) -> list[dict]:
    """Build what ``pipeline`` and ``options`` select; returns one summary row per artifact."""
    out = Path(options.out_dir) if options.out_dir else pipeline.resolve(pipeline.out_dir)
    known = [m.name for m in pipeline.models]
    for name in options.models or []:
        if name not in known:
            raise UserError(f"--models: {name!r} is not in the pipeline; it has: {', '.join(known)}")
    names = options.backends or list(pipeline.backends)
    trt_reason = tensorrt_reason() if "tensorrt" in names else None
    if trt_reason and options.backends and "tensorrt" in options.backends:
        raise UserError(f"--backends tensorrt: TensorRT engines cannot be built here: {trt_reason}")
    if trt_reason:
        log(f"note: TensorRT engines are skipped: {trt_reason}. The TensorRT-bound graphs are still built, "
            "checked and measured (with ONNX Runtime); compile them on the device with python -m export build.")
    ov_reason = openvino_reason() if "openvino" in names else None
    if ov_reason and options.backends and "openvino" in options.backends:
        raise UserError(f"--backends openvino: OpenVINO engines cannot be built here: {ov_reason}")
    if ov_reason:
        log(f"note: OpenVINO engines are skipped: {ov_reason}")
        names = [n for n in names if n != "openvino"]
    backends = [backend_for(name, trt_reason) for name in names]
    rows = []
    for cfg in pipeline.models:
        if options.models and cfg.name not in options.models:
            continue
        precisions = [p for p in cfg.precisions if not options.precisions or p in options.precisions]
        log(f"{cfg.name}: {', '.join(precisions)} x {', '.join(names)}")
        unit = ModelBuild(pipeline, cfg, out, options, source_hash(cfg.name))
        for backend in backends:
            for precision in precisions:
                rows.append(unit.build_unit(backend, precision))
    atomic_write(out / "summary.json", json.dumps(rows, indent=2).encode())
    return rows
