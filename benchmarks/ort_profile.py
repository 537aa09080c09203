"""Where an ONNX Runtime engine spends its time: ONNX Runtime's own profiler, aggregated per op type and per node.

    python benchmarks/ort_profile.py ENGINE [ENGINE ...] [--threads 2] [--iterations 20] [--warmup 3]
                                     [--top 15] [--json FILE]
    e.g. build/segformer_b0/onnxruntime/fp32.engine.onnx

The engine is loaded as the runtime loads it (its manifest's session settings; ``load_optimization_level``
applied on this CPU), on a generated check scene at the manifest's input size, batch 1. ONNX Runtime's profiler
(``SessionOptions.enable_profiling``) records each kernel's run time; the warm-up runs are dropped and the
rest averaged per run. Several engines (a graph before and after a rewrite) run in interleaved rounds, so that
the load of a shared machine weighs on each alike. "Share" is of the summed kernel time, which is a little below the wall time of a run
(the executor's own work between kernels is not a kernel). Not a test: speeds go here, not in assertions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
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


class Profiled:
    """One engine's profiling session on its check input."""

    def __init__(self, engine: Path, threads: int) -> None:
        self.engine, self.threads = engine, threads
        self.manifest = read_manifest(engine)
        h, w = self.manifest["input"]["size"]
        norm = self.manifest["normalization"]
        self.x = preprocess(render_scene(CHECK_SEED)[0], (h, w), norm["mean"], norm["std"])
        options = session_options(threads, (self.manifest.get("session") or {}).get("load_optimization_level", "all"))
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"ort_profile_{os.getpid()}_{id(self)}")
        self.session = ort.InferenceSession(str(engine), options, providers=["CPUExecutionProvider"])
        self.feed = {self.session.get_inputs()[0].name: self.x}
        self.walls: list[float] = []

    def run(self, timed: bool) -> None:
        t = time.perf_counter()
        self.session.run(None, self.feed)
        if timed:
            self.walls.append((time.perf_counter() - t) * 1000)

    def result(self, warmup: int, iterations: int) -> dict:
        """Per op type and per node: mean kernel milliseconds per run, over the runs after ``warmup``."""
        trace = Path(self.session.end_profiling())
        events = json.loads(trace.read_text())
        trace.unlink()
        runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
        start = runs[warmup] if len(runs) > warmup else 0
        per_type, per_node, nodes_of_type, node_type = defaultdict(float), defaultdict(float), defaultdict(set), {}
        for e in events:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < start:
                continue
            node, op = e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?")
            per_type[op] += e["dur"] / 1000 / iterations
            per_node[node] += e["dur"] / 1000 / iterations
            nodes_of_type[op].add(node)
            node_type[node] = op
        total = sum(per_type.values())
        m = self.manifest
        return {
            "engine": str(self.engine), "model": m["model"], "precision": m["precision"], "size": m["input"]["size"],
            "threads": self.threads, "iterations": iterations, "wall_median_ms": float(np.median(self.walls)),
            "kernel_ms_per_run": total,
            "op_types": sorted(({"op": op, "ms": ms, "share": ms / total, "nodes": len(nodes_of_type[op])}
                                for op, ms in per_type.items()), key=lambda r: -r["ms"]),
            "nodes": sorted(({"node": n, "op": node_type[n], "ms": ms, "share": ms / total}
                             for n, ms in per_node.items()), key=lambda r: -r["ms"]),
        }


def profile(engines: list[Path], threads: int, warmup: int, iterations: int) -> list[dict]:
    """Each engine's profile, the engines run in interleaved rounds."""
    sessions = [Profiled(e, threads) for e in engines]
    for i in range(warmup + iterations):
        for s in sessions:
            s.run(timed=i >= warmup)
    return [s.result(warmup, iterations) for s in sessions]


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
    p.add_argument("engines", type=Path, nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json")
    args = p.parse_args()
    results = profile(args.engines, args.threads, args.warmup, args.iterations)
    for result in results:
        print(f"{result['engine']}:\n{render(result, args.top)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
