"""The CPU target's INT8 placement, picked per model at build (pipeline.yaml ``onnxruntime.int8_placement``).

Both placements (config.py ``CPU_INT8_PLACEMENTS``, precision.py says what each quantizes) use the CPU's
integer types (uint8 activations, 7-bit int8 weights: the same integers on every x86 CPU) and differ in which
ops they quantize. Which one runs faster can depend on the model and the CPU: how much of the model's time goes
to the ops between its layers, and whether ONNX Runtime's integer kernels for them beat the float ones plus
the conversions on that CPU. So with ``auto`` every placement's
INT8 graph is built (through the accuracy guard when ``accuracy.data`` is set), held to the build's own gate
(parity with PyTorch and the mIoU budget, as ``build.ModelBuild.gate`` will hold the artifact), timed as an
engine with the pipeline's session settings, and the fastest that holds is kept. A placement's name instead of
``auto`` builds only that placement.

Timing: interleaved rounds (each round runs every candidate once, in a rotating order) on one input, the median
per candidate, so that a load change on a shared machine hits them alike. The default placement is kept unless
another is faster by more than ``MARGIN``: between two placements equally fast, noise must not decide, and
the choice should not flip from build to build. What was measured is recorded in the manifest (``int8``); a
cached artifact is reused without measuring again (the setting and the candidates are in its cache key, the
constants here in the code hash).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import numpy as np
import onnx

from engines.base import Runner

from ..config import CPU_INT8_PLACEMENTS, ModelConfig, Pipeline
from ..measure.samples import Samples, parity_problems
from .precision import DEFAULT_CPU_INT8_PLACEMENT

MARGIN = 0.05  # another placement must be more than 5% faster than the default to replace it
ROUNDS = 15
WARMUP = 2  # calls per candidate before the rounds (first-call allocations, thread pool start)


class Context(Protocol):
    """What the choice reads from the model build (export/compile/build.py ``ModelBuild``)."""

    pipeline: Pipeline
    cfg: ModelConfig

    def samples(self) -> Samples: ...

    def parity(self, make_runner: Callable[[], Runner]) -> dict: ...

    def cpu_engine(self, graph: onnx.ModelProto) -> Callable[[], Runner]: ...


@dataclass
class Candidate:
    """One placement's INT8 graph and what was measured of it."""

    placement: str
    graph: onnx.ModelProto
    guard: dict | None = None  # the accuracy guard's report; None without accuracy.data
    parity: dict | None = None
    problems: list[str] = field(default_factory=list)  # what fails the build's gate; empty: it holds
    median_ms: float | None = None

    @property
    def holds(self) -> bool:
        return not self.problems

    @property
    def accuracy(self) -> float:
        """What "most accurate" compares when none holds: the scored mIoU, else agreement with PyTorch."""
        if self.guard is not None:
            return float(self.guard["final_score"])
        return float(self.parity["pixel_agreement"]) if self.parity else -np.inf


def placements(setting: str) -> list[str]:
    """The placements a setting builds: every one for ``auto`` (the default first), else that one."""
    if setting == "auto":
        return [DEFAULT_CPU_INT8_PLACEMENT] + [p for p in CPU_INT8_PLACEMENTS if p != DEFAULT_CPU_INT8_PLACEMENT]
    if setting not in CPU_INT8_PLACEMENTS:
        raise ValueError(f"unknown INT8 placement {setting!r}; known: auto, {', '.join(CPU_INT8_PLACEMENTS)}")
    return [setting]


def measure_latencies(runners: Mapping[str, Callable[[], Runner]], feed: Mapping[str, np.ndarray],
                      rounds: int = ROUNDS, warmup: int = WARMUP) -> dict[str, float]:
    """Median milliseconds of one call of each runner on ``feed``, all runners active at once and run in
    interleaved rounds (the order rotated each round, so none always runs right after another)."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        active = {name: stack.enter_context(runners[name]()) for name in names}
        for name in names:
            for _ in range(warmup):
                active[name].infer(feed)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                active[name].infer(feed)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def pick(candidates: list[Candidate], default: str = DEFAULT_CPU_INT8_PLACEMENT,
         margin: float = MARGIN) -> tuple[Candidate, dict[str, str]]:
    """The candidate to keep, and why each one was or was not kept.

    Of those that hold (budget and parity), the fastest; the default placement unless another is faster by
    more than ``margin`` (of the default's time). If none holds, the most accurate (the build's gate then
    refuses it, or keeps it under ``--no-verify``); ties go to the default."""
    by_name = {c.placement: c for c in candidates}
    holding = [c for c in candidates if c.holds]
    why: dict[str, str] = {}
    if len(candidates) == 1:
        (only,) = candidates
        return only, {only.placement: "fixed by onnxruntime.int8_placement"}
    if not holding:
        chosen = max(candidates, key=lambda c: (c.accuracy, c.placement == default))
        for c in candidates:
            why[c.placement] = ("none holds; the most accurate" if c is chosen else
                                f"none holds; less accurate: {'; '.join(c.problems)}")
        return chosen, why
    base = by_name[default] if by_name.get(default) in holding else min(holding, key=lambda c: c.median_ms)
    faster = [c for c in holding if c.median_ms < base.median_ms * (1 - margin)]
    chosen = min(faster, key=lambda c: c.median_ms) if faster else base
    for c in candidates:
        if c is chosen:
            if c is base and c.placement == default and len(holding) > 1:
                why[c.placement] = f"the default; no other is more than {margin:.0%} faster"
            elif len(holding) == 1:
                why[c.placement] = "the only one that holds"
            else:
                why[c.placement] = "the fastest that holds"
        elif not c.holds:
            why[c.placement] = "; ".join(c.problems)
        elif c.median_ms < chosen.median_ms:
            why[c.placement] = f"faster by less than the {margin:.0%} margin"
        else:
            why[c.placement] = "slower"
    return chosen, why


def choose_placement(ctx: Context, setting: str,
                     quantize: Callable[[str], tuple[onnx.ModelProto, dict | None]]) -> tuple[Candidate, dict]:
    """Build the placements ``setting`` names with ``quantize(placement) -> (INT8 graph, guard report)`` and
    keep one (``pick``). Returns it and the manifest's record: ``placement`` (the one kept), ``setting``,
    ``candidates`` (each placement's median ms, mIoU and whether it held the budget when scored, agreement
    with PyTorch, whether it holds, whether chosen and why), ``timing`` (how it was measured)."""
    candidates = [Candidate(p, *quantize(p)) for p in placements(setting)]
    timing = None
    if len(candidates) > 1:
        threshold = ctx.pipeline.parity.int8
        engines = {c.placement: ctx.cpu_engine(c.graph) for c in candidates}
        for c in candidates:
            c.parity = ctx.parity(engines[c.placement])
            c.problems = parity_problems(threshold, c.parity, c.guard)
        feed = ctx.samples().feeds(ctx.cfg.embed_pre_post)[0]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        latencies = measure_latencies(engines, feed)
        for c in candidates:
            c.median_ms = latencies[c.placement]
        settings = ctx.pipeline.onnxruntime
        timing = {"rounds": ROUNDS, "warmup": WARMUP, "margin": MARGIN, "threads": settings.threads,
                  "load_optimization_level": settings.load_optimization_level,
                  "input": {k: list(v.shape) for k, v in feed.items()},
                  "load_average": None if load is None else round(load, 2)}
    chosen, why = pick(candidates)
    record = {
        "placement": chosen.placement, "setting": setting,
        "candidates": [{
            "placement": c.placement,
            "median_ms": None if c.median_ms is None else round(c.median_ms, 3),
            "miou": None if c.guard is None else c.guard["final_score"],
            "held": None if c.guard is None else c.guard["held"],
            "pixel_agreement": None if c.parity is None else c.parity["pixel_agreement"],
            "holds": None if c.parity is None else c.holds,
            "chosen": c is chosen, "why": why[c.placement],
        } for c in candidates],
        "timing": timing,
    }
    return chosen, record


def summary(model: str, record: dict) -> str:
    """The build log's one line on the choice: which placement won, its speed against each other one, and why
    the others were not kept."""
    chosen = next(c for c in record["candidates"] if c["chosen"])
    timing = record["timing"] or {}
    parts = []
    for other in (c for c in record["candidates"] if not c["chosen"]):
        if chosen["median_ms"] and other["median_ms"]:
            parts.append(f"{other['median_ms'] / chosen['median_ms']:.2f}x the speed of {other['placement']} "
                         f"({_ms(chosen['median_ms'], other['median_ms'])} ms, median of "
                         f"{timing.get('rounds')} interleaved rounds, load average {timing.get('load_average')}; "
                         f"{other['placement']}: {other['why']})")
        else:
            parts.append(f"{other['placement']}: {other['why']}")
    return f"  {model} int8 onnxruntime: placement {chosen['placement']}, {'; '.join(parts) or chosen['why']}"


def _ms(a: float, b: float) -> str:
    digits = 1 if min(a, b) >= 10 else 2
    return f"{a:.{digits}f} vs {b:.{digits}f}"
