"""Runtime end-to-end throughput against the engine's raw throughput, on the same engine and frames.

    python benchmarks/runtime_throughput.py [--engine bisenetv2:int8] [--frames 300] [--size 256x512]

Raw: ``runner.infer`` on frames already preprocessed, back to back (nothing else running). Runtime: a video
file of the same frames through ``python -m runtime``'s pipeline (decode, resize, normalize, infer, argmax,
render, encode to a video file), measured in the same process right after the raw pass. Both are measured
with the engine on every core and on every core but one (a core left to the host), and the ratios printed.
Needs `make build` first. Not a test: speeds go here, not in assertions.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.engine import SegmentationEngine, resolve_engine  # noqa: E402
from runtime.outputs import open_output  # noqa: E402
from runtime.pipeline import RunOptions, run  # noqa: E402
from runtime.sources import open_source  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="bisenetv2:int8")
    p.add_argument("--build-dir", default="build")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--size", default="256x512", help="HxW of the video frames")
    p.add_argument("--output", default="video", choices=["video", "none"], help="encode a video file, or nothing")
    p.add_argument("--threads", default=f"0,{max(1, (os.cpu_count() or 2) - 1)}",
                   help="comma-separated engine thread counts to compare (0: every core)")
    args = p.parse_args()
    h, w = map(int, args.size.split("x"))
    path, why = resolve_engine(args.engine, Path(args.build_dir))
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "in.avi"
        source = open_source(f"synthetic://?width={w}&height={h}&frames={args.frames}&seed=0")
        source.open()
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (w, h))
        frames = []
        while (frame := source.read()) is not None:
            writer.write(frame.image)
            frames.append(frame.image)
        writer.release()
        source.close()
        rows = [measure(path, int(t), frames, video, Path(tmp), args.output) for t in args.threads.split(",")]
    print(f"engine: {why} ({path}); {args.frames} frames of {h}x{w}; output: {args.output}")
    print(f"machine: {os.cpu_count()} cores")
    print("| engine threads | engine raw FPS | runtime end-to-end FPS | ratio |")
    print("|---|---|---|---|")
    for threads, raw, end_to_end in rows:
        print(f"| {threads or 'all'} | {raw:.1f} | {end_to_end:.1f} | {end_to_end / raw:.3f} |")


def measure(path: Path, threads: int, frames: list, video: Path, tmp: Path, output: str) -> tuple[int, float, float]:
    """(threads, raw FPS, runtime FPS) for one engine configuration, measured back to back."""
    with SegmentationEngine(path, threads) as engine:
        feeds = [engine.preprocess(f) for f in frames]
        for feed in feeds[:5]:
            engine.runner.infer(feed)
        t = time.perf_counter()
        for feed in feeds:
            engine.runner.infer(feed)
        raw_fps = len(feeds) / (time.perf_counter() - t)
        src = open_source(str(video))
        info = src.open()
        outputs = [open_output(str(tmp / "out.mp4"))] if output == "video" else []
        for out in outputs:
            out.open(info, engine.legend)
        summary = run(src, info, engine, outputs, RunOptions(report_every=1e9), threading.Event())
        for out in outputs:
            out.close()
        src.close()
    return threads, raw_fps, summary["fps"]

if __name__ == "__main__":
    main()
