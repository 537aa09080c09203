"""Stage 4 per precision: one handler each for fp32, fp16 and int8, owning its guard, what it adds to an
artifact's cache key and what it records in the manifest. The build looks a precision up in ``PRECISIONS``
instead of branching on its name."""
from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Protocol

import numpy as np
import onnx

from ..config import ModelConfig, Pipeline
from ..log import log
from ..measure.scoring import AccuracyScorer
from .accuracy_guard import fp16_with_range_guard, int8_with_budget
from .precision import DEFAULT_CPU_INT8_SCHEME, int8_weight_max, to_fp16, to_int8


class Context(Protocol):
    """What a handler reads from the model build it serves (export/compile/build.py ``ModelBuild``)."""

    pipeline: Pipeline
    cfg: ModelConfig

    def calibration(self) -> tuple[list[np.ndarray], str]: ...  # preprocessed batches, their hash

    def accuracy_scorer(self) -> AccuracyScorer: ...


class Precision:
    """fp32: the rewritten graph as it is."""

    name = "fp32"

    def convert(self, ctx: Context, graph: onnx.ModelProto, target: str) -> tuple[onnx.ModelProto, dict | None]:
        """The graph in this precision for ``target``, and the guard's report (None: no guard ran)."""
        return graph, None

    def cache_inputs(self, ctx: Context) -> dict:
        """What besides the graph decides the result (hashed into the artifact's cache key)."""
        return {}

    def manifest_fields(self, backend: str, graph: onnx.ModelProto) -> dict:
        return {"int8": None}


class Fp16(Precision):
    """fp16 with the range guard: nodes whose values overflow FP16 on the calibration images stay FP32."""

    name = "fp16"

    @staticmethod
    def guarded(pipeline: Pipeline) -> bool:
        return bool(pipeline.accuracy.fp16_guard and pipeline.calibration.images)

    def convert(self, ctx, graph, target):
        if not self.guarded(ctx.pipeline):
            return to_fp16(graph), None
        graph, report = fp16_with_range_guard(graph, ctx.calibration()[0])
        kept = [r["node"] for r in report["kept"] if not r["already_fp32"]]
        if kept:
            log(f"  {ctx.cfg.name} fp16 {target}: kept {len(kept)} node(s) in FP32, values up to "
                f"{report['largest']:.3g} on the calibration images: {', '.join(kept[:4])}")
        return graph, report

    def cache_inputs(self, ctx):
        parts = {"accuracy": asdict(ctx.pipeline.accuracy)}
        if self.guarded(ctx.pipeline):
            parts["calibration"] = ctx.calibration()[1]
        return parts


class Int8(Precision):
    """int8 as explicit Q/DQ from the calibration images; with ``accuracy.data``, held to the mIoU budget by
    keeping the most sensitive layers in float."""

    name = "int8"

    def convert(self, ctx, graph, target):
        acc, batches = ctx.pipeline.accuracy, ctx.calibration()[0]
        method = ctx.pipeline.calibration.method
        if not acc.data:
            return to_int8(graph, batches, target, method), None
        scorer = ctx.accuracy_scorer()
        # A TensorRT-bound graph is scored as TensorRT computes it (simulated Q/DQ); a CPU graph by ONNX
        # Runtime's integer kernels, which it runs.
        evaluate = functools.partial(scorer.score, simulate_qdq=target == "tensorrt")
        graph, report = int8_with_budget(graph, batches, target, method, evaluate, scorer.reference,
                                         acc.budget_miou, acc.max_fallback)
        kept = ", ".join(k["node"] for k in report["kept"]) or "none"
        log(f"  {ctx.cfg.name} int8 {target}: mIoU {report['final_score']:.2f} vs PyTorch {scorer.reference:.2f} "
            f"(budget {acc.budget_miou}) {'held' if report['held'] else 'NOT held'}; layers kept in float: {kept}")
        return graph, report

    def cache_inputs(self, ctx):
        return {"accuracy": asdict(ctx.pipeline.accuracy), "calibration": ctx.calibration()[1]}

    def manifest_fields(self, backend, graph):
        scheme = DEFAULT_CPU_INT8_SCHEME if backend == "onnxruntime" else "s8s8-symmetric"
        return {"int8": {"scheme": scheme, "weight_max_abs": int8_weight_max(graph)}}


PRECISIONS: dict[str, Precision] = {p.name: p for p in (Precision(), Fp16(), Int8())}
