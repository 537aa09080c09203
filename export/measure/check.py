"""``python -m export check``: built engines beside their PyTorch models on the same images.

Accuracy is agreement with PyTorch (logit error, pixel agreement, mIoU of engine predictions against
PyTorch's). Speed is PyTorch eager against the engine on the same CPU with the same thread count,
measured in one run so that the ratio holds on a noisy machine. Against a labelled dataset (``--data``):
export/measure/evaluate.py, which reuses the artifact discovery and loading here.

With a tiling (``--tile``), each engine gets a second row: the check images at their own size (not resized
to the model's input size) in sliding windows (engines/tiling.py), against PyTorch run through the same
windows, padding and averaging; its speeds are per frame, PyTorch's tiled the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch

from engines import artifacts as layout
from engines.base import EngineError
from engines.manifest import embeds_pre_post, read_manifest, verify_engine_file
from engines.onnxruntime import OnnxRuntimeRunner
from engines.tiling import Tiling, check_tiling, slide, windows

from ..compile.plugins import runnable_on_onnxruntime
from ..compile.weights import load_model
from ..log import log
from .samples import agreement, engine_outputs, sample_inputs
from ..config import Pipeline
from ..errors import UserError
from ..images import preprocess
from .speed import latency_summary, timed_calls


def _latency(fn, inputs: list, warmup: int, iterations: int) -> dict:
    return latency_summary(timed_calls(fn, inputs, warmup, iterations), frames_per_call=1)


def artifacts(out: Path, model: str) -> list[Path]:
    """Every artifact with a manifest for ``model`` (engines/artifacts.py has the layout)."""
    return layout.built(out, model)


def open_artifact(path: Path, threads: int):
    """The artifact's manifest, a runner for it (None where its backend is missing here) and how it is run."""
    try:
        return _open(path, threads)
    except EngineError as exc:
        raise UserError(str(exc)) from None


def _open(path: Path, threads: int):
    manifest = read_manifest(path)
    if manifest.get("kind") == "graph":
        # A TensorRT-bound graph: run by ONNX Runtime here, as the build measured it (INT8 Q/DQ simulated
        # in FP32, as TensorRT's int32 accumulation computes it, not by this CPU's integer kernels).
        # TensorRT plugin nodes run as their decomposition (the plugin's kernel is not run here).
        verify_engine_file(path, manifest)
        model = onnx.load(str(path))
        runnable = runnable_on_onnxruntime(model)
        source = path if runnable is model else runnable.SerializeToString()
        return manifest, OnnxRuntimeRunner(source, threads, simulate_qdq=True), "onnxruntime (TensorRT-bound graph)"
    if manifest["backend"] == "tensorrt":
        from engines import tensorrt as trt_engine

        reason = trt_engine.unavailable_reason()
        if reason:
            return manifest, None, reason
        return manifest, trt_engine.TensorRTRunner.from_engine(path), "tensorrt"
    if manifest["backend"] == "openvino":
        from engines import openvino as ov_engine

        reason = ov_engine.unavailable_reason()
        if reason:
            return manifest, None, reason
        return manifest, ov_engine.OpenVINORunner.from_engine(path, threads), "openvino"
    return manifest, OnnxRuntimeRunner.from_engine(path, threads), "onnxruntime"


def check_tileable(out: Path, names: list[str], tiling: Tiling) -> None:
    """Refuse, before any slow work, a tiling that some built artifact of ``names`` cannot run (engines/tiling.py
    says why: argmax inside, or a tile outside its profile)."""
    for name in names:
        for path in artifacts(out, name):
            try:
                check_tiling(read_manifest(path), tiling, path)
            except EngineError as exc:
                raise UserError(str(exc)) from None


def torch_logits(model: torch.nn.Module):
    """PyTorch as an ``infer`` function for ``engines.tiling.slide``: a normalized tile in, its logits out."""
    return lambda x: model(torch.from_numpy(x)).numpy()


def engine_logits(runner):
    """An active runner (logits out) as an ``infer`` function for ``engines.tiling.slide``."""
    return lambda x: runner.infer({"images": x})["logits"]


def batch_cost(runner, feeds: list[dict], batch: int, batch_1: dict, cfg_check) -> dict:
    """Per-frame cost of ``batch`` frames in one call against one frame per call (``batch_1``, measured in
    the same run): below 1, batching pays."""
    group = [feeds[i % len(feeds)] for i in range(batch)]
    stacked = {k: np.concatenate([f[k] for f in group]) for k in group[0]}
    call = latency_summary(timed_calls(runner.infer, [stacked], cfg_check.warmup, cfg_check.iterations), batch)
    per_frame = call["p50_ms"] / batch
    return {"batch": batch, "call_p50_ms": call["p50_ms"], "per_frame_p50_ms": per_frame,
            "batch_1_p50_ms": batch_1["p50_ms"], "per_frame_vs_batch_1": per_frame / batch_1["p50_ms"],
            "throughput_fps": call["throughput_fps"]}


def check(pipeline: Pipeline, models: list[str] | None = None, out_dir: str | None = None,
          tiling: Tiling | None = None, batch: int | None = None) -> list[dict]:
    """One row per built engine (``mode`` whole); with ``tiling``, a second (``mode`` tiled) per engine. With
    ``batch``, each whole row also has ``batch_n``: the per-frame cost at that batch against batch 1."""
    out = Path(out_dir) if out_dir else pipeline.resolve(pipeline.out_dir)
    cfg_check = pipeline.check
    threads = cfg_check.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if tiling is not None:
        check_tileable(out, [c.name for c in pipeline.models if not models or c.name in models], tiling)
    rows = []
    for cfg in pipeline.models:
        if models and cfg.name not in models:
            continue
        found = artifacts(out, cfg.name)
        if not found:
            raise UserError(f"{cfg.name}: nothing built in {out / cfg.name}; run python -m export build first")
        model, _ = load_model(cfg, pipeline)
        samples = sample_inputs(pipeline, cfg, cfg_check.num_images, model)
        with torch.no_grad():
            eager = _latency(lambda x: model(torch.from_numpy(x)), samples.tensors, cfg_check.warmup, cfg_check.iterations)
        log(f"{cfg.name}: PyTorch eager p50 {eager['p50_ms']:.1f} ms at {cfg.input.size[0]}x{cfg.input.size[1]}, "
            f"{threads} threads")
        tiled = tiled_inputs(samples, cfg, model, tiling, cfg_check) if tiling is not None else None
        for path in found:
            manifest, runner, how = open_artifact(path, threads)
            row = {"model": cfg.name, "precision": manifest["precision"], "backend": manifest["backend"],
                   "kind": manifest.get("kind", "engine"), "run_with": how, "artifact": str(path),
                   "size": cfg.input.size, "threads": threads, "mode": "whole", "pytorch": eager}
            if runner is None:
                rows.append({**row, "skipped": how})
                continue
            pre_post = embeds_pre_post(manifest)
            feeds = samples.feeds(pre_post)
            with runner:
                outputs = engine_outputs(runner, feeds, pre_post)
                speed = _latency(runner.infer, feeds, cfg_check.warmup, cfg_check.iterations)
                if batch is not None:
                    row["batch_n"] = batch_cost(runner, feeds, batch, speed, cfg_check)
                if tiled is not None:
                    tiled_row = tiled_check(row, runner, tiled, tiling, cfg_check)
            row.update(agreement(outputs, samples.references, pre_post))
            row["engine"] = speed
            row["speedup_vs_pytorch"] = eager["p50_ms"] / speed["p50_ms"]
            rows.append(row)
            log(f"  {manifest['precision']} {how}: p50 {speed['p50_ms']:.1f} ms, "
                f"x{row['speedup_vs_pytorch']:.2f} vs eager, agreement {row['pixel_agreement']:.4f}")
            if "batch_n" in row:
                log(f"  {manifest['precision']} {how}: {batch_line(row['batch_n'])}")
            if tiled is not None:
                rows.append(tiled_row)
                log(f"  {manifest['precision']} {how}, tiled: p50 {tiled_row['engine']['p50_ms']:.1f} ms per frame, "
                    f"agreement {tiled_row['pixel_agreement']:.4f}")
    return rows


def tiled_inputs(samples, cfg, model: torch.nn.Module, tiling: Tiling, cfg_check) -> dict:
    """The check images at their own size, normalized; PyTorch's tiled logits for them and its tiled speed."""
    tensors = [preprocess(image, image.shape[:2], cfg.mean, cfg.std) for image in samples.originals]
    run = lambda x: slide(x, torch_logits(model), tiling)  # noqa: E731
    with torch.no_grad():
        references = [run(x) for x in tensors]
        eager = _latency(run, tensors, cfg_check.warmup, cfg_check.iterations)
    h, w = tensors[0].shape[-2:]
    log(f"{cfg.name}: PyTorch eager tiled p50 {eager['p50_ms']:.1f} ms per {h}x{w} frame, "
        f"{len(windows(h, w, tiling))} {tiling.describe()}")
    return {"tensors": tensors, "references": references, "pytorch": eager, "size": [int(h), int(w)],
            "tiles_per_frame": len(windows(h, w, tiling))}


def tiled_check(whole: dict, runner, tiled: dict, tiling: Tiling, cfg_check) -> dict:
    """The tiled row beside an engine's whole-image row: agreement with tiled PyTorch, speed per frame."""
    run = lambda x: slide(x, engine_logits(runner), tiling)  # noqa: E731
    outputs = [run(x) for x in tiled["tensors"]]
    speed = _latency(run, tiled["tensors"], cfg_check.warmup, cfg_check.iterations)
    return {**whole, "size": tiled["size"], "mode": "tiled", "tiling": tiling.as_dict(),
            "tiles_per_frame": tiled["tiles_per_frame"], "pytorch": tiled["pytorch"],
            **agreement(outputs, tiled["references"], False), "engine": speed,
            "speedup_vs_pytorch": tiled["pytorch"]["p50_ms"] / speed["p50_ms"]}


COLUMNS = ["model", "precision", "run_with", "max|err|", "rel L2", "agree", "mIoU", "eager p50", "eager p90",
           "engine p50", "engine p90", "fps", "speedup"]


def table(rows: list[dict]) -> list[list[str]]:
    lines = []
    for r in rows:
        if "skipped" in r:
            lines.append([r["model"], r["precision"], r["backend"], "skipped: " + r["skipped"]] + [""] * 9)
            continue
        e, p = r["engine"], r["pytorch"]
        err = lambda v: "n/a" if v is None else f"{v:.2e}"  # noqa: E731  (engines with argmax inside: no logits)
        how = r["run_with"]
        if r.get("mode") == "tiled":
            t, s = r["tiling"]["tile"], r["tiling"]["stride"]
            how += f", tiled {t[0]}x{t[1]} stride {s[0]}x{s[1]} at {r['size'][0]}x{r['size'][1]}"
        lines.append([r["model"], r["precision"], how, err(r["max_abs_error"]), err(r["rel_l2_error"]),
                      f"{r['pixel_agreement']:.4f}", f"{r['miou_vs_pytorch']:.4f}", f"{p['p50_ms']:.1f}",
                      f"{p['p90_ms']:.1f}", f"{e['p50_ms']:.1f}", f"{e['p90_ms']:.1f}", f"{e['throughput_fps']:.1f}",
                      f"{r['speedup_vs_pytorch']:.2f}x"])
    return lines


def batch_line(b: dict) -> str:
    return (f"batch {b['batch']}: {b['per_frame_p50_ms']:.2f} ms per frame ({b['call_p50_ms']:.1f} ms a call) "
            f"against {b['batch_1_p50_ms']:.2f} ms at batch 1: x{b['per_frame_vs_batch_1']:.2f} per frame")


def batch_lines(rows: list[dict]) -> list[str]:
    return [f"{r['model']} {r['precision']} {r['run_with']}: {batch_line(r['batch_n'])}" for r in rows if "batch_n" in r]


def render_text(rows: list[dict]) -> str:
    body = table(rows)
    widths = [max(len(c), *(len(line[i]) for line in body)) if body else len(c) for i, c in enumerate(COLUMNS)]
    fmt = lambda cells: "  ".join(x.ljust(w) for x, w in zip(cells, widths))  # noqa: E731
    extra = batch_lines(rows)
    return "\n".join([fmt(COLUMNS), fmt(["-" * w for w in widths])] + [fmt(line) for line in body]
                     + ([""] + extra if extra else []))


def render_markdown(rows: list[dict], machine: str) -> str:
    body = table(rows)
    lines = [f"Machine: {machine}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    lines += ["", "Latencies in ms at batch 1; speedup = PyTorch eager p50 / engine p50, same threads, same run."]
    if any("batch_n" in r for r in rows):
        lines += ["", "Per-frame cost at batch N against batch 1 (p50 of one call / N; below x1.00 batching pays):", ""]
        lines += [f"- {line}" for line in batch_lines(rows)]
    if any(r.get("mode") == "tiled" for r in rows):
        lines += ["", "Tiled rows: the images at their own size in sliding windows (logits averaged where tiles "
                  "overlap), PyTorch run through the same windows; latencies per frame, all its tiles."]
    return "\n".join(lines) + "\n"


def write_reports(rows: list[dict], json_path: str | None, md_path: str | None, machine: str) -> None:
    from engines.manifest import atomic_write

    if json_path:
        atomic_write(Path(json_path), json.dumps({"machine": machine, "rows": rows}, indent=2).encode())
    if md_path:
        atomic_write(Path(md_path), render_markdown(rows, machine).encode())


def machine_description() -> str:
    import os
    import platform

    from engines.cpu import this_cpu

    cpu = this_cpu()
    return (f"{cpu['model']}, {os.cpu_count()} cores, {cpu['int8_kernels']} INT8 kernels, "
            f"Python {platform.python_version()}, torch {torch.__version__}")
