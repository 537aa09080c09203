"""Where the engines stand among what a user would otherwise run on the CPU: PyTorch eager, torch.compile,
OpenVINO on the same exported graphs, and every engine this project built, side by side in one run.

    python benchmarks/peers.py [--config pipeline.yaml] [--build-dir DIR] [--models a,b] [--threads 2]
                               [--iterations 20] [--warmup 3] [--peers eager,inductor,openvino,ours]
                               [--markdown FILE] [--json FILE]

For each model of the pipeline (built first if its build folder has nothing for it), every contender gets the
same input (one check image, batch 1) and the same thread count:

- PyTorch eager (``torch.no_grad``), with the pipeline's weights;
- ``torch.compile`` (inductor, default mode); its compile time (the first call) is reported apart, and a model
  it cannot compile is a failed row with the first line of the error;
- OpenVINO (CPU device, ``INFERENCE_NUM_THREADS``, one stream, latency hint, f32 inference precision so that it
  does not turn fp32 into bf16 where the CPU has AMX or AVX-512 BF16) on the precision graphs the build wrote:
  fp32 and each int8 graph (the ONNX Runtime placement and the TensorRT-bound Q/DQ graph; identical files are
  run once);
- every engine built, through this project's runners (engines/): the OpenVINO engines (``ours: openvino``, the
  opt-in backend ``make bench`` builds) beside the ONNX Runtime ones; a TensorRT plan where TensorRT is missing,
  an OpenVINO engine where OpenVINO is, and a TensorRT-bound graph (compiled on the device), are listed as not
  run, with the reason.

After ``--warmup`` untimed calls each, ``--iterations`` rounds follow; in each round every contender runs once,
in an order rotated from round to round, so that drift on a shared machine hits all alike. Per contender: the
median and p90 latency, the ratio of eager's median to its median (above 1: faster than eager), its pixel
agreement with eager's class map on the input, its mIoU on the pipeline's labelled set (``accuracy.data``, the
set the build's INT8 budget is held to; eager's is PyTorch's), and whether it is the fastest of its precision
class (fp32, fp16, int8). Not a test: speeds go in this table, not in assertions.

Idle threads wait without spinning in every runtime that lets one say so: the engines' ONNX Runtime sessions
do (engines/onnxruntime.py), and PyTorch's OpenMP threads are told to by ``OMP_WAIT_POLICY=PASSIVE`` (unless
the environment sets it). On a shared machine spinning threads wait at each of the thousands of parallel
regions of a run for a thread the kernel has descheduled: measured here under a load of 6 on 2 cores,
SegFormer-B0 eager took 520-3000 ms with spinning threads, 190-240 ms without (and 236 ms on one thread).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads (docstring)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engines.onnxruntime as ort_engine  # noqa: E402
import engines.openvino as ov_engine  # noqa: E402
from engines import artifacts as layout  # noqa: E402
from engines.base import EngineError  # noqa: E402
from engines.cpu import this_cpu  # noqa: E402
from engines.manifest import embeds_pre_post, read_manifest  # noqa: E402
from export.compile.build import BuildOptions, build  # noqa: E402
from export.compile.plugins import runnable_on_onnxruntime  # noqa: E402
from export.compile.weights import load_model  # noqa: E402
from export.config import ModelConfig, Pipeline, load_pipeline  # noqa: E402
from export.errors import UserError  # noqa: E402
from export.images import preprocess  # noqa: E402
from export.measure.metrics import label_miou  # noqa: E402
from export.measure.samples import sample_inputs  # noqa: E402
from export.measure.scoring import evaluation_set  # noqa: E402

PEERS = ("eager", "inductor", "openvino", "ours")
CLASSES = ("fp32", "fp16", "int8")  # precision classes, in table order


@dataclass
class Contender:
    """One way of computing a model's logits on the benchmark input."""

    name: str  # what runs it, as the table shows it
    precision: str  # its precision class
    graph: str | None = None  # the file it runs (None: the PyTorch model)
    call: Callable[[], np.ndarray] | None = None  # one inference on the fixed input; the output class map or logits
    infer: Callable[[np.ndarray], np.ndarray] | None = None  # the same on any normalized (1, 3, H, W) image
    close: Callable[[], None] = lambda: None
    setup_s: float | None = None  # load or compile time
    status: str = "ok"  # ok | failed | not run
    reason: str | None = None
    times_ms: list[float] = field(default_factory=list)
    output: np.ndarray | None = None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def class_map(output: np.ndarray) -> np.ndarray:
    """Logits (N, C, H, W) to classes (N, H, W); a class map (an engine with the argmax inside) as it is."""
    return output.argmax(1) if output.ndim == 4 else output


# Contenders -------------------------------------------------------------------------------------------------
def eager(model: torch.nn.Module, x: torch.Tensor) -> Contender:
    def infer(image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(image)).numpy()

    return Contender("PyTorch eager", "fp32", call=lambda: infer(x.numpy()), infer=infer)


def inductor(model: torch.nn.Module, x: torch.Tensor) -> Contender:
    """torch.compile with inductor; the first call compiles and is timed as set-up."""
    compiled = torch.compile(model, backend="inductor")
    contender = Contender("torch.compile (inductor)", "fp32")
    start = time.perf_counter()
    try:
        with torch.no_grad():
            compiled(x)
    except Exception as exc:  # Dynamo and inductor raise many types, from tracing to C++ compilation
        torch._dynamo.reset()
        return Contender(contender.name, "fp32", status="failed", reason=first_line(exc),
                         setup_s=time.perf_counter() - start)
    contender.setup_s = time.perf_counter() - start

    def infer(image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return compiled(torch.from_numpy(image)).numpy()

    contender.call, contender.infer = (lambda: infer(x.numpy())), infer
    return contender


def openvino(graph: Path, precision: str, threads: int, feed: dict[str, np.ndarray], tmp: Path) -> Contender:
    """OpenVINO's CPU plugin on one of the build's ONNX graphs (TensorRT plugin nodes as their decomposition)."""
    name = f"OpenVINO {openvino_version()}"
    start = time.perf_counter()
    try:
        model = onnx.load(str(graph))
        runnable = runnable_on_onnxruntime(model)
        path = graph
        if runnable is not model:
            path = tmp / f"{graph.parent.name}_{graph.name}"
            onnx.save(runnable, str(path))
        # The process's one Core (engines/openvino.py says why) and the engines' own settings.
        compiled = ov_engine.core().compile_model(str(path), "CPU", ov_engine.compile_config(threads))
        request = compiled.create_infer_request()
    except Exception as exc:  # OpenVINO's frontend and plugin raise RuntimeError with C++ text
        return Contender(name, precision, str(graph), status="failed", reason=first_line(exc))
    output = compiled.output(0)

    def infer(image: np.ndarray) -> np.ndarray:
        return request.infer({"images": image})[output]

    return Contender(name, precision, str(graph), call=lambda: request.infer(feed)[output], infer=infer,
                     setup_s=time.perf_counter() - start)


def ours(path: Path, threads: int, feed: dict[str, np.ndarray]) -> Contender:
    """A built artifact through its own runner; where it cannot run here, a row saying why."""
    manifest = read_manifest(path)
    precision, backend = manifest["precision"], manifest["backend"]
    name = f"ours: {backend}"
    if manifest.get("kind") == "graph":
        return Contender(f"ours: {backend} (graph)", precision, str(path), status="not run",
                         reason="TensorRT-bound graph, compiled into an engine on the device")
    start = time.perf_counter()
    if backend == "tensorrt":
        from engines import tensorrt as trt_engine  # lazy: imports TensorRT only where it is installed

        reason = trt_engine.unavailable_reason()
        if reason:
            return Contender(name, precision, str(path), status="not run", reason=reason)
    if backend == "openvino" and ov_engine.unavailable_reason():
        return Contender(name, precision, str(path), status="not run", reason=ov_engine.unavailable_reason())
    try:
        if backend == "tensorrt":
            runner = trt_engine.TensorRTRunner.from_engine(path)
        elif backend == "openvino":
            runner = ov_engine.OpenVINORunner.from_engine(path, threads)
        else:
            runner = ort_engine.OnnxRuntimeRunner.from_engine(path, threads)
        runner.activate()
    except EngineError as exc:  # a stale or corrupt engine: its message says how to rebuild it
        return Contender(name, precision, str(path), status="failed", reason=str(exc).splitlines()[0])

    def call():
        return next(iter(runner.infer(feed).values()))

    def infer(image: np.ndarray) -> np.ndarray:  # engines that take normalized images (not uint8 frames)
        return next(iter(runner.infer({"images": image}).values()))

    return Contender(name, precision, str(path), call=call, close=runner.deactivate,
                     infer=None if embeds_pre_post(manifest) else infer,
                     setup_s=time.perf_counter() - start)


def openvino_graphs(out: Path, name: str) -> list[tuple[Path, str]]:
    """The build's fp32 and int8 graphs of ``name`` (each target's), identical files once."""
    seen, graphs = set(), []
    for precision in ("fp32", "int8"):
        for target in layout.TARGETS:
            path = layout.precision_graph(out, name, target, precision)
            if not path.exists():
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                graphs.append((path, precision))
    return graphs


def openvino_version() -> str | None:
    return ov_engine.version()  # 2026.4.1, without the build tag


# Measuring ------------------------------------------------------------------------------------------------
def run_rounds(contenders: list[Contender], warmup: int, iterations: int) -> None:
    """Warm-up calls, then ``iterations`` rounds in which each contender runs once, in a rotated order."""
    live = [c for c in contenders if c.call is not None]
    if not live:
        return
    for c in live:
        for _ in range(warmup):
            c.output = c.call()
    for r in range(iterations):
        for c in live[r % len(live):] + live[:r % len(live)]:
            t = time.perf_counter()
            c.call()
            c.times_ms.append((time.perf_counter() - t) * 1000)
    if iterations == 0 or warmup == 0:
        for c in live:
            c.output = c.call()


def score(pipeline: Pipeline, cfg: ModelConfig, contenders: list[Contender]) -> dict[int, float]:
    """Each contender's mIoU on the pipeline's labelled set (accuracy.data, what the build's INT8 budget is held
    to), by ``id``; nothing without accuracy.data. A peer that runs an INT8 graph faster but computes it
    differently shows it here."""
    if not pipeline.accuracy.data:
        return {}
    frames, labels = evaluation_set(pipeline, cfg)  # (H, W, 3) uint8 RGB, as the build's scorer reads them
    images = [preprocess(f, tuple(cfg.input.size), cfg.mean, cfg.std) for f in frames]
    return {id(c): label_miou((class_map(c.infer(x))[0] for x in images), labels, cfg.num_classes)
            for c in contenders if c.infer is not None and c.status == "ok"}


def rows_for(cfg: ModelConfig, contenders: list[Contender], threads: int,
             miou: dict[int, float] | None = None) -> list[dict]:
    """The model's table rows: latency, ratio to eager, agreement with eager, fastest of each precision class."""
    reference = next((c for c in contenders if c.name == "PyTorch eager" and c.times_ms), None)
    rows = []
    for c in contenders:
        row = {"model": cfg.name, "size": list(cfg.input.size), "threads": threads, "contender": c.name,
               "precision": c.precision, "graph": c.graph, "status": c.status, "reason": c.reason,
               "setup_s": None if c.setup_s is None else round(c.setup_s, 3), "median_ms": None, "p90_ms": None,
               "vs_eager": None, "agreement": None, "miou": (miou or {}).get(id(c)), "fastest": False,
               "latencies_ms": [round(t, 3) for t in c.times_ms]}
        if c.times_ms:
            row["median_ms"] = float(np.median(c.times_ms))
            row["p90_ms"] = float(np.percentile(c.times_ms, 90))
            if reference is not None:
                row["vs_eager"] = float(np.median(reference.times_ms)) / row["median_ms"]
                row["agreement"] = float((class_map(c.output) == class_map(reference.output)).mean())
        rows.append(row)
    for precision in CLASSES:
        timed = [r for r in rows if r["precision"] == precision and r["median_ms"] is not None]
        if timed:
            min(timed, key=lambda r: r["median_ms"])["fastest"] = True
    return rows


def benchmark_model(pipeline: Pipeline, cfg: ModelConfig, out: Path, args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Every contender of one model on one check image, measured in interleaved rounds; its table rows."""
    model, _ = load_model(cfg, pipeline)
    samples = sample_inputs(pipeline, cfg, 1)
    x = torch.from_numpy(samples.tensors[0])
    peers = args.peers
    contenders = [eager(model, x)] if "eager" in peers else []
    if "inductor" in peers:
        contenders.append(inductor(model, x))
    if "openvino" in peers:
        for graph, precision in openvino_graphs(out, cfg.name):
            contenders.append(openvino(graph, precision, args.threads, {"images": samples.tensors[0]}, tmp)
                              if openvino_version() else
                              Contender("OpenVINO", precision, str(graph), status="not run",
                                        reason=f"openvino is not installed: {ov_engine.INSTALL}"))
    if "ours" in peers:
        for path in layout.built(out, cfg.name):
            contenders.append(ours(path, args.threads, samples.feeds(embeds_pre_post(read_manifest(path)))[0]))
    try:
        run_rounds(contenders, args.warmup, args.iterations)
        miou = score(pipeline, cfg, contenders)
    finally:
        for c in contenders:
            c.close()
    torch._dynamo.reset()  # frees inductor's compiled graphs before the next model
    return rows_for(cfg, contenders, args.threads, miou)


# Reports ----------------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = this_cpu()
    return {"cpu": cpu["model"], "cores": os.cpu_count(), "int8_kernels": cpu["int8_kernels"],
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort_engine.VERSION,
            "openvino": openvino_version(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def render_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({m['int8_kernels']} INT8 kernels); "
             f"{result['threads']} threads for every contender; batch 1; {result['iterations']} interleaved rounds "
             f"after {result['warmup']} warm-up calls. torch {m['torch']}, ONNX Runtime {m['onnxruntime']}, "
             f"OpenVINO {m['openvino'] or 'not installed'}; OMP_WAIT_POLICY={m['omp_wait_policy']}. **Bold**: fastest of its precision class.", "",
             "| model | contender | precision | median ms | p90 ms | vs eager | set-up s | agreement | mIoU | graph / note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        name = f"**{r['contender']}**" if r["fastest"] else r["contender"]
        median = f"**{_ms(r['median_ms'])}**" if r["fastest"] else _ms(r["median_ms"])
        ratio = "" if r["vs_eager"] is None else f"{r['vs_eager']:.2f}x"
        agreement = "" if r["agreement"] is None else f"{r['agreement']:.4f}"
        miou = "" if r.get("miou") is None else f"{r['miou']:.2f}"
        setup = "" if r["setup_s"] is None else f"{r['setup_s']:.1f}"
        note = r["reason"] if r["status"] != "ok" else (Path(r["graph"]).relative_to(result["build_dir"]).as_posix()
                                                        if r["graph"] else "")
        if r["status"] != "ok":
            note = f"{r['status']}: {note}"
        size = "x".join(map(str, r["size"]))
        lines.append(f"| {r['model']} {size} | {name} | {r['precision']} | {median} | {_ms(r['p90_ms'])} | {ratio} | "
                     f"{setup} | {agreement} | {miou} | {note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def missing_models(out: Path, names: list[str]) -> list[str]:
    """The models with no ONNX Runtime engine in ``out``."""
    return [n for n in names if not any(p.name.endswith(layout.ENGINE_SUFFIX["onnxruntime"])
                                        for p in layout.built(out, n))]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="pipeline.yaml")
    p.add_argument("--build-dir", help="where the engines are (default: the pipeline's out_dir); built if missing")
    p.add_argument("--models", help="comma-separated subset of the pipeline's models")
    p.add_argument("--threads", type=int, default=2, help="threads for every contender (default: 2)")
    p.add_argument("--iterations", type=int, default=20, help="timed rounds (default: 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per contender first (default: 3)")
    p.add_argument("--peers", default=",".join(PEERS), help=f"which contenders (default: {','.join(PEERS)})")
    p.add_argument("--markdown", help="write the table here as well")
    p.add_argument("--json", help="write every row, latencies included, here")
    args = p.parse_args(argv)
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        p.error(f"--peers: unknown {', '.join(unknown)}; known: {', '.join(PEERS)}")
    try:
        pipeline = load_pipeline(args.config)
        out = Path(args.build_dir) if args.build_dir else pipeline.resolve(pipeline.out_dir)
        known = [m.name for m in pipeline.models]
        names = [s.strip() for s in args.models.split(",")] if args.models else known
        if set(names) - set(known):
            raise UserError(f"--models: {sorted(set(names) - set(known))} not in {args.config}; it has: {', '.join(known)}")
        missing = missing_models(out, names)
        if missing:
            print(f"no engines for {', '.join(missing)} in {out}: building them first", file=sys.stderr)
            build(pipeline, BuildOptions(models=missing, out_dir=str(out)))
    except UserError as exc:
        sys.exit(f"error: {exc}")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in pipeline.models:
            if cfg.name in names:
                print(f"{cfg.name}: measuring", file=sys.stderr)
                rows.extend(benchmark_model(pipeline, cfg, out, args, Path(tmp)))
    result = {"machine": machine(), "threads": args.threads, "iterations": args.iterations, "warmup": args.warmup,
              "batch": 1, "build_dir": str(out), "rows": rows}
    table = render_markdown(result)
    print(table)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
