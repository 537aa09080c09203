"""N concurrent runtime clients against one Triton server, with dynamic batching on and off, and the same
clients on local engines: aggregate FPS and end-to-end latency, printed as ratios.

    python benchmarks/triton_load.py [--engine bisenetv2:fp32] [--clients 4] [--frames 60] [--size 256x512]

Each client is a real ``python -m runtime`` process reading its own synthetic:// source (bounded frame
count, every frame in order) with ``--stats``: ``--engine triton://127.0.0.1:PORT/MODEL`` against a local
tritonserver (engines/triton.py; the model is the Python-backend one, which runs the same ONNX Runtime
engine, since this Triton build has no ONNX Runtime or TensorRT backend), or ``--engine`` the engine file
itself. Aggregate FPS: all frames / the longest client's run; latencies: every frame's end-to-end time
(capture to output, queueing included) over all clients. Everything binds to and talks to 127.0.0.1.
Needs the engine built (``python -m export build``) and ``make triton``. Not a test: speeds go here, not
in assertions (tests/test_serving.py runs ``run_clients`` to check every frame is answered and correct).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.triton import TritonServer  # noqa: E402


def synthetic(client: int, frames: int, size: tuple[int, int]) -> str:
    h, w = size
    return f"synthetic://?width={w}&height={h}&frames={frames}&seed={client}"


def run_clients(engine: str, clients: int, frames: int, size: tuple[int, int], work: Path,
                extra: list[str] | None = None, timeout: float = 600) -> list[dict]:
    """Start ``clients`` runtime processes at once on ``engine`` and wait for all; per client: its summary,
    its per-frame stats lines and its stderr."""
    work.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(clients):
        stats = work / f"client{i}.jsonl"
        stats.unlink(missing_ok=True)
        command = [sys.executable, "-m", "runtime", "--engine", engine, "--source", synthetic(i, frames, size),
                   "--stats", str(stats), "--no-stats-overlay", *(extra or [])]
        procs.append((stats, subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)))
    results = []
    try:
        for stats, proc in procs:
            _, err = proc.communicate(timeout=timeout)
            lines = [json.loads(line) for line in stats.read_text().splitlines()] if stats.exists() else []
            summary = lines[-1]["summary"] if lines and "summary" in lines[-1] else None
            results.append({"returncode": proc.returncode, "stderr": err, "summary": summary,
                            "frames": [line for line in lines if "frame" in line]})
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def aggregate(results: list[dict]) -> dict:
    bad = [r for r in results if r["returncode"] != 0 or r["summary"] is None]
    if bad:
        raise SystemExit(f"a client failed:\n{bad[0]['stderr'][-2000:]}")
    latencies = np.asarray([f["end_to_end_ms"] for r in results for f in r["frames"]])
    frames = sum(r["summary"]["frames"] for r in results)
    seconds = max(r["summary"]["seconds"] for r in results)
    return {"frames": frames, "fps": frames / seconds, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="bisenetv2:fp32", help="MODEL:PRECISION among the ONNX Runtime engines built")
    p.add_argument("--build-dir", default="build")
    p.add_argument("--config", default="pipeline.yaml", help="for the repository's scheduling (triton, batch)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--frames", type=int, default=60, help="frames per client")
    p.add_argument("--size", default="256x512", help="HxW of the synthetic frames")
    args = p.parse_args()
    from export.config import load_pipeline
    from export.serve.triton import model_name, write_repository
    from runtime.engine import resolve_engine

    size = tuple(map(int, args.size.split("x")))
    path, _ = resolve_engine(args.engine, Path(args.build_dir), "onnxruntime")
    model, precision = args.engine.partition(":")[0], path.name.split(".")[0]
    served = model_name(model, precision, "python")
    pipeline = load_pipeline(args.config)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for batching in (True, False):
            variant = dataclasses.replace(pipeline, triton=dataclasses.replace(pipeline.triton, dynamic_batching=batching))
            repo = tmp / f"repo_{batching}"
            write_repository(variant, repo, [model], args.build_dir)
            with TritonServer(repo, models=[served]) as server:
                engine = f"triton://{server.grpc_address}/{served}"
                run_clients(engine, 1, 4, size, tmp / "warmup")
                rows[f"Triton, dynamic batching {'on' if batching else 'off'}"] = aggregate(
                    run_clients(engine, args.clients, args.frames, size, tmp / f"triton_{batching}"))
        rows["local engines, one per client"] = aggregate(run_clients(str(path), args.clients, args.frames, size,
                                                                      tmp / "local"))
    base = rows["local engines, one per client"]
    print(f"{args.clients} clients x {args.frames} frames of {size[0]}x{size[1]}, {served} (max_batch_size "
          f"{pipeline.batch.max}, preferred {pipeline.triton.preferred_batch_size}, queue delay "
          f"{pipeline.triton.max_queue_delay_us} us)")
    print("| setup | aggregate FPS | p50 ms | p99 ms | FPS vs local | p50 vs local |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['fps']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | x{r['fps'] / base['fps']:.2f} | "
              f"x{r['p50_ms'] / base['p50_ms']:.2f} |")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)")
