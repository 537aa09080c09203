"""Capture, inference and output run concurrently, joined by small bounded queues.

- Live sources (cameras, streams) are latency-first: capture keeps only the newest frame, so inference
  always takes the freshest one; frames replaced before inference took them are counted as dropped
  ('stale').
- Files and folders are throughput-first: every frame, in order, none dropped; capture blocks when
  inference is behind.
- The inference thread does nothing but submit and collect: preprocessing runs on the capture thread and
  postprocessing (argmax, unless the engine has it inside) on the output thread, so the engine never waits
  for decode or drawing. It submits frame n+1 before collecting frame n (a Triton server's runner keeps up to
  four in flight), so backends that can overlap copies with compute (TensorRT's two buffer sets) never wait
  for the host either.
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engines.base import EngineError

from .engine import SegmentationEngine
from .render import render
from .types import Frame, Output, Result, RuntimeFault, Source, SourceInfo

STAGES = ("capture", "pre", "infer", "post", "output")
_END = object()


@dataclass
class RunOptions:
    view: str = "overlay"
    alpha: float = 0.5
    show_legend: bool = True
    show_stats: bool = True
    max_frames: int | None = None
    stats_path: Path | None = None
    report_every: float = 5.0


class Stats:
    """Per-stage latency, end-to-end latency, FPS and dropped frames."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {s: [] for s in STAGES + ("end_to_end",)}
        self.dropped: Counter[str] = Counter()
        self.frames = 0
        self.start = time.monotonic()
        self.recent: deque[float] = deque(maxlen=30)  # completion times, for the live FPS

    def record(self, result: Result, end_to_end: float) -> None:
        self.frames += 1
        for stage in STAGES:
            self.times[stage].append(result.timings.get(stage, 0.0))
        self.times["end_to_end"].append(end_to_end)
        self.recent.append(time.monotonic())

    def fps(self) -> float:
        if len(self.recent) < 2:
            return 0.0
        return (len(self.recent) - 1) / max(self.recent[-1] - self.recent[0], 1e-9)

    def percentiles(self, window: int | None = None) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in self.times.items():
            v = np.asarray(values[-window:] if window else values) * 1000
            out[stage] = {"p50_ms": float(np.percentile(v, 50)) if v.size else 0.0,
                          "p95_ms": float(np.percentile(v, 95)) if v.size else 0.0}
        return out

    def line(self) -> str:
        p = self.percentiles(window=100)
        stages = " ".join(f"{s} {p[s]['p50_ms']:.1f}" for s in STAGES)
        dropped = sum(self.dropped.values())
        return (f"{self.frames} frames, {self.fps():.1f} FPS, end-to-end p50 {p['end_to_end']['p50_ms']:.1f} ms "
                f"p95 {p['end_to_end']['p95_ms']:.1f} ms; stage p50 ms: {stages}; dropped {dropped}")

    def summary(self) -> dict:
        elapsed = time.monotonic() - self.start
        return {"frames": self.frames, "seconds": round(elapsed, 3), "fps": self.frames / elapsed if elapsed else 0.0,
                "latency": self.percentiles(), "dropped": dict(self.dropped)}


class _Latest:
    """A one-slot mailbox: put replaces what was not taken yet (and says so)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.item: object | None = None

    def put(self, item: object) -> bool:
        with self.cond:
            replaced = self.item is not None and self.item is not _END
            if self.item is not _END:
                self.item = item
            self.cond.notify()
            return replaced

    def get(self, stop: threading.Event) -> object:
        with self.cond:
            while self.item is None:
                if stop.is_set():
                    return _END
                self.cond.wait(0.1)
            item, self.item = self.item, (None if self.item is not _END else _END)
            return item


def run(source: Source, info: SourceInfo, engine: SegmentationEngine, outputs: list[Output], options: RunOptions,
        stop: threading.Event, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Run until the source ends, ``max_frames`` are done or ``stop`` is set; returns the summary."""
    return _Run(source, info, engine, outputs, options, stop, log).run()


class _Run:
    """One run: three threads (capture, infer, output) joined by two bounded queues, and the main thread
    waiting on them. A thread's exception stops the others and is reported after everything is closed."""

    def __init__(self, source: Source, info: SourceInfo, engine: SegmentationEngine, outputs: list[Output],
                 options: RunOptions, stop: threading.Event, log: Callable[[str], None]) -> None:
        self.source, self.engine, self.outputs, self.options, self.stop, self.log = (
            source, engine, outputs, options, stop, log)
        self.stats = Stats()
        self.errors: list[BaseException] = []
        self.frames_in: _Latest | queue.Queue = _Latest() if info.live else queue.Queue(maxsize=4)
        self.results: queue.Queue = queue.Queue(maxsize=4)
        self.output_done = threading.Event()
        self.stats_file = None

    def run(self) -> dict:
        threads = [threading.Thread(target=self._guarded(f), name=f.__name__, daemon=True)
                   for f in (self.capture, self.infer, self.output)]
        self.stats_file = open(self.options.stats_path, "w") if self.options.stats_path else None
        try:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.2)  # short joins keep the main thread free for Ctrl-C / SIGTERM handlers
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=10)
            if self.stats_file:
                self.stats_file.close()
        if self.source.counters.get("corrupt"):
            self.stats.dropped["corrupt"] += self.source.counters["corrupt"]
        summary = {**self.stats.summary(), "source": dict(self.source.counters)}
        if hasattr(self.engine.runner, "counters"):  # a served engine: requests, outages, frames sent again
            summary["engine"] = dict(self.engine.runner.counters)
        fatal = [e for e in self.errors if not isinstance(e, RuntimeFault)]
        if fatal:
            raise fatal[0]
        if self.errors:
            summary["error"] = str(self.errors[0])
        return summary

    def _guarded(self, fn: Callable[[], None]) -> Callable[[], None]:
        def wrapper() -> None:
            try:
                fn()
            except BaseException as exc:  # reported by the main thread, after everything is closed
                self.errors.append(exc)
                self.stop.set()
        return wrapper

    def _put(self, q: queue.Queue, item: object, always: bool = False) -> None:
        """Blocking put that gives up once ``stop`` is set; with ``always`` (results, which the output thread
        drains to the end) only once the output thread is gone."""
        while True:
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                if (self.stop.is_set() and not always) or self.output_done.is_set():
                    return

    # Capture thread: read, preprocess, hand over (live: replace the untaken frame) ----------------------
    def capture(self) -> None:
        latest = self.frames_in if isinstance(self.frames_in, _Latest) else None
        try:
            while not self.stop.is_set():
                frame = self.source.read()
                if frame is None:
                    break
                t0 = time.perf_counter()
                item = (frame, self.engine.preprocess(frame.image), {"capture": frame.capture_seconds,
                                                                     "pre": time.perf_counter() - t0})
                if latest is None:
                    self._put(self.frames_in, item)
                elif latest.put(item):
                    self.stats.dropped["stale"] += 1
        finally:
            if latest is None:
                self._put(self.frames_in, _END)
            elif latest.put(_END):  # the end marker took the place of a frame inference had not taken
                self.stats.dropped["stale"] += 1

    # Inference thread: submit frame n+1, then collect frame n -----------------------------------------
    def _next_frame(self) -> tuple[Frame, dict, dict] | None:
        if isinstance(self.frames_in, _Latest):
            item = self.frames_in.get(self.stop)
        else:
            item = _END
            while not self.stop.is_set() or not self.frames_in.empty():
                try:
                    item = self.frames_in.get(timeout=0.1)
                    break
                except queue.Empty:
                    continue
        return None if item is _END else item

    def _finish(self, pending: deque) -> None:
        frame, ticket, timings = pending.popleft()
        t0 = time.perf_counter()
        raw = self.engine.runner.collect(ticket)
        # Time spent in submit plus in collect: a synchronous backend does all its work in submit, an
        # asynchronous one mostly waits in collect; neither counts the other frame's work in between.
        timings["infer"] += time.perf_counter() - t0
        self._put(self.results, (frame, raw, timings), always=True)

    def infer(self) -> None:
        pending: deque = deque()
        done, limit = 0, self.options.max_frames
        # Frames in flight: 2 lets TensorRT overlap copies with compute; a server's runner asks for more.
        depth = getattr(self.engine.runner, "depth", 2)
        try:
            while limit is None or done < limit:
                item = self._next_frame()
                if item is None:
                    break
                frame, feed, timings = item
                t0 = time.perf_counter()
                ticket = self.engine.runner.submit(feed)
                timings["infer"] = time.perf_counter() - t0
                pending.append((frame, ticket, timings))
                done += 1
                if len(pending) == depth:
                    self._finish(pending)
            while pending:
                self._finish(pending)
        except EngineError as exc:  # a remote engine gone for good: one line, like a lost camera
            self.stats.dropped["engine_lost"] += len(pending)
            raise RuntimeFault(str(exc)) from None
        finally:
            if limit is not None and done >= limit:
                self.stop.set()  # enough frames: let capture end too
            self._put(self.results, _END, always=True)  # the output thread reads until it sees this

    # Output thread: postprocess, draw, write, record ----------------------------------------------------
    def output(self) -> None:
        last_report = time.monotonic()
        try:
            while (got := self.results.get()) is not _END:
                self._write(*got)
                if time.monotonic() - last_report >= self.options.report_every:
                    self.log(self.stats.line())
                    last_report = time.monotonic()
        finally:
            self.output_done.set()

    def _write(self, frame: Frame, raw: object, timings: dict) -> None:
        options, engine = self.options, self.engine
        t0 = time.perf_counter()
        item = Result(frame, engine.postprocess(raw), timings)
        timings["post"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        text = f"{self.stats.fps():.1f} FPS  {1000 * sum(timings.values()):.0f} ms" if options.show_stats else None
        image = render(frame.image, item.classes, engine.legend, options.view, options.alpha, options.show_legend, text)
        for out in self.outputs:
            out.write(item, image)
        timings["output"] = time.perf_counter() - t0
        end_to_end = time.monotonic() - frame.timestamp
        self.stats.record(item, end_to_end)
        if self.stats_file:
            hist = np.bincount(item.classes.ravel(), minlength=len(engine.legend.names)) / item.classes.size
            self.stats_file.write(json.dumps({
                "frame": frame.index, "end_to_end_ms": round(end_to_end * 1000, 3),
                "stages_ms": {k: round(v * 1000, 3) for k, v in timings.items()},
                "classes": {engine.legend.names[i]: round(float(f), 5) for i, f in enumerate(hist) if f > 0},
            }) + "\n")
