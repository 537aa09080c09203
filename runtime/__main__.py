"""``python -m runtime``: live segmentation from a built engine. Exit codes: 0 done, 1 failure, 2 usage."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from .types import RuntimeFault


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime", description="Segment a camera, stream or file live.")
    p.add_argument("--engine", required=True, help="engine file, MODEL[:PRECISION] to pick the best built one, or "
                   "triton://HOST:PORT/MODEL to infer on a Triton Inference Server (gRPC port, default 8001)")
    p.add_argument("--source", required=True,
                   help="0, /dev/video0, v4l2:///dev/video0, csi://0, rtsp://..., http(s)://..., a video or "
                        "image file, a folder or glob of images, synthetic://")
    p.add_argument("--output", action="append", default=[],
                   help="display://, out.mp4, frames/, results.jsonl, http://127.0.0.1:8080 (repeatable)")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt", "openvino"],
                   help="with --engine MODEL: force a backend (openvino: only when asked, or when it is all that is built)")
    p.add_argument("--build-dir", default="build", help="where --engine MODEL looks (default: build)")
    p.add_argument("--view", choices=["overlay", "mask", "side-by-side"], default="overlay")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity, 0-1 (default 0.5)")
    p.add_argument("--no-legend", dest="legend", action="store_false", help="do not draw the class legend")
    p.add_argument("--no-stats-overlay", dest="stats_overlay", action="store_false", help="do not draw FPS/latency")
    p.add_argument("--threads", type=int, help="ONNX Runtime and OpenVINO engines: threads (default: as built; on a "
                   "small CPU, cores minus one leaves a core to capture and drawing)")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--stats", help="write per-frame statistics as JSON lines (and the summary last)")
    p.add_argument("--width", type=int, help="camera capture width")
    p.add_argument("--height", type=int, help="camera capture height")
    p.add_argument("--fps", type=float, help="camera capture rate")
    p.add_argument("--reconnect-timeout", type=float, default=30.0,
                   help="give up on a lost camera, stream or Triton server after this many seconds (default 30)")
    p.add_argument("--tile", metavar="HxW",
                   help="sliding-window mode: keep each frame at its own size and cover it with HxW tiles (a size "
                        "the engine takes: within its input.min/max, a multiple of its size divisor), averaging "
                        "logits where tiles overlap; needs an engine built with embed_pre_post: false")
    p.add_argument("--stride", metavar="HxW", help="with --tile: the step between tiles (default: the tile, no "
                   "overlap; smaller than the tile makes them overlap)")
    return p


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f"--alpha: {args.alpha} is not between 0 and 1")
    if args.max_frames is not None and args.max_frames < 1:
        p.error("--max-frames: must be at least 1")
    from engines.tiling import Tiling

    try:
        tiling = Tiling.from_flags(args.tile, args.stride)
    except ValueError as exc:
        p.error(str(exc))
    from .engine import SegmentationEngine, resolve_engine
    from .outputs import open_output
    from .pipeline import RunOptions, run
    from .sources import open_source

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    source, outputs = None, []
    try:
        path, why = resolve_engine(args.engine, Path(args.build_dir), args.backend)
        log(f"engine: {why}")
        engine = SegmentationEngine(path, args.threads, tiling, args.reconnect_timeout)
        if tiling is not None:
            log(f"tiled: {tiling.describe()}, each frame at its own size")
        source = open_source(args.source, width=args.width, height=args.height, fps=args.fps,
                             reconnect_timeout=args.reconnect_timeout, log=log)
        info = source.open()
        for uri in args.output:
            out = open_output(uri)
            out.open(info, engine.legend)
            outputs.append(out)
        options = RunOptions(args.view, args.alpha, args.legend, args.stats_overlay, args.max_frames,
                             Path(args.stats) if args.stats else None)
        with engine:
            summary = run(source, info, engine, outputs, options, stop, log)
    except RuntimeFault as exc:
        log(f"error: {exc}")
        return 1
    finally:
        for out in outputs:
            out.close()  # finalizes files so they play, also after Ctrl-C or a fault
        if source is not None:
            source.close()
    if args.stats:
        with open(args.stats, "a") as f:
            f.write(json.dumps({"summary": summary}) + "\n")
    p50 = summary["latency"]["end_to_end"]["p50_ms"]
    served = summary.get("engine")
    log(f"done: {summary['frames']} frames in {summary['seconds']:.1f} s ({summary['fps']:.1f} FPS), end-to-end p50 "
        f"{p50:.1f} ms, dropped {summary['dropped'] or 0}"
        + (f"; server: {served['requests']} requests, {served['outages']} outages, {served['resent']} frames sent "
           "again" if served else ""))
    if "error" in summary:
        log(f"error: {summary['error']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
