"""Stage 4 per precision: one handler each for fp32, fp16 and int8, owning its guard, what it adds to an
artifact's cache key and what it records in the manifest. The build looks a precision up in ``PRECISIONS``
instead of branching on its name."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import onnx

from ..config import Pipeline
from ..log import log
from ..measure.scoring import AccuracyScorer
from .accuracy_guard import fp16_with_range_guard, int8_with_budget
from .int8_placement import Context as PlacementContext, choose_placement, placements, summary
from .precision import DEFAULT_CPU_INT8_PLACEMENT, DEFAULT_CPU_INT8_SCHEME, int8_weight_max, to_fp16, to_int8


class Context(PlacementContext, Protocol):
    """What a handler reads from the model build it serves (export/compile/build.py ``ModelBuild``): the INT8
    placement choice's context (samples, parity, the CPU engine of a graph) and these."""

    def calibration(self) -> tuple[list[np.ndarray], str]: ...  # preprocessed batches, their hash

    def accuracy_scorer(self) -> AccuracyScorer: ...


@dataclass
class Converted:
    """A graph in one precision and what its handler measured on the way."""

    graph: onnx.ModelProto
    guard: dict | None = None  # the guard's report (the manifest's precision_guard; gated); None: no guard ran
    record: dict = field(default_factory=dict)  # what the handler adds to its manifest block (manifest_fields)


class Precision:
    """fp32: the rewritten graph as it is."""

    name = "fp32"

    def convert(self, ctx: Context, graph: onnx.ModelProto, target: str) -> Converted:
        """The graph in this precision for ``target``, with the guard's report and what was measured."""
        return Converted(graph)

    def cache_inputs(self, ctx: Context, target: str) -> dict:
        """What besides the graph decides the result for ``target`` (hashed into the artifact's cache key)."""
        return {}

    def manifest_fields(self, backend: str, graph: onnx.ModelProto, record: dict) -> dict:
        return {"int8": None}


class Fp16(Precision):
    """fp16 with the range guard: nodes whose values overflow FP16 on the calibration images stay FP32."""

    name = "fp16"

    @staticmethod
    def guarded(pipeline: Pipeline) -> bool:
        return bool(pipeline.accuracy.fp16_guard and pipeline.calibration.images)

    def convert(self, ctx, graph, target):
        if not self.guarded(ctx.pipeline):
            return Converted(to_fp16(graph))
        graph, report = fp16_with_range_guard(graph, ctx.calibration()[0])
        kept = [r["node"] for r in report["kept"] if not r["already_fp32"]]
        if kept:
            log(f"  {ctx.cfg.name} fp16 {target}: kept {len(kept)} node(s) in FP32, values up to "
                f"{report['largest']:.3g} on the calibration images: {', '.join(kept[:4])}")
        return Converted(graph, report)

    def cache_inputs(self, ctx, target):
        parts = {"accuracy": asdict(ctx.pipeline.accuracy)}
        if self.guarded(ctx.pipeline):
            parts["calibration"] = ctx.calibration()[1]
        return parts


class Int8(Precision):
    """int8 as explicit Q/DQ from the calibration images; with ``accuracy.data``, held to the mIoU budget by
    keeping the most sensitive layers in float. For the CPU, in the placement ``onnxruntime.int8_placement``
    names, or with ``auto`` the fastest of those that hold (export/compile/int8_placement.py)."""

    name = "int8"

    def convert(self, ctx, graph, target):
        if target != "onnxruntime":
            return Converted(*self.quantize(ctx, graph, target))
        setting = ctx.pipeline.onnxruntime.int8_placement
        chosen, record = choose_placement(ctx, setting, lambda placement: self.quantize(ctx, graph, target, placement))
        if setting == "auto":
            log(summary(ctx.cfg.name, record))
        return Converted(chosen.graph, chosen.guard, record)

    @staticmethod
    def quantize(ctx: Context, graph: onnx.ModelProto, target: str,
                 placement: str = DEFAULT_CPU_INT8_PLACEMENT) -> tuple[onnx.ModelProto, dict | None]:
        """One placement's INT8 graph, through the accuracy guard when ``accuracy.data`` is set, and the
        guard's report (None without)."""
        acc, batches = ctx.pipeline.accuracy, ctx.calibration()[0]
        method = ctx.pipeline.calibration.method
        if not acc.data:
            return to_int8(graph, batches, target, method, placement=placement), None
        scorer = ctx.accuracy_scorer()
        # A TensorRT-bound graph is scored as TensorRT computes it (simulated Q/DQ); a CPU graph by ONNX
        # Runtime's integer kernels, which it runs.
        evaluate = functools.partial(scorer.score, simulate_qdq=target == "tensorrt")
        graph, report = int8_with_budget(graph, batches, target, method, evaluate, scorer.reference,
                                         acc.budget_miou, acc.max_fallback, placement=placement)
        kept = ", ".join(k["node"] for k in report["kept"]) or "none"
        where = target if target == "tensorrt" else f"{target} {placement}"
        log(f"  {ctx.cfg.name} int8 {where}: mIoU {report['final_score']:.2f} vs PyTorch {scorer.reference:.2f} "
            f"(budget {acc.budget_miou}) {'held' if report['held'] else 'NOT held'}; layers kept in float: {kept}")
        return graph, report

    def cache_inputs(self, ctx, target):
        parts = {"accuracy": asdict(ctx.pipeline.accuracy), "calibration": ctx.calibration()[1]}
        if target == "onnxruntime":
            setting = ctx.pipeline.onnxruntime.int8_placement
            parts["placement"] = {"setting": setting, "candidates": placements(setting)}
            if len(parts["placement"]["candidates"]) > 1:  # what the choice holds each candidate to
                parts["placement"]["parity"] = asdict(ctx.pipeline.parity)
                parts["placement"]["samples"] = ctx.pipeline.check.images
        return parts

    def manifest_fields(self, backend, graph, record):
        scheme = DEFAULT_CPU_INT8_SCHEME if backend == "onnxruntime" else "s8s8-symmetric"
        return {"int8": {"scheme": scheme, "weight_max_abs": int8_weight_max(graph), **record}}


PRECISIONS: dict[str, Precision] = {p.name: p for p in (Precision(), Fp16(), Int8())}
