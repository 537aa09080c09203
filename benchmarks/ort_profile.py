"""Where an ONNX Runtime engine spends its time: ONNX Runtime's own profiler, aggregated per op type and per node.

    python benchmarks/ort_profile.py build/segformer_b0/onnxruntime/fp32.engine.onnx [--threads 2]
                                     [--iterations 20] [--warmup 3] [--top 15] [--json FILE]

The engine is loaded as the runtime loads it (its manifest's session settings; ``load_optimization_level``
applied on this CPU), on a generated check scene at the manifest's input size, batch 1. ONNX Runtime's profiler
(``SessionOptions.enable_profiling``) records each kernel's run time; the warm-up runs are dropped and the
rest averaged per run. "Share" is of the summed kernel time, which is a little below the wall time of a run
(the executor's own work between kernels is not a kernel). Not a test: speeds go here, not in assertions.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import CHECK_SEED, render_scene  # noqa: E402
from engines.manifest import read_manifest  # noqa: E402
from engines.onnxruntime import session_options  # noqa: E402
from export.images import preprocess  # noqa: E402


def profile(engine: Path, threads: int, warmup: int, iterations: int) -> dict:
    """Per op type and per node: mean kernel milliseconds per run, over ``iterations`` runs after ``warmup``."""
    manifest = read_manifest(engine)
    h, w = manifest["input"]["size"]
    norm = manifest["normalization"]
    x = preprocess(render_scene(CHECK_SEED)[0], (h, w), norm["mean"], norm["std"])
    options = session_options(threads, (manifest.get("session") or {}).get("load_optimization_level", "all"))
    options.enable_profiling = True
    options.profile_file_prefix = str(Path("/tmp") / f"ort_profile_{engine.parent.parent.name}")
    session = ort.InferenceSession(str(engine), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    walls = []
    for i in range(warmup + iterations):
        t = time.perf_counter()
        session.run(None, {name: x})
        if i >= warmup:
            walls.append((time.perf_counter() - t) * 1000)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    start = runs[warmup]["ts"] if len(runs) > warmup else 0
    per_type, per_node, counts = defaultdict(float), defaultdict(float), defaultdict(set)
    node_type = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < start:
            continue
        node, op = e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?")
        per_type[op] += e["dur"] / 1000 / iterations
        per_node[node] += e["dur"] / 1000 / iterations
        counts[op].add(node)
        node_type[node] = op
    total = sum(per_type.values())
    return {
        "engine": str(engine), "model": manifest["model"], "precision": manifest["precision"], "size": [h, w],
        "threads": threads, "iterations": iterations, "wall_median_ms": float(np.median(walls)),
        "kernel_ms_per_run": total,
        "op_types": sorted(({"op": op, "ms": ms, "share": ms / total, "nodes": len(counts[op])}
                            for op, ms in per_type.items()), key=lambda r: -r["ms"]),
        "nodes": sorted(({"node": n, "op": node_type[n], "ms": ms, "share": ms / total} for n, ms in per_node.items()),
                        key=lambda r: -r["ms"]),
    }


def render(result: dict, top: int) -> str:
    lines = [f"{result['model']} {result['precision']} at {result['size'][0]}x{result['size'][1]}, "
             f"{result['threads']} threads, {result['iterations']} runs: wall median {result['wall_median_ms']:.1f} ms, "
             f"kernels {result['kernel_ms_per_run']:.1f} ms per run", "",
             "| op type | nodes | ms per run | share |", "|---|---:|---:|---:|"]
    lines += [f"| {r['op']} | {r['nodes']} | {r['ms']:.2f} | {r['share']:.1%} |" for r in result["op_types"][:top]]
    lines += ["", "| node | op type | ms per run | share |", "|---|---|---:|---:|"]
    lines += [f"| `{r['node']}` | {r['op']} | {r['ms']:.2f} | {r['share']:.1%} |" for r in result["nodes"][:top]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json")
    args = p.parse_args()
    result = profile(args.engine, args.threads, args.warmup, args.iterations)
    print(render(result, args.top))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
