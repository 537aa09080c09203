"""Runtime end-to-end throughput against the engine's raw throughput, on the same engine and frames.

    python benchmarks/runtime_throughput.py [--engine bisenetv2:int8] [--frames 300] [--size 256x512]

Raw: ``runner.infer`` on frames already preprocessed, back to back (nothing else running). Runtime: a video
file of the same frames through ``python -m runtime``'s pipeline (decode, resize, normalize, infer, argmax,
render, encode to a video file), measured in the same process run after the raw pass. Prints both and
their ratio. Needs `make build` first. Not a test: speeds go here, not in assertions.
"""
from __future__ import annotations

import argparse
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
        with SegmentationEngine(path) as engine:
            feeds = [engine.preprocess(f) for f in frames]
            for feed in feeds[:5]:
                engine.runner.infer(feed)
            t = time.perf_counter()
            for feed in feeds:
                engine.runner.infer(feed)
            raw_fps = len(feeds) / (time.perf_counter() - t)

            src = open_source(str(video))
            info = src.open()
            outputs = [open_output(str(Path(tmp) / "out.mp4"))] if args.output == "video" else []
            for out in outputs:
                out.open(info, engine.legend)
            summary = run(src, info, engine, outputs, RunOptions(report_every=1e9), threading.Event())
            for out in outputs:
                out.close()
            src.close()
    print(f"engine: {why} ({path}); {args.frames} frames of {h}x{w}; output: {args.output}")
    print("| measurement | FPS |")
    print("|---|---|")
    print(f"| engine raw (`runner.infer` on preprocessed frames) | {raw_fps:.1f} |")
    print(f"| runtime end to end (file in, video out) | {summary['fps']:.1f} |")
    print(f"| ratio | {summary['fps'] / raw_fps:.3f} |")


if __name__ == "__main__":
    main()
