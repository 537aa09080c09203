"""Stage 5: engine builders, one class per backend, looked up by the name pipeline.yaml's ``backends`` use.

Each turns the precision-annotated graph into its artifact (the file engines/artifacts.py places), measures
that artifact against PyTorch and says where it runs. Where TensorRT is missing, the ``tensorrt`` backend is
``TensorRTGraph``: the artifact is the TensorRT-bound graph itself (compiled on the device), measured here by
ONNX Runtime running that same graph. ``openvino`` is opt-in and ``optional``: a unit of it that fails parity
or the accuracy budget is refused (not written) and the build goes on.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import engines.onnxruntime as ort_engine
import engines.openvino as ov_engine  # plain Python: importing it imports no OpenVINO
from engines import artifacts as layout
from engines.base import EngineError, Runner
from engines.cpu import this_cpu

from engines.tensorrt import dla_precision_problem  # plain Python: importing it imports no TensorRT

from ..config import Batch, ModelConfig, OnnxRuntimeConfig, Pipeline, TensorRTConfig
from ..errors import UserError
from ..log import log
from ..measure.scoring import AccuracyScorer
from .pre_post import FRAMES


@dataclass
class Compiled:
    data: bytes  # the artifact's bytes
    parity: dict  # its agreement with PyTorch (export/measure/samples.py ``parity``)
    device: dict  # where it runs, for the manifest
    fields: dict = field(default_factory=dict)  # the backend's own manifest keys (the settings it loads with)
    # The artifact's own mIoU on accuracy.data (``accuracy_report``): held to the budget in place of the
    # precision guard's, which measured the graph with another runtime's kernels. None: not measured.
    accuracy: dict | None = None


class Context(Protocol):
    """What a backend reads from the model build it serves (export/compile/build.py ``ModelBuild``)."""

    pipeline: Pipeline
    cfg: ModelConfig
    out: Path

    def parity(self, make_runner: Callable[[], Runner]) -> dict: ...

    def accuracy_scorer(self) -> AccuracyScorer: ...


class Backend:
    """One way to turn a graph into a deployable artifact."""

    name: str  # the key in pipeline.yaml's backends and the folder under <out>/<model>/
    kind = "engine"  # or "graph": the artifact is a graph compiled elsewhere
    # An opt-in peer of the backends a build needs: a unit that fails parity or the accuracy budget (or does not
    # compile) is refused, not written, and the build goes on; the other backends' artifacts are what ships.
    optional = False

    @property
    def target(self) -> str:
        """The rewrite target whose graphs this backend takes (export/compile/rewrites.py)."""
        return self.name

    def artifact(self, out: Path, model: str, precision: str) -> Path:
        return layout.engine(out, model, self.name, precision)

    def version(self) -> str:
        raise NotImplementedError

    def cache_inputs(self, pipeline: Pipeline) -> dict:
        """The backend's settings that shape the artifact (hashed into its cache key)."""
        raise NotImplementedError

    def refuses(self, precision: str) -> str | None:
        """Why this backend does not build ``precision`` at all (the unit is skipped with that note); None: it does."""
        return None

    def compile(self, ctx: Context, graph: bytes, precision: str) -> Compiled:
        raise NotImplementedError


class OnnxRuntimeBackend(Backend):
    """An ONNX Runtime engine: the graph optimized offline and saved, run on the CPU."""

    name = "onnxruntime"

    def version(self) -> str:
        return ort_engine.VERSION

    def cache_inputs(self, pipeline):
        return {"session": pipeline.onnxruntime.session()}

    def compile(self, ctx, graph, precision):
        data, make_runner = onnxruntime_engine(graph, ctx.pipeline.onnxruntime)
        parity = ctx.parity(make_runner)
        device = {"device": "cpu", "processor": platform.processor() or platform.machine(), "cpu": this_cpu()}
        return Compiled(data, parity, device)


def onnxruntime_engine(graph: bytes, settings: OnnxRuntimeConfig) -> tuple[bytes, Callable[[], Runner]]:
    """The ONNX Runtime engine of ``graph`` (optimized offline at ``settings.optimization_level``) and a runner
    factory that loads it as a device will (``settings.threads``, ``load_optimization_level``)."""
    data = ort_engine.build_engine(graph, settings.optimization_level)
    return data, lambda: ort_engine.OnnxRuntimeRunner(data, settings.threads, settings.load_optimization_level)


class TensorRTBackend(Backend):
    """A TensorRT plan, built and measured on this machine's GPU (engines/tensorrt.py, imported lazily)."""

    name = "tensorrt"

    def version(self) -> str:
        from engines import tensorrt as trt_engine

        return trt_engine.device_info()["tensorrt_version"]

    def cache_inputs(self, pipeline):
        return {"tensorrt": asdict(pipeline.tensorrt), "batch": asdict(pipeline.batch)}  # the profile's N

    def compile(self, ctx, graph, precision):
        from engines import tensorrt as trt_engine

        settings = ctx.pipeline.tensorrt
        graph_path = layout.precision_graph(ctx.out, ctx.cfg.name, self.target, precision)
        options = trt_engine.TensorRTOptions(
            **tensorrt_profile(ctx.cfg, ctx.pipeline.batch), workspace_mib=settings.workspace_mib,
            dla_core=settings.dla_core, version_compatible=settings.version_compatible,
            hardware_compatibility=settings.hardware_compatibility,
            timing_cache=Path(ctx.out) / settings.timing_cache,
            builder_optimization_level=settings.builder_optimization_level,
        )
        problem = trt_engine.dla_precision_problem(precision, settings.dla_core)
        if problem:
            raise UserError(f"{ctx.cfg.name} {precision} tensorrt: {problem}")
        try:
            built = trt_engine.build(graph_path, options)
        except EngineError as exc:
            raise UserError(f"{ctx.cfg.name} {precision}: TensorRT build failed: {exc}") from None
        if built.dla is not None:
            log(f"  {ctx.cfg.name} {precision} tensorrt: {trt_engine.dla_summary(built.dla)}")
        tmp = graph_path.with_suffix(".plan.verify")
        tmp.write_bytes(built.plan)
        try:
            parity = ctx.parity(lambda: verification_runner(tmp, settings))
        finally:
            tmp.unlink(missing_ok=True)
        device = trt_engine.device_info()
        return Compiled(built.plan, parity, device if built.dla is None else {**device, "dla": built.dla})


def verification_runner(plan: Path, settings: TensorRTConfig) -> Runner:
    """The runner build-time parity measures a fresh plan with: loaded as the device will load it, with the same
    version compatibility and DLA core it was built for."""
    from engines.tensorrt import TensorRTRunner

    return TensorRTRunner(plan, version_compatible=settings.version_compatible, dla_core=settings.dla_core)


def tensorrt_profile(cfg: ModelConfig, batch: Batch | None = None) -> dict:
    """The optimization profile of the TensorRT-bound graph's one input: normalized ``images`` (N, 3, H, W), or
    with ``embed_pre_post`` uint8 ``frames`` (N, H, W, 3) (export/compile/pre_post.py); N from pipeline.yaml's
    ``batch`` min/opt/max (1 without it), H and W from ``input.min``/``size``/``max``."""
    size, batch = cfg.input, batch or Batch(1, 1, 1)

    def shape(n: int, hw: list[int]) -> tuple[int, int, int, int]:
        return (n, *hw, 3) if cfg.embed_pre_post else (n, 3, *hw)

    return {"input_name": FRAMES if cfg.embed_pre_post else "images",
            "min_shape": shape(batch.min, size.min or size.size), "opt_shape": shape(batch.opt, size.size),
            "max_shape": shape(batch.max, size.max or size.size)}


class TensorRTGraph(TensorRTBackend):
    """No TensorRT here: the TensorRT-bound graph is the artifact, measured by ONNX Runtime running that same
    graph (Q/DQ simulated in FP32, as TensorRT's int32 accumulation computes it)."""

    kind = "graph"

    def artifact(self, out, model, precision):
        return layout.precision_graph(out, model, self.target, precision)

    def version(self) -> str:
        return "graph"

    def compile(self, ctx, graph, precision):
        problem = dla_precision_problem(precision, ctx.pipeline.tensorrt.dla_core)
        if problem:  # said here already, so that the graph is not carried to the device to be refused there
            log(f"  warning: {ctx.cfg.name} {precision} tensorrt: {problem}")
        # A TensorRT plugin node cannot run in ONNX Runtime: it is measured as its decomposition (the plugin's
        # own kernel is not run here; export/compile/plugins.py).
        import onnx

        from .plugins import runnable_on_onnxruntime

        runnable = runnable_on_onnxruntime(onnx.load_from_string(graph)).SerializeToString()
        parity = ctx.parity(lambda: ort_engine.OnnxRuntimeRunner(runnable, ctx.pipeline.onnxruntime.threads,
                                                                 simulate_qdq=True))
        parity["measured_with"] = (f"onnxruntime {ort_engine.VERSION} (CPU), same graph TensorRT compiles"
                                   + (", Q/DQ simulated in FP32" if precision == "int8" else ""))
        return Compiled(graph, parity, {"device": "any NVIDIA GPU (compile on the target)"})


class OpenVINOBackend(Backend):
    """OpenVINO's compiled model for x86 CPUs (engines/openvino.py, imported lazily), built from the ONNX
    Runtime-target graph: OpenVINO gains from that target's fusions too (SegFormer-B0 fp32: 25.8 ms on it,
    38.1 ms on the unfused TensorRT-bound graph). Its INT8 runs OpenVINO's own integer kernels, which the
    precision guard did not measure (BiSeNetV2 int8, one graph: mIoU 35.96 on OpenVINO, 44.79 on ONNX Runtime,
    44.40 in PyTorch), so the built engine itself is scored on accuracy.data and held to the budget."""

    name = "openvino"
    optional = True

    @property
    def target(self) -> str:
        return "onnxruntime"

    def version(self) -> str:
        return ov_engine.version() or "not installed"

    def cache_inputs(self, pipeline):
        # The compiled model holds the plugin's transformations for this CPU: another CPU compiles its own.
        return {"openvino": asdict(pipeline.openvino), "cpu": this_cpu()["model"]}

    def refuses(self, precision):
        if precision == "fp16":
            return ("no fp16 engine: OpenVINO's CPU plugin runs an FP16 graph in FP32 on x86 CPUs without "
                    "AVX512-FP16 (measured on Zen 5: no faster than fp32) and turns an f16 hint into bf16")
        return None

    def compile(self, ctx, graph, precision):
        threads = ctx.pipeline.openvino.threads
        data = ov_engine.build_engine(graph, threads)  # an EngineError refuses the unit (``optional``)
        parity = ctx.parity(lambda: ov_engine.OpenVINORunner(data, threads))
        parity["measured_with"] = self.measured_with()
        accuracy = None
        if precision == "int8" and ctx.pipeline.accuracy.data:
            accuracy = accuracy_report(ctx, self.score(ctx, data), self.measured_with() + ", the built engine")
            log(f"  {ctx.cfg.name} int8 openvino: mIoU {accuracy['score']:.2f} vs PyTorch "
                f"{accuracy['reference_score']:.2f} (budget {accuracy['budget']}) on OpenVINO's own kernels, "
                f"{'held' if accuracy['held'] else 'NOT held'}")
        device = {"device": "cpu", "processor": platform.processor() or platform.machine(), "cpu": this_cpu()}
        fields = {"openvino": {**asdict(ctx.pipeline.openvino), "compile_config": ov_engine.compile_config(threads)}}
        return Compiled(data, parity, device, fields, accuracy)

    def measured_with(self) -> str:
        return f"openvino {ov_engine.version()} (CPU plugin, f32 inference precision)"

    def score(self, ctx: Context, data: bytes) -> float:
        """The engine's mIoU on accuracy.data, run by OpenVINO (tests replace this to plant a failing score)."""
        runner = ov_engine.OpenVINORunner(data, ctx.pipeline.openvino.threads)
        return ctx.accuracy_scorer().score_runner(runner, ctx.cfg.embed_pre_post)


def accuracy_report(ctx: Context, score: float, measured_with: str) -> dict:
    """An artifact's own mIoU against PyTorch's on accuracy.data, and whether it is within accuracy.budget_miou."""
    scorer, acc = ctx.accuracy_scorer(), ctx.pipeline.accuracy
    return {"score": score, "reference_score": scorer.reference, "budget": acc.budget_miou,
            "held": score >= scorer.reference - acc.budget_miou, "data": acc.data, "num_images": len(scorer.labels),
            "measured_with": measured_with}


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (OnnxRuntimeBackend, TensorRTBackend, OpenVINOBackend)}


def backend_for(name: str, tensorrt_reason: str | None = None) -> Backend:
    """The builder of backend ``name``; for TensorRT where it is unavailable (``tensorrt_reason``), the
    graph-only one."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if name == "tensorrt" and tensorrt_reason:
        return TensorRTGraph()
    return BACKENDS[name]()
