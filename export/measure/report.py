"""Reports of ``python -m export check --data``: a terminal table, JSON, and Markdown with PNG plots.

The plots are drawn with matplotlib's object API (``Figure``, rendered by Agg, no pyplot state) into
``<report stem>_files/`` next to the Markdown, which embeds them by relative path so the folder can be
moved or published as is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from engines.manifest import atomic_write

from ..errors import UserError


# Terminal -----------------------------------------------------------------------------------------------
COLUMNS = ["model", "source", "mIoU", "dmIoU pts", "pix acc", "agree", "p50 ms", "p99 ms", "fps b1", "fps bN",
           "GFLOP/s", "RSS MiB"]


def _fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def table(result: dict) -> list[list[str]]:
    lines = []
    for r in result["rows"]:
        if "skipped" in r:
            lines.append([r["model"], r["source"], "skipped: " + r["skipped"]] + [""] * (len(COLUMNS) - 3))
            continue
        acc, speed, agree = r["accuracy"], r["speed"], r["agreement"]
        bn = speed["batch_n"]
        lines.append([r["model"], r["source"], f"{acc['miou']:.4f}", f"{r['delta_miou_points']:+.2f}",
                      _fmt(acc["pixel_accuracy"], ".4f"), _fmt(agree and agree["pixel_agreement"], ".4f", "-"),
                      f"{speed['batch_1']['p50_ms']:.1f}", f"{speed['batch_1']['p99_ms']:.1f}",
                      f"{speed['batch_1']['throughput_fps']:.1f}",
                      f"{bn['throughput_fps']:.1f}" + ("" if bn["mode"] == "batched" else " seq"),
                      f"{speed['achieved']['batch_1']['gflops']:.1f}", f"{speed['peak_rss_growth_mib']:.0f}"])
    return lines


def render_text(result: dict) -> str:
    n = result["settings"]["batch"]
    note = (f"{result['dataset']['num_images']} images; fps bN: batch {n}, 'seq' = {n} frames submitted back to back "
            "(the engine takes batch 1); dmIoU: engine - PyTorch, in points")
    lines = [_text_table(COLUMNS, table(result)), note]
    if result.get("tiled"):
        lines += ["", _text_table(TILED_COLUMNS, tiled_table(result))]
    return "\n".join(lines)


def _text_table(columns: list[str], body: list[list[str]]) -> str:
    widths = [max(len(c), *(len(line[i]) for line in body)) if body else len(c) for i, c in enumerate(columns)]
    fmt = lambda cells: "  ".join(x.ljust(w) for x, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(columns), fmt(["-" * w for w in widths])] + [fmt(line) for line in body])


# Whole vs tiled (check --data --tile) ---------------------------------------------------------------------
TILED_COLUMNS = ["model", "source", "tile", "stride", "whole mIoU", "tiled mIoU", "tiled - whole pts", "tiled agree",
                 "whole ms", "tiled ms/frame"]


def tiled_table(result: dict) -> list[list[str]]:
    """One line per source: its whole-image mIoU and p50 beside the tiled ones (agreement: against tiled PyTorch)."""
    lines = []
    for r in result.get("tiled", []):
        t, s, agree = r["tiling"]["tile"], r["tiling"]["stride"], r["agreement"]
        lines.append([r["model"], r["source"], f"{t[0]}x{t[1]}", f"{s[0]}x{s[1]}", f"{r['whole']['miou']:.4f}",
                      f"{r['accuracy']['miou']:.4f}", f"{100 * (r['accuracy']['miou'] - r['whole']['miou']):+.2f}",
                      _fmt(agree and agree["pixel_agreement"], ".4f", "-"), f"{r['whole']['p50_ms']:.1f}",
                      f"{r['speed']['batch_1']['p50_ms']:.1f}"])
    return lines


def _tiled_lines(result: dict) -> list[str]:
    if not result.get("tiled"):
        return []
    lines = ["## Whole vs tiled", "",
             "Whole: each image resized to the model's input size, scored there. Tiled: each image at its own size "
             "in sliding windows (logits averaged where tiles overlap; images smaller than a tile padded to it), "
             "scored against its labels at their own size; PyTorch tiled the same way. ms: p50 per frame at "
             "batch 1, all its tiles; agreement: against tiled PyTorch.", "",
             "| " + " | ".join(TILED_COLUMNS) + " |", "|" + "---|" * len(TILED_COLUMNS)]
    lines += ["| " + " | ".join(line) + " |" for line in tiled_table(result)]
    return lines + [""]


# Files --------------------------------------------------------------------------------------------------
def write_reports(result: dict, json_path: str | None, md_path: str | None) -> None:
    """The Markdown report with its plots (``md_path``), and the JSON (``json_path``), which also lists the
    plots when there are any."""
    if md_path:
        md = Path(md_path)
        files = md.parent / f"{md.stem}_files"
        plots = draw_plots(result, files)
        result["plots"] = {m: {k: os.path.relpath(p, md.parent) for k, p in kinds.items()} for m, kinds in plots.items()}
        atomic_write(md, render_markdown(result).encode())
    if json_path:
        atomic_write(Path(json_path), json.dumps(result, indent=2).encode())


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def render_markdown(result: dict) -> str:
    """The ``check --data`` report: settings, one section per model (accuracy, speed, per-class IoU, guards,
    plots), and how every number was measured."""
    lines = _header_lines(result)
    for name, info in result["models"].items():
        lines += _model_lines(result, name, info)
    return "\n".join(lines + _tiled_lines(result) + _how_lines(result))


def _header_lines(result: dict) -> list[str]:
    data, settings = result["dataset"], result["settings"]
    n = settings["batch"]
    return [f"# Accuracy and speed on {Path(data['root']).name}", "",
             f"- Machine: {result['machine']}; {settings['threads']} thread(s) for PyTorch and every engine.",
             f"- Dataset: `{data['root']}` ({data['layout']} layout), {data['num_images']} images"
             + (f" (--limit {data['limit']})" if data["limit"] else "") + f", {data['num_classes']} classes; "
             f"scored at {settings['scored_at']}.",
             f"- Speed: {settings['warmup']} warm-up and {settings['iterations']} timed calls on the first "
             f"{settings['speed_images']} images; batch {n} as described under How.", ""]


def _model_lines(result: dict, name: str, info: dict) -> list[str]:
    data, n = result["dataset"], result["settings"]["batch"]
    rows = [r for r in result["rows"] if r["model"] == name and "skipped" not in r]
    skipped = [r for r in result["rows"] if r["model"] == name and "skipped" in r]
    flops = info["flops"]
    lines = [f"## {name}", "",
              f"{info['size'][0]}x{info['size'][1]} input, {info['parameters'] / 1e6:.2f}M parameters, "
              f"{flops['gflops']:.3f} GFLOPs per frame ({flops['macs'] / 1e9:.3f} GMACs).", "",
              "| source | mIoU | Δ mIoU (points) | pixel acc | agreement | max abs err | mIoU vs PyTorch |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc, agree = r["accuracy"], r["agreement"] or {}
        err = agree.get("max_abs_error")
        lines.append(f"| {r['source']} | {acc['miou']:.4f} | {r['delta_miou_points']:+.2f} | "
                     f"{_fmt(acc['pixel_accuracy'], '.4f')} | {_fmt(agree.get('pixel_agreement'), '.4f', '-')} | "
                     f"{'-' if not agree else _fmt(err, '.2e')} | {_fmt(agree.get('miou_vs_pytorch'), '.4f', '-')} |")
    lines += ["", f"| source | p50 ms | p90 ms | p99 ms | fps batch 1 | fps batch {n} | GFLOP/s (b1) | "
              f"% machine peak | % measured peak | peak RSS growth MiB | size |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["speed"]
        b1, bn, ach = s["batch_1"], s["batch_n"], s["achieved"]["batch_1"]
        size = f"{r['file_bytes'] / 2**20:.2f} MiB" if r["file_bytes"] else "-"
        lines.append(f"| {r['source']} | {b1['p50_ms']:.2f} | {b1['p90_ms']:.2f} | {b1['p99_ms']:.2f} | "
                     f"{b1['throughput_fps']:.1f} | {bn['throughput_fps']:.1f} ({bn['mode']}) | {ach['gflops']:.2f} | "
                     f"{_pct(ach['share_of_machine_peak'])} | {_pct(ach['share_of_measured_peak'])} | "
                     f"{s['peak_rss_growth_mib']:.1f} | {size} |")
    for r in skipped:
        lines.append(f"\n{r['source']}: skipped, {r['skipped']}")
    lines += ["", "Per-class IoU:", "", "| class | " + " | ".join(r["source"] for r in rows) + " |",
              "|---|" + "---|" * len(rows)]
    for c, cls in enumerate(data["classes"]):
        lines.append(f"| {cls} | " + " | ".join(_fmt(r["accuracy"]["per_class_iou"][c], ".4f") for r in rows) + " |")
    lines += guard_lines([r for r in result["rows"] if r["model"] == name])
    plots = result.get("plots", {}).get(name, {})
    for key, title in (("iou", "Per-class IoU"), ("confusion", "Confusion matrices (rows: label, normalized)"),
                       ("latency", "Latency per call")):
        if key in plots:
            lines += ["", f"![{name}: {title}]({plots[key]})"]
    if flops["uncounted_nodes"]:
        lines += ["", f"FLOPs leave out {len(flops['uncounted_nodes'])} node(s) whose shapes shape inference "
                  f"could not resolve: {', '.join(flops['uncounted_nodes'][:5])}."]
    lines.append("")
    return lines


def _how_lines(result: dict) -> list[str]:
    settings, theory, measured = result["settings"], result["peak"]["theoretical"], result["peak"]["measured"]
    n = settings["batch"]
    lines = ["## How", "",
              "- **mIoU**: per class, IoU = TP / (TP + FP + FN) over all images' pixels; the mean is over classes "
              "labelled or predicted at least once (a class in neither is n/a). Pixel accuracy: correct / labelled "
              "pixels. Label 255 is ignored. Δ mIoU: engine mIoU - PyTorch mIoU on the same images, in points (x100).",
              "- **Agreement**: engine against PyTorch on the same dataset images, as in `python -m export check`.",
              f"- **Batch {n}**: PyTorch eager and the engines (exported with a symbolic batch) run a real batch of {n} "
              f"(batched); for an engine with a fixed batch, 'sequential' means {n} frames submitted back to back in one "
              f"timed call (each submitted before the previous is collected); its fps is {n} / call time. Latency percentiles are per call at batch 1, over "
              f"{settings['iterations']} calls (check.iterations in the pipeline): with few calls p99 is close to the maximum.",
              "- **FLOPs**: multiply-accumulates of Conv, ConvTranspose, MatMul and Gemm counted on the fp32 ONNX graph "
              "(rewritten for the backend) with shapes from onnx.shape_inference at the model's input size, batch 1; "
              "1 MAC = 2 FLOPs; elementwise ops, normalization, resizes and softmax are left out. Achieved GFLOP/s = "
              "FLOPs per frame x frames per second. INT8 and FP16 engines do the same MACs at lower precision, so "
              "their share is of the fp32 peak and may exceed what fp32 can reach."]
    if theory.get("gflops"):
        lines.append(f"- **Machine peak (theoretical)**: {theory['gflops']:.1f} GFLOP/s = {theory['formula']} = "
                     f"{theory['cores']} x {theory['clock_ghz']:.2f} x {theory['flops_per_cycle_per_core']}. "
                     f"FLOPs per cycle: {theory['isa']}, {theory['flops_per_cycle_source']}. Clock: "
                     f"{theory['clock_source']}. Cores: {theory['cores_source']}. For the {settings['threads']} "
                     f"thread(s) used: {theory['gflops_at_threads']:.1f} GFLOP/s.")
    else:
        lines.append(f"- **Machine peak (theoretical)**: not estimated: {theory.get('reason')}.")
    lines.append(f"- **Measured peak**: {measured['gflops']:.1f} GFLOP/s, {measured['method']}. "
                 "'% measured peak' is against this one: same threads, what the BLAS reaches on this machine.")
    if theory.get("gflops") and measured["gflops"] > theory["gflops_at_threads"]:
        lines.append("  The measured peak exceeds the theoretical one for these threads: the clock reported is "
                     "below the one the cores ran at (turbo), or the assumed FMA units are too few.")
    lines += [f"- **Peak RSS growth**: {result['memory_method']}; from before the model or engine is loaded to the "
              "end of its batch-1 runs (weights, session, arena and activations), in this process after the "
              "previous ones: freed memory is handed back first (malloc_trim).",
              "- **Size**: the engine file on disk.", ""]
    return lines

def guard_lines(rows: list[dict]) -> list[str]:
    """What the build's accuracy guards (export/compile/accuracy_guard.py) did to each engine, from its manifest."""
    lines = []
    for r in rows:
        guard = r.get("precision_guard")
        if not guard:
            continue
        if "budget" in guard:  # INT8 sensitivity fallback
            kept = "; ".join(f"{k['node']} ({k['op_type']}" + (f", {len(k['nodes'])} nodes" if len(k.get("nodes", [])) > 1
                                                               else "") + f", {k['recovered']:+.2f})"
                             for k in guard["kept"]) or "none"
            lines.append(f"- {r['source']}: INT8 mIoU at build {guard['initial_score']:.2f} -> {guard['final_score']:.2f} "
                         f"against PyTorch's {guard['reference_score']:.2f} (budget {guard['budget']:g}: "
                         f"{'held' if guard['held'] else 'NOT held'}, {guard['evaluations']} evaluations); kept in "
                         f"float, with the points each recovered: {kept}.")
        else:  # FP16 range guard
            added = [k["node"] for k in guard["kept"] if not k["already_fp32"]]
            largest = guard.get("largest_finite", guard["largest"])
            infinite = guard.get("non_finite_tensors", 0)
            lines.append(f"- {r['source']}: FP16 range guard, largest finite |value| {largest:.3g} on the calibration "
                         "images" + (f" ({infinite} tensor(s) hold inf/NaN, e.g. attention masks)" if infinite else "")
                         + f"; kept in FP32 beyond the op-type rules: {', '.join(added[:8]) or 'none'}"
                         + (f" (+{len(added) - 8} more)" if len(added) > 8 else "") + ".")
    if lines:
        lines = ["", "Precision guards (at build, scored on `accuracy.data`; `python -m export build` logs the same):",
                 ""] + lines
    return lines


# Plots --------------------------------------------------------------------------------------------------
def draw_plots(result: dict, folder: Path) -> dict[str, dict[str, Path]]:
    """Per model: per-class IoU bars by source, row-normalized confusion matrices, latency distributions."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("--report with --data draws plots with matplotlib, which is not installed; "
                        "pip install matplotlib==3.11.2 (it is in pyproject.toml's dependencies)") from None
    folder.mkdir(parents=True, exist_ok=True)
    classes = result["dataset"]["classes"]
    plots = {}
    for name in result["models"]:
        rows = [r for r in result["rows"] if r["model"] == name and "skipped" not in r]
        plots[name] = {"iou": folder / f"{name}_iou.png", "confusion": folder / f"{name}_confusion.png",
                       "latency": folder / f"{name}_latency.png"}
        _save(_iou_bars(Figure, name, rows, classes), plots[name]["iou"])
        _save(_confusions(Figure, name, rows, classes), plots[name]["confusion"])
        _save(_latencies(Figure, name, rows, result["settings"]["batch"]), plots[name]["latency"])
    return plots


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=100)  # rendered by Agg: the Figure API needs no GUI backend


def _iou_bars(Figure, name: str, rows: list[dict], classes: list[str]):
    n = len(classes)
    fig = Figure(figsize=(min(40, max(6, 0.25 * n * len(rows) + 2)), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    x = np.arange(n)
    for k, r in enumerate(rows):
        iou = [np.nan if v is None else v for v in r["accuracy"]["per_class_iou"]]
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, iou, width, label=f"{r['source']} (mIoU {r['accuracy']['miou']:.3f})")
    ax.set_xticks(x, classes, rotation=45 if n > 8 else 0, ha="right" if n > 8 else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(f"{name}: per-class IoU by precision")
    ax.legend(fontsize="small")
    return fig


def _confusions(Figure, name: str, rows: list[dict], classes: list[str]):
    n = len(classes)
    side = min(10, max(3.5, 0.45 * n))
    fig = Figure(figsize=(side * len(rows), side + 0.8), layout="constrained")
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, r in zip(axes, rows):
        conf = np.asarray(r["accuracy"]["confusion"], np.float64)
        totals = conf.sum(1, keepdims=True)
        norm = np.divide(conf, totals, out=np.zeros_like(conf), where=totals > 0)  # unlabelled class: empty row
        image = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        if n <= 10:  # numbers in the cells while they fit; empty cells stay blank
            for i, j in zip(*np.nonzero(norm >= 0.005)):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6 if n > 6 else 7,
                        color="white" if norm[i, j] > 0.5 else "black")
        ticks = range(n) if n <= 40 else range(0, n, max(1, n // 20))
        ax.set_xticks(list(ticks), [classes[t] for t in ticks], rotation=90, fontsize=7)
        ax.set_yticks(list(ticks), [classes[t] for t in ticks], fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("label")
        ax.set_title(f"{r['source']}", fontsize=9)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of the label's pixels")
    fig.suptitle(f"{name}: confusion (rows normalized)")
    return fig


def _latencies(Figure, name: str, rows: list[dict], batch: int):
    fig = Figure(figsize=(max(6, 1.6 * len(rows) * 2), 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    labels = [r["source"] for r in rows]
    series = [
        (left, [r["speed"]["batch_1"]["latencies_ms"] for r in rows], "batch 1: ms per call"),
        (right, [[v / batch for v in r["speed"]["batch_n"]["latencies_ms"]] for r in rows],
         f"batch {batch}: ms per frame (call / {batch})"),
    ]
    for ax, data, title in series:
        ax.boxplot(data, tick_labels=labels, showfliers=False)
        rng = np.random.default_rng(0)
        for k, values in enumerate(data):  # every iteration as a point: a box of 10 samples hides little
            ax.scatter(k + 1 + rng.uniform(-0.12, 0.12, len(values)), values, s=8, alpha=0.6)
        ax.set_ylabel("ms")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=20)
        ax.set_ylim(bottom=0)
    right.set_xticks(range(1, len(rows) + 1),
                     [f"{r['source']}\n({r['speed']['batch_n']['mode']})" for r in rows])
    fig.suptitle(f"{name}: latency distributions per backend")
    return fig
