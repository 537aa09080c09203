"""``python -m export build``: the stages, in order, for every model, precision and backend in pipeline.yaml.

Every stage reads and writes a file under the output folder (the layout: engines/artifacts.py), so any
stage can be inspected or re-run:

    <out>/<model>/export.onnx                 1. PyTorch -> ONNX (custom ops kept as seg:: nodes)
    <out>/<model>/<target>/rewritten.onnx     2. graph surgery for the target (onnxruntime | tensorrt)
                                              3. TensorRT-bound graphs checked against TensorRT's op table
    <out>/<model>/<target>/<precision>.onnx   4. precision annotated in the graph (fp32 | fp16 | int8)
    <out>/<model>/onnxruntime/<precision>.engine.onnx, <out>/<model>/tensorrt/<precision>.plan
                                              5. engines, each with a manifest (6) and build-time parity (7)

Where TensorRT is missing, the TensorRT-bound graph of step 4 is the artifact (copy it to the device and
build there); its accuracy is still measured here, by ONNX Runtime running that same graph.
"""
from __future__ import annotations

import datetime
import functools
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch

import engines.onnxruntime as ort_engine
from engines import artifacts as layout
from engines.base import EngineError
from engines.cpu import this_cpu
from engines.manifest import atomic_write, read_manifest, sha256_bytes, sha256_file, sha256_json, write_engine
from models import create_model, get_spec, training_only_keys
from data import IGNORE, DataError, open_dataset

from . import compat
from ..config import ModelConfig, Pipeline, class_names, palette
from ..errors import UserError
from ..images import list_images, preprocess, read_rgb, synthetic_scene
from .frame_io import embed_frame_io
from ..measure.metrics import compare, compare_classes, confusion, mean_iou
from .onnx_export import OPSET, export_onnx
from .accuracy_guard import fp16_with_range_guard, int8_with_budget
from .precision import DEFAULT_CPU_INT8_SCHEME, int8_weight_max, to_fp16, to_int8
from .rewrites import apply_rewrites

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class BuildOptions:
    models: list[str] | None = None
    precisions: list[str] | None = None
    backends: list[str] | None = None  # None: the pipeline's backends, TensorRT skipped with a note if absent
    out_dir: str | None = None
    force: bool = False
    verify: bool = True


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def source_hash(model: str | None = None, root: Path = PROJECT_ROOT) -> str:
    """Code that shapes an artifact is one of its inputs: a changed rewrite must rebuild the engines. That is
    all of ``export/`` and ``engines/``, and of ``models/`` only the modules ``model``'s builder imports
    (transitively, within ``models``): editing one architecture's file rebuilds that architecture only.
    ``model=None`` covers all of ``models/``."""
    files = {p for d in ("export", "engines") for p in (root / d).rglob("*")
             if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts}
    if model is None:
        files |= {p for p in (root / "models").rglob("*.py") if "__pycache__" not in p.parts}
    else:
        files |= model_sources(get_spec(model).builder.__module__, root)
    return sha256_json({str(p.relative_to(root)): sha256_file(p) for p in sorted(files)})


def model_sources(module: str, root: Path = PROJECT_ROOT) -> set[Path]:
    """The files of ``module`` and of every ``models`` module it imports, directly or not (read with ``ast``,
    nothing is imported). The imports of a package's ``__init__`` are not followed, unless the package is
    the family itself: ``models/__init__.py`` imports every family to register it, which shapes none of
    them. So a family imports what it uses from the defining module (``from .backbones.resnet import
    ResNet``); tests/test_build_cache.py checks that every class a registered network is built of is covered."""
    import ast

    def path_of(name: str) -> Path | None:
        base = root.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = path_of(name)
        if path is None or path in seen or path.relative_to(root).parts[0] != "models":
            continue
        seen.add(path)
        is_package = path.name == "__init__.py"
        if is_package and name != module:
            continue
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                todo += [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
    return seen


def load_model(cfg: ModelConfig, pipeline: Pipeline) -> tuple[torch.nn.Module, str]:
    """The model with its weights, and the weights' hash. No weights file: random init from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.name, num_classes=cfg.num_classes)
    if cfg.weights is None:
        return model.eval(), f"random-init:seed={cfg.seed}"
    path = pipeline.resolve(cfg.weights)
    if not path.is_file():
        raise UserError(f"weights {path} for {cfg.name} do not exist; fix models[].weights in pipeline.yaml")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for damaged files
        raise UserError(f"weights {path} cannot be read as a PyTorch state dict ({type(exc).__name__}); "
                        "re-save them with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict):
        raise UserError(f"weights {path} hold a {type(state).__name__}, not a state dict; "
                        "save them with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    # Auxiliary heads only serve training and are dropped at export: checkpoints may leave them out.
    optional = training_only_keys(model)
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        parts = [f"missing keys: {few(missing)}" if missing else "", f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"shape mismatch: {few(shapes)}" if shapes else ""]
        raise UserError(f"weights {path} do not fit {cfg.name} with num_classes={cfg.num_classes}: "
                        + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=False)  # every deployed key was checked above
    return model.eval(), sha256_file(path)


@dataclass
class Samples:
    """Parity and speed inputs in both forms an engine may take, and PyTorch's logits for them."""

    frames: list[np.ndarray]  # (1, H, W, 3) uint8 RGB at the model's input size
    tensors: list[np.ndarray]  # (1, 3, H, W) float32, normalized
    references: list[np.ndarray] | None = None

    def feeds(self, embedded: bool) -> list[dict[str, np.ndarray]]:
        return [{"frames": f} for f in self.frames] if embedded else [{"images": t} for t in self.tensors]


def sample_inputs(pipeline: Pipeline, cfg: ModelConfig, count: int, model: torch.nn.Module | None = None) -> Samples:
    """Inputs for parity and speed checks: the check folder's images if one is named, else generated scenes.
    With ``model``, also PyTorch's logits for them."""
    h, w = cfg.input.size
    folder = pipeline.resolve(pipeline.check.images)
    if folder is not None:
        images = [read_rgb(p) for p in list_images(folder, "check.images", count)]
    else:
        images = [synthetic_scene(1000 + i) for i in range(count)]  # resized below, like camera frames
    frames = [cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)[None] for img in images]
    samples = Samples(frames, [preprocess(f[0], (h, w), cfg.mean, cfg.std) for f in frames])
    if model is not None:
        with torch.no_grad():
            samples.references = [model(torch.from_numpy(x)).numpy() for x in samples.tensors]
    return samples


def engine_outputs(runner, feeds: list[dict[str, np.ndarray]], embedded: bool) -> list[np.ndarray]:
    key = "classes" if embedded else "logits"
    return [runner.infer(feed)[key] for feed in feeds]


def agreement(outputs: list[np.ndarray], references: list[np.ndarray], embedded: bool) -> dict:
    return compare_classes(outputs, references) if embedded else compare(outputs, references)


def calibration_set(pipeline: Pipeline, cfg: ModelConfig) -> tuple[list[np.ndarray], str]:
    files = list_images(pipeline.resolve(pipeline.calibration.images), "calibration.images",
                        pipeline.calibration.max_images)
    batches = [preprocess(read_rgb(p), tuple(cfg.input.size), cfg.mean, cfg.std) for p in files]
    return batches, sha256_json([[p.name, sha256_file(p)] for p in files] + [pipeline.calibration.method])


def tensorrt_reason() -> str | None:
    from engines.tensorrt import unavailable_reason  # lazy: never imports tensorrt itself unless present

    return unavailable_reason()


class ModelBuild:
    """Everything built for one model entry; the exported and rewritten graphs are made once and shared."""

    def __init__(self, pipeline: Pipeline, cfg: ModelConfig, out: Path, options: BuildOptions, code: str) -> None:
        self.pipeline, self.cfg, self.options, self.code = pipeline, cfg, options, code
        self.out, self.dir = out, out / cfg.name
        self.spec = get_spec(cfg.name)
        self.model, self.weights_hash = load_model(cfg, pipeline)
        self._exported: onnx.ModelProto | None = None
        self._rewritten: dict[str, onnx.ModelProto] = {}
        self._calibration: tuple[list[np.ndarray], str] | None = None
        self._samples: Samples | None = None
        self._scorer = None
        self.guard_reports: dict[tuple[str, str], dict] = {}

    # Shared, lazily computed stages ---------------------------------------------------------------------
    def exported(self) -> onnx.ModelProto:
        if self._exported is None:
            t = time.perf_counter()
            self._exported = export_onnx(self.model, layout.exported_graph(self.out, self.cfg.name), tuple(self.cfg.input.size),
                                         self.spec.size_divisor, self.spec.dynamic_hw)
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

    def calibration(self) -> tuple[list[np.ndarray], str]:
        if self._calibration is None:
            self._calibration = calibration_set(self.pipeline, self.cfg)
        return self._calibration

    def evaluation_set(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """accuracy.data at the model's input size: preprocessed (1,3,H,W) images and (H,W) label maps."""
        acc = self.pipeline.accuracy
        try:
            dataset = open_dataset(self.pipeline.resolve(acc.data), acc.layout, limit=acc.limit)
            if dataset.num_classes != self.cfg.num_classes:
                raise UserError(f"accuracy.data {acc.data} has {dataset.num_classes} classes, {self.cfg.name} "
                                f"has num_classes={self.cfg.num_classes}")
            items = [dataset[i] for i in range(len(dataset))]
        except DataError as exc:
            raise UserError(f"accuracy.data: {exc}") from None
        h, w = self.cfg.input.size
        images = [preprocess(img, (h, w), self.cfg.mean, self.cfg.std) for img, _ in items]
        labels = [cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST) for _, lab in items]
        return images, labels

    def accuracy_scorer(self):
        """(PyTorch's mIoU in points, a function scoring a graph's mIoU in points) on accuracy.data."""
        if self._scorer is None:
            images, labels = self.evaluation_set()
            n = self.cfg.num_classes

            def miou(predictions) -> float:
                conf = np.zeros((n, n), np.int64)
                for pred, label in zip(predictions, labels):
                    valid = label != IGNORE
                    conf += confusion(pred[valid], label[valid], n)
                return 100 * mean_iou(conf)

            with torch.no_grad():
                reference = miou(self.model(torch.from_numpy(x)).argmax(1)[0].numpy() for x in images)

            def score(graph: onnx.ModelProto, simulate_qdq: bool = False) -> float:
                with ort_engine.OnnxRuntimeRunner(graph.SerializeToString(), self.pipeline.onnxruntime.threads,
                                                  simulate_qdq=simulate_qdq) as r:
                    return miou(r.infer({"images": x})["logits"].argmax(1)[0] for x in images)

            self._scorer = (reference, score)
        return self._scorer

    def samples(self) -> Samples:
        if self._samples is None:
            self._samples = sample_inputs(self.pipeline, self.cfg, self.pipeline.parity.num_inputs, self.model)
        return self._samples

    def precision_graph(self, target: str, precision: str) -> onnx.ModelProto:
        graph = self.rewritten(target)
        acc = self.pipeline.accuracy
        if precision == "fp16" and acc.fp16_guard and self.pipeline.calibration.images:
            graph, report = fp16_with_range_guard(graph, self.calibration()[0])
            self.guard_reports[(target, precision)] = report
            kept = [r["node"] for r in report["kept"] if not r["already_fp32"]]
            if kept:
                log(f"  {self.cfg.name} fp16 {target}: kept {len(kept)} node(s) in FP32, values up to "
                    f"{report['largest']:.3g} on the calibration images: {', '.join(kept[:4])}")
        elif precision == "fp16":
            graph = to_fp16(graph)
        elif precision == "int8" and acc.data:
            reference, score = self.accuracy_scorer()
            # A TensorRT-bound graph is scored as TensorRT computes it (simulated Q/DQ, engines/onnxruntime.py);
            # a CPU graph by ONNX Runtime's integer kernels, which it runs.
            evaluate = functools.partial(score, simulate_qdq=target == "tensorrt")
            graph, report = int8_with_budget(graph, self.calibration()[0], target, self.pipeline.calibration.method,
                                             evaluate, reference, acc.budget_miou, acc.max_fallback)
            self.guard_reports[(target, precision)] = report
            kept = ", ".join(k["node"] for k in report["kept"]) or "none"
            log(f"  {self.cfg.name} int8 {target}: mIoU {report['final_score']:.2f} vs PyTorch {reference:.2f} "
                f"(budget {acc.budget_miou}) {'held' if report['held'] else 'NOT held'}; layers kept in float: {kept}")
        elif precision == "int8":
            batches, _ = self.calibration()
            graph = to_int8(graph, batches, target, self.pipeline.calibration.method)
        if self.cfg.embed_pre_post:
            graph = embed_frame_io(graph, self.cfg.mean, self.cfg.std)
        if target == "tensorrt":
            self.check_tensorrt(graph, precision)
        atomic_write(layout.precision_graph(self.out, self.cfg.name, target, precision), graph.SerializeToString())
        return graph

    # One unit: (backend, precision) --------------------------------------------------------------------
    def inputs_hash(self, backend: str, precision: str, backend_version: str) -> str:
        parts = {
            "model": asdict(self.cfg), "weights": self.weights_hash, "code": self.code, "precision": precision,
            "backend": backend, "backend_version": backend_version, "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort_engine.VERSION,
        }
        if precision == "int8" or (precision == "fp16" and self.pipeline.accuracy.fp16_guard
                                   and self.pipeline.calibration.images):
            parts["calibration"] = self.calibration()[1]
        if precision != "fp32":
            parts["accuracy"] = asdict(self.pipeline.accuracy)
        if backend == "tensorrt":
            parts["tensorrt"] = asdict(self.pipeline.tensorrt)
        else:
            parts["session"] = asdict(self.pipeline.onnxruntime)
        return sha256_json(parts)

    def up_to_date(self, artifact: Path, key: str) -> bool:
        if self.options.force or not artifact.exists():
            return False
        try:
            manifest = read_manifest(artifact)
        except EngineError:
            return False
        return manifest.get("hashes", {}).get("inputs") == key and manifest.get("engine", {}).get("sha256") == sha256_file(artifact)

    def build_unit(self, backend: str, precision: str, trt_reason: str | None) -> dict:
        """Build one artifact unless an identical build exists; returns its summary row."""
        compiled = backend == "onnxruntime" or trt_reason is None
        if backend == "onnxruntime":
            artifact, version = layout.engine(self.out, self.cfg.name, backend, precision), ort_engine.VERSION
        elif compiled:
            from engines import tensorrt as trt_engine
            artifact = layout.engine(self.out, self.cfg.name, backend, precision)
            version = trt_engine.device_info()["tensorrt_version"]
        else:  # TensorRT-bound graph only: compiled on the device
            artifact, version = layout.precision_graph(self.out, self.cfg.name, backend, precision), "graph"
        key = self.inputs_hash(backend, precision, version)
        row = {"model": self.cfg.name, "precision": precision, "backend": backend, "artifact": str(artifact),
               "kind": "engine" if compiled else "graph"}
        if self.up_to_date(artifact, key):
            manifest = read_manifest(artifact)
            log(f"  {self.cfg.name} {precision} {backend}: up to date ({artifact.name}), skipped")
            return {**row, "status": "cached", "parity": manifest.get("parity")}
        start = time.perf_counter()
        target = backend
        graph = self.precision_graph(target, precision)
        graph_bytes = graph.SerializeToString()
        if backend == "onnxruntime":
            data = ort_engine.build_engine(graph_bytes, self.pipeline.onnxruntime.optimization_level)
            ort_cfg = self.pipeline.onnxruntime
            parity = self.measure(lambda: ort_engine.OnnxRuntimeRunner(data, ort_cfg.threads, ort_cfg.load_optimization_level))
            device = {"device": "cpu", "processor": platform.processor() or platform.machine(), "cpu": this_cpu()}
        elif compiled:
            data, parity, device = self.build_tensorrt(precision)
        else:
            data = graph_bytes
            parity = self.measure(lambda: ort_engine.OnnxRuntimeRunner(data, self.pipeline.onnxruntime.threads,
                                                                       simulate_qdq=True))
            parity["measured_with"] = (f"onnxruntime {ort_engine.VERSION} (CPU), same graph TensorRT compiles"
                                       + (", Q/DQ simulated in FP32" if precision == "int8" else ""))
            device = {"device": "any NVIDIA GPU (compile on the target)"}
        self.gate(precision, backend, parity)
        write_engine(artifact, data, self.manifest(backend, version, precision, artifact, data, graph_bytes, key,
                                                   parity, device, time.perf_counter() - start, compiled))
        err = "n/a (argmax in graph)" if parity["max_abs_error"] is None else f"{parity['max_abs_error']:.3g}"
        log(f"  {self.cfg.name} {precision} {backend}: built {artifact.name} in {time.perf_counter() - start:.1f}s, "
            f"max|err| {err}, pixel agreement {parity['pixel_agreement']:.4f}")
        return {**row, "status": "built", "parity": parity}

    def build_tensorrt(self, precision: str):
        from engines import tensorrt as trt_engine

        trt_cfg = self.pipeline.tensorrt
        graph_path = layout.precision_graph(self.out, self.cfg.name, "tensorrt", precision)
        size = self.cfg.input
        shape = lambda hw: (1, 3, *hw)  # noqa: E731
        options = trt_engine.TensorRTOptions(
            min_shape=shape(size.min or size.size), opt_shape=shape(size.size), max_shape=shape(size.max or size.size),
            workspace_mib=trt_cfg.workspace_mib, dla_core=trt_cfg.dla_core,
            version_compatible=trt_cfg.version_compatible, hardware_compatibility=trt_cfg.hardware_compatibility,
            timing_cache=self.dir.parent / trt_cfg.timing_cache,
            builder_optimization_level=trt_cfg.builder_optimization_level,
        )
        try:
            plan = trt_engine.build_engine(graph_path, options)
        except EngineError as exc:
            raise UserError(f"{self.cfg.name} {precision}: TensorRT build failed: {exc}") from None
        tmp = graph_path.with_suffix(".plan.verify")
        tmp.write_bytes(plan)
        try:
            parity = self.measure(lambda: trt_engine.TensorRTRunner(tmp, version_compatible=trt_cfg.version_compatible))
        finally:
            tmp.unlink(missing_ok=True)
        return plan, parity, trt_engine.device_info()

    def measure(self, make_runner) -> dict:
        samples, embedded = self.samples(), self.cfg.embed_pre_post
        with make_runner() as runner:
            outputs = engine_outputs(runner, samples.feeds(embedded), embedded)
        return {**agreement(outputs, samples.references, embedded), "num_inputs": len(outputs),
                "size": list(self.cfg.input.size)}

    def gate(self, precision: str, backend: str, parity: dict) -> None:
        threshold = getattr(self.pipeline.parity, precision)
        problems = []
        # Engines with the argmax inside output no logits: only agreement can be gated for them.
        if threshold.max_abs_error is not None and parity["max_abs_error"] is not None \
                and not parity["max_abs_error"] <= threshold.max_abs_error:
            problems.append(f"max abs logit error {parity['max_abs_error']:.3g} > {threshold.max_abs_error:g}")
        if threshold.min_pixel_agreement is not None and parity["pixel_agreement"] < threshold.min_pixel_agreement:
            problems.append(f"pixel agreement {parity['pixel_agreement']:.4f} < {threshold.min_pixel_agreement:g}")
        guard = self.guard_reports.get((backend, precision)) or {}
        if guard.get("held") is False:
            problems.append(f"mIoU {guard['final_score']:.2f} is more than accuracy.budget_miou {guard['budget']:g} "
                            f"below PyTorch's {guard['reference_score']:.2f} with {len(guard['kept'])} layer(s) or "
                            "op type(s) kept in float")
        parity["passed"] = not problems
        if problems and self.options.verify:
            raise UserError(f"{self.cfg.name} {precision} {backend}: parity with PyTorch failed ({'; '.join(problems)}); "
                            f"the previous artifact is kept. Loosen parity.{precision} or accuracy in pipeline.yaml, "
                            "or pass --no-verify")
        if problems:
            log(f"  warning: {self.cfg.name} {precision} {backend}: parity failed ({'; '.join(problems)}), kept (--no-verify)")

    def manifest(self, backend, version, precision, artifact, data, graph_bytes, key, parity, device, seconds, compiled):
        cfg, size = self.cfg, self.cfg.input
        return {
            "model": cfg.name, "family": self.spec.family, "variant": cfg.name, "precision": precision,
            "backend": backend, "backend_version": version, "kind": "engine" if compiled else "graph",
            "classes": class_names(cfg), "palette": palette(cfg),
            "input": {**({"name": "frames", "layout": "NHWC", "dtype": "uint8", "embedded_preprocessing": True}
                         if cfg.embed_pre_post else
                         {"name": "images", "layout": "NCHW", "dtype": "float32", "embedded_preprocessing": False}),
                      "size": size.size, "min": size.min or size.size, "max": size.max or size.size,
                      "size_divisor": self.spec.size_divisor, "dynamic_hw": self.spec.dynamic_hw},
            "output": ({"name": "classes", "layout": "NHW", "dtype": "uint8", "embedded_argmax": True}
                       if cfg.embed_pre_post else
                       {"name": "logits", "layout": "NCHW", "dtype": "float32", "embedded_argmax": False})
                      | {"num_classes": cfg.num_classes},
            "normalization": {"mean": cfg.mean, "std": cfg.std, "color": "RGB", "scale": "0-255"},
            "device": device,
            "session": asdict(self.pipeline.onnxruntime) if backend == "onnxruntime" else None,
            "tensorrt": asdict(self.pipeline.tensorrt) if backend == "tensorrt" else None,
            "hashes": {"inputs": key, "weights": self.weights_hash, "onnx": sha256_bytes(graph_bytes),
                       "config": sha256_json(asdict(cfg)), "code": self.code},
            "engine": {"file": artifact.name, "sha256": sha256_bytes(data), "bytes": len(data)},
            "build_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(seconds, 2),
            "parity": parity,
            "precision_guard": self.guard_reports.get((backend, precision)),
            "int8": ({"scheme": DEFAULT_CPU_INT8_SCHEME if backend == "onnxruntime" else "s8s8-symmetric",
                      "weight_max_abs": int8_weight_max(onnx.load_from_string(graph_bytes))}
                     if precision == "int8" else None),
        }


def build(pipeline: Pipeline, options: BuildOptions) -> list[dict]:
    """Build what ``pipeline`` and ``options`` select; returns one summary row per artifact."""
    out = Path(options.out_dir) if options.out_dir else pipeline.resolve(pipeline.out_dir)
    known = [m.name for m in pipeline.models]
    for name in options.models or []:
        if name not in known:
            raise UserError(f"--models: {name!r} is not in the pipeline; it has: {', '.join(known)}")
    backends = options.backends or list(pipeline.backends)
    trt_reason = tensorrt_reason() if "tensorrt" in backends else None
    if trt_reason and options.backends and "tensorrt" in options.backends:
        raise UserError(f"--backends tensorrt: TensorRT engines cannot be built here: {trt_reason}")
    if trt_reason:
        log(f"note: TensorRT engines are skipped: {trt_reason}. The TensorRT-bound graphs are still built, "
            "checked and measured (with ONNX Runtime); compile them on the device with python -m export build.")
    rows = []
    for cfg in pipeline.models:
        if options.models and cfg.name not in options.models:
            continue
        precisions = [p for p in cfg.precisions if not options.precisions or p in options.precisions]
        log(f"{cfg.name}: {', '.join(precisions)} x {', '.join(backends)}")
        unit = ModelBuild(pipeline, cfg, out, options, source_hash(cfg.name))
        for backend in backends:
            for precision in precisions:
                rows.append(unit.build_unit(backend, precision, trt_reason if backend == "tensorrt" else None))
    atomic_write(out / "summary.json", json.dumps(rows, indent=2).encode())
    return rows
