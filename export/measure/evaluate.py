"""``python -m export check --data DIR``: PyTorch and every built engine scored against a labelled dataset.

For each model in the pipeline, on the same images: mIoU, per-class IoU and pixel accuracy of PyTorch and of
every engine against the labels, and each engine's mIoU delta from PyTorch; agreement with PyTorch (logit
error, pixel agreement, mIoU against PyTorch's predictions) as in the plain check, here over the dataset;
and speed beside accuracy (latency distributions at batch 1 and N, peak memory, size, FLOPs and the share
of peak, see export/measure/speed.py).

Scoring happens at the model's input size, where the engines run: images are resized with INTER_LINEAR,
labels with INTER_NEAREST, and label 255 is ignored. Images are streamed one at a time, with PyTorch and
every engine run on each, so a dataset of any size needs the memory of one image.

With a tiling (``--tile``), a second pass scores PyTorch and every engine in sliding windows
(engines/tiling.py) over each image at its own size, against its labels at their own size, and times them
per frame: the report's "whole vs tiled" rows (``result["tiled"]``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch

from engines import artifacts as layout
from engines.manifest import embeds_pre_post
from engines.tiling import Tiling, slide
from models import count_parameters
from data import IGNORE

from ..compile.weights import load_model
from ..log import log
from .samples import Samples
from .check import artifacts, check_tileable, engine_logits, machine_description, open_artifact, torch_logits
from ..config import ModelConfig, Pipeline
from ..errors import UserError
from ..images import preprocess
from .metrics import confusion, mean_iou
from .speed import PeakMemory, count_macs, latency_summary, measured_peak, theoretical_peak, timed_calls



@dataclass
class DataOptions:
    """What ``check --data`` evaluates on and how it measures speed."""

    root: str
    layout: str = "auto"
    limit: int | None = None
    batch: int = 4  # frames per call for the batch-N speed measurement
    tiling: Tiling | None = None  # also score and time sliding-window inference at each image's own size


# Scores -------------------------------------------------------------------------------------------------
def label_confusion(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix of a class map against its label map (rows = label, columns = prediction); pixels
    labelled 255 are left out."""
    keep = label != IGNORE
    return confusion(prediction[keep], label[keep], num_classes)


def label_scores(conf: np.ndarray) -> dict:
    """mIoU, per-class IoU and pixel accuracy from a confusion matrix (rows = label, columns = prediction).

    A class neither labelled nor predicted has no IoU (None) and is left out of the mean, as in
    ``metrics.mean_iou``; a class predicted but never labelled has IoU 0 and counts. Pixel accuracy is
    correct pixels over labelled pixels.
    """
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    total = int(conf.sum())
    return {"miou": mean_iou(conf),
            "per_class_iou": [float(t / u) if u > 0 else None for t, u in zip(tp, union)],
            "pixel_accuracy": float(tp.sum() / total) if total else None,
            "labelled_pixels": total}


class Agreement:
    """``metrics.compare`` (engines that output logits) or ``metrics.compare_classes`` (engines with the argmax
    inside), accumulated one image at a time, since a dataset's logits do not fit in memory together."""

    def __init__(self, num_classes: int, logits: bool) -> None:
        self.num_classes, self.logits = num_classes, logits
        self.max_abs, self.num, self.den, self.agree, self.pixels = 0.0, 0.0, 0.0, 0, 0
        self.conf = np.zeros((num_classes, num_classes), np.int64)

    def add(self, output: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
            reference_prediction: np.ndarray) -> None:
        """One image: the engine's output and class map, PyTorch's logits and class map."""
        if self.logits:
            out, ref = output.astype(np.float64), reference.astype(np.float64)
            self.max_abs = float("inf") if not np.isfinite(out).all() else max(self.max_abs, float(np.abs(out - ref).max()))
            self.num += float(((out - ref) ** 2).sum())
            self.den += float((ref**2).sum())
        self.agree += int((prediction == reference_prediction).sum())
        self.pixels += reference_prediction.size
        self.conf += confusion(prediction, reference_prediction, self.num_classes)

    def result(self) -> dict:
        rel_l2 = float(np.sqrt(self.num / self.den)) if self.den > 0 else float(np.sqrt(self.num))
        return {"max_abs_error": self.max_abs if self.logits else None, "rel_l2_error": rel_l2 if self.logits else None,
                "pixel_agreement": self.agree / self.pixels, "miou_vs_pytorch": mean_iou(self.conf)}


def class_map(output: np.ndarray, pre_post: bool, num_classes: int) -> np.ndarray:
    """(1, H, W) int64 classes from logits (1, C, H, W), or from an engine's own class map."""
    if not pre_post:
        return output.argmax(1)
    # As compare_classes: an out-of-range class from a broken engine counts as the last class, never indexes out.
    return np.minimum(output.reshape(output.shape[0], *output.shape[-2:]).astype(np.int64), num_classes - 1)


# Data ---------------------------------------------------------------------------------------------------
def open_labelled(options: DataOptions):
    """The dataset ``options`` name; every problem with it is one UserError line."""
    from data import DataError, open_dataset

    try:
        dataset = open_dataset(options.root, layout=options.layout, limit=options.limit)
    except DataError as exc:
        raise UserError(f"--data: {exc}") from None
    if len(dataset) == 0:
        raise UserError(f"--data {options.root}: no labelled images found (layout {options.layout}); "
                        "point --data at a folder of images with label masks")
    return dataset


def labelled_frame(dataset, index: int, size: tuple[int, int] | None, root: str) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` at ``size`` (H, W) as uint8 RGB, and its labels resized with nearest neighbour
    (``size`` None: both at their own size)."""
    from data import DataError

    try:
        rgb, label = dataset[index]
    except DataError as exc:
        raise UserError(f"--data: {exc}") from None
    if rgb.shape[:2] != label.shape[:2]:
        raise UserError(f"--data {root}: image {index} is {rgb.shape[1]}x{rgb.shape[0]} but its label is "
                        f"{label.shape[1]}x{label.shape[0]}; image and label must be the same size")
    if size is None:
        return np.ascontiguousarray(rgb), label
    h, w = size
    frame = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR) if rgb.shape[:2] != (h, w) else rgb
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST) if label.shape[:2] != (h, w) else label
    return np.ascontiguousarray(frame), label


# Evaluation ---------------------------------------------------------------------------------------------
def evaluate(pipeline: Pipeline, options: DataOptions, models: list[str] | None = None,
             out_dir: str | None = None) -> dict:
    """Score PyTorch and every built engine of the selected models on the labelled dataset; measure speed."""
    out = Path(out_dir) if out_dir else pipeline.resolve(pipeline.out_dir)
    selected = [cfg for cfg in pipeline.models if not models or cfg.name in models]
    dataset = open_labelled(options)
    found = {}
    for cfg in selected:  # every cheap refusal before any slow work
        if dataset.num_classes != cfg.num_classes:
            raise UserError(f"--data {options.root} has {dataset.num_classes} classes but {cfg.name} predicts "
                            f"{cfg.num_classes} (models[].num_classes in the pipeline); evaluate on a dataset with "
                            f"the model's classes, or build the model for {dataset.num_classes} classes")
        found[cfg.name] = artifacts(out, cfg.name)
        if not found[cfg.name]:
            raise UserError(f"{cfg.name}: nothing built in {out / cfg.name}; run python -m export build first")
    if options.tiling is not None:
        check_tileable(out, list(found), options.tiling)
    threads = pipeline.check.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    result = {
        "machine": machine_description(),
        "dataset": {"root": str(options.root), "layout": options.layout, "limit": options.limit,
                    "num_images": len(dataset), "num_classes": dataset.num_classes, "classes": list(dataset.classes)},
        "settings": {"threads": threads, "batch": options.batch, "warmup": pipeline.check.warmup,
                     "iterations": pipeline.check.iterations,
                     "speed_images": min(pipeline.check.num_images, len(dataset)),
                     "scored_at": "each model's input size (images INTER_LINEAR, labels INTER_NEAREST, 255 ignored)"},
        "peak": {"theoretical": theoretical_peak(), "measured": measured_peak(threads)},
        "memory_method": "",
        "models": {},
        "rows": [],
    }
    if options.tiling is not None:
        result["settings"]["tiling"] = {**options.tiling.as_dict(), "scored_at": "each image's own size"}
        result["tiled"] = []
    peak = result["peak"]
    theory = peak["theoretical"]
    if theory.get("gflops"):
        theory["gflops_at_threads"] = theory["gflops"] / theory["cores"] * min(threads, theory["cores"])
    for cfg in selected:
        info, rows, method, tiled = evaluate_model(pipeline, cfg, found[cfg.name], dataset, options, threads, out)
        for row in (r for r in rows if "skipped" not in r):
            row["speed"]["achieved"] = achieved(info["flops"]["flops"], row["speed"], peak)
        result["models"][cfg.name] = info
        result["rows"] += rows
        result["memory_method"] = method
        if tiled is not None:
            result["tiled"] += tiled
    return result


def achieved(flops_per_frame: int, speed: dict, peak: dict) -> dict:
    """GFLOP/s reached at batch 1 and N (the model's FLOPs x frames per second), and its share of each peak."""
    shares = {}
    for key in ("batch_1", "batch_n"):
        gflops = flops_per_frame * speed[key]["throughput_fps"] / 1e9
        machine, measured = peak["theoretical"].get("gflops"), peak["measured"]["gflops"]
        shares[key] = {"gflops": gflops, "share_of_machine_peak": gflops / machine if machine else None,
                       "share_of_measured_peak": gflops / measured}
    return shares


def flops_graph(out: Path, cfg: ModelConfig) -> Path:
    """The fp32 graph FLOPs are counted on: rewritten for a backend (custom ops lowered to standard ones,
    before any engine fuses Conv nodes into contrib ops), else the exported one."""
    candidates = [layout.rewritten_graph(out, cfg.name, t) for t in layout.TARGETS]
    for path in candidates + [layout.exported_graph(out, cfg.name)]:
        if path.exists():
            return path
    raise UserError(f"{cfg.name}: no exported graph in {out / cfg.name} to count FLOPs on; "
                    "run python -m export build first")


def evaluate_model(pipeline: Pipeline, cfg: ModelConfig, paths: list[Path], dataset, options: DataOptions,
                   threads: int, out: Path) -> tuple[dict, list[dict], str, list[dict] | None]:
    """One model: speed of PyTorch and of each engine, then one pass over the dataset with all of them (and,
    with a tiling, one more in sliding windows: the last item, else None)."""
    size = tuple(cfg.input.size)
    check_cfg = pipeline.check
    frames = [labelled_frame(dataset, i, size, options.root)[0]
              for i in range(min(check_cfg.num_images, len(dataset)))]
    samples = Samples([f[None] for f in frames], [preprocess(f, size, cfg.mean, cfg.std) for f in frames])
    graph = flops_graph(out, cfg)
    info = {"size": list(size), "flops": count_macs(onnx.load(str(graph)), size), "flops_graph": str(graph)}

    # Memory is measured from before loading to the end of the batch-1 runs, batch N excluded (PyTorch's
    # batch holds N frames' activations at once, an engine's sequential batch only one).
    memory = PeakMemory().start()
    model, _ = load_model(cfg, pipeline)
    eager = lambda x: model(torch.from_numpy(x))  # noqa: E731
    with torch.no_grad():
        batch_1 = timed_calls(eager, samples.tensors, check_cfg.warmup, check_cfg.iterations)
        grown = memory.stop()
        batch = np.concatenate([samples.tensors[i % len(frames)] for i in range(options.batch)])
        batch_n = timed_calls(eager, [batch], check_cfg.warmup, check_cfg.iterations)
    info["parameters"] = count_parameters(model)
    eager_speed = {"batch_1": latency_summary(batch_1, 1),
                   "batch_n": {**latency_summary(batch_n, options.batch), "mode": "batched"},
                   "peak_rss_growth_mib": grown}
    rows = [{"model": cfg.name, "source": "pytorch", "precision": "fp32", "backend": "pytorch", "kind": "eager",
             "run_with": "PyTorch eager", "artifact": None, "file_bytes": None, "speed": eager_speed}]
    log(f"{cfg.name}: PyTorch eager p50 {eager_speed['batch_1']['p50_ms']:.1f} ms at {size[0]}x{size[1]}, "
        f"{threads} threads")

    with contextlib.ExitStack() as stack:
        engines = []  # (row, runner, pre_post)
        for path in paths:
            memory = PeakMemory().start()
            manifest, runner, how = open_artifact(path, threads)
            kind = manifest.get("kind", "engine")
            row = {"model": cfg.name, "source": f"{manifest['precision']} {manifest['backend']}"
                   + (" graph" if kind == "graph" else ""), "precision": manifest["precision"],
                   "backend": manifest["backend"], "kind": kind, "run_with": how, "artifact": str(path),
                   "file_bytes": path.stat().st_size, "precision_guard": manifest.get("precision_guard")}
            rows.append(row)
            if runner is None:
                row["skipped"] = how
                continue
            stack.enter_context(runner)
            pre_post = embeds_pre_post(manifest)
            row["speed"] = engine_speed(runner, samples.feeds(pre_post), options.batch, memory, check_cfg)
            row["speed"]["speedup_vs_pytorch"] = eager_speed["batch_1"]["p50_ms"] / row["speed"]["batch_1"]["p50_ms"]
            engines.append((row, runner, pre_post))
            log(f"  {row['source']} ({how}): p50 {row['speed']['batch_1']['p50_ms']:.1f} ms")
        score_dataset(cfg, model, engines, rows[0], dataset, options)
        tiled = score_tiled(cfg, model, engines, rows[0], dataset, options, check_cfg) if options.tiling else None
    return info, rows, memory.method, tiled


def engine_speed(runner, feeds: list[dict], batch: int, memory: PeakMemory, check_cfg) -> dict:
    """Batch-1 latency, peak memory since ``memory`` started, and batch-N throughput: a real batch where the
    engine's input takes one, else N frames submitted back to back per call (labelled "sequential")."""
    batch_1 = timed_calls(runner.infer, feeds, check_cfg.warmup, check_cfg.iterations)
    grown = memory.stop()
    group = [feeds[i % len(feeds)] for i in range(batch)]
    if takes_batch(runner, batch):
        stacked = {k: np.concatenate([f[k] for f in group]) for k in group[0]}
        batch_n, mode = timed_calls(runner.infer, [stacked], check_cfg.warmup, check_cfg.iterations), "batched"
    else:
        batch_n = timed_calls(lambda g: back_to_back(runner, g), [group], check_cfg.warmup, check_cfg.iterations)
        mode = "sequential"
    return {"batch_1": latency_summary(batch_1, 1), "batch_n": {**latency_summary(batch_n, batch), "mode": mode},
            "peak_rss_growth_mib": grown}


def takes_batch(runner, batch: int) -> bool:
    """Whether the engine's input accepts ``batch`` frames in one call: an ONNX Runtime input with a symbolic
    (as exported) or matching batch dimension."""
    session = getattr(runner, "session", None)
    if session is None:
        return False
    dim = session.get_inputs()[0].shape[0]
    return not isinstance(dim, int) or dim == batch


def back_to_back(runner, feeds: list[dict]) -> list[dict]:
    """Submit each frame before collecting the previous one, as runtime/ does, so engines that overlap copies
    with inference (TensorRT's two buffer sets) get to."""
    outputs, pending = [], runner.submit(feeds[0])
    for feed in feeds[1:]:
        following = runner.submit(feed)
        outputs.append(runner.collect(pending))
        pending = following
    outputs.append(runner.collect(pending))
    return outputs


def score_dataset(cfg: ModelConfig, model: torch.nn.Module, engines: list, pytorch_row: dict, dataset,
                  options: DataOptions) -> None:
    """One pass over the dataset: PyTorch and each engine on every image, scored against the labels and
    (engines) against PyTorch. Fills the rows' ``accuracy``, ``delta_miou_points`` and ``agreement``."""
    size, n = tuple(cfg.input.size), cfg.num_classes
    confs = [np.zeros((n, n), np.int64) for _ in range(len(engines) + 1)]
    agreements = [Agreement(n, logits=not pre_post) for _, _, pre_post in engines]
    for i in range(len(dataset)):
        frame, label = labelled_frame(dataset, i, size, options.root)
        bad = (label >= n) & (label != IGNORE)
        if bad.any():
            raise UserError(f"--data {options.root}: image {i} has label {int(label[bad][0])}, outside 0..{n - 1} "
                            f"and not {IGNORE} (ignore); the dataset's masks do not match its {n} classes")
        x = preprocess(frame, size, cfg.mean, cfg.std)
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()
        reference_prediction = reference.argmax(1)
        confs[0] += label_confusion(reference_prediction[0], label, n)
        for k, (row, runner, pre_post) in enumerate(engines):
            output = runner.infer({"frames": frame[None]} if pre_post else {"images": x})
            output = output["classes" if pre_post else "logits"]
            prediction = class_map(output, pre_post, n)
            confs[k + 1] += label_confusion(prediction[0], label, n)
            agreements[k].add(output, prediction, reference, reference_prediction)
        if (i + 1) % 100 == 0:
            log(f"  {cfg.name}: {i + 1}/{len(dataset)} images scored")
    if confs[0].sum() == 0:
        raise UserError(f"--data {options.root}: every label pixel is {IGNORE} (ignore); nothing to score")
    pytorch_row["accuracy"] = {**label_scores(confs[0]), "confusion": confs[0].tolist()}
    pytorch_row["delta_miou_points"] = 0.0
    pytorch_row["agreement"] = None
    base = pytorch_row["accuracy"]["miou"]
    for (row, _, _), conf, agreement in zip(engines, confs[1:], agreements):
        row["accuracy"] = {**label_scores(conf), "confusion": conf.tolist()}
        row["delta_miou_points"] = 100 * (row["accuracy"]["miou"] - base)
        row["agreement"] = {**agreement.result(), "num_images": len(dataset)}
    log(f"{cfg.name}: {len(dataset)} images, mIoU " + ", ".join(
        f"{r['source']} {r['accuracy']['miou']:.4f}" for r in [pytorch_row] + [e[0] for e in engines]))


def score_tiled(cfg: ModelConfig, model: torch.nn.Module, engines: list, pytorch_row: dict, dataset,
                options: DataOptions, check_cfg) -> list[dict]:
    """Whole vs tiled: PyTorch and each engine in sliding windows over every image at its own size, scored
    against its labels at their own size and (engines) against tiled PyTorch, and timed per frame on the
    first ``check.num_images`` images. One row per source, beside its whole-image row's mIoU and speed."""
    tiling, n = options.tiling, cfg.num_classes
    sources = [(pytorch_row, torch_logits(model))] + [(row, engine_logits(runner)) for row, runner, _ in engines]
    confs = [np.zeros((n, n), np.int64) for _ in sources]
    agreements = [Agreement(n, logits=True) for _ in engines]
    timed = []
    with torch.no_grad():
        for i in range(len(dataset)):
            frame, label = labelled_frame(dataset, i, None, options.root)
            x = preprocess(frame, frame.shape[:2], cfg.mean, cfg.std)
            if i < check_cfg.num_images:
                timed.append(x)
            logits = [slide(x, infer, tiling) for _, infer in sources]
            predictions = [out.argmax(1) for out in logits]
            for k, prediction in enumerate(predictions):
                confs[k] += label_confusion(prediction[0], label, n)
            for k, agreement in enumerate(agreements):
                agreement.add(logits[k + 1], predictions[k + 1], logits[0], predictions[0])
        speeds = [latency_summary(timed_calls(lambda x, f=infer: slide(x, f, tiling), timed, check_cfg.warmup,
                                              check_cfg.iterations), 1) for _, infer in sources]
    base = mean_iou(confs[0])
    rows = []
    for k, ((whole, _), conf, speed) in enumerate(zip(sources, confs, speeds)):
        accuracy = {**label_scores(conf), "confusion": conf.tolist()}
        rows.append({"model": cfg.name, "source": whole["source"], "mode": "tiled", "tiling": tiling.as_dict(),
                     "artifact": whole["artifact"], "accuracy": accuracy,
                     "delta_miou_points": 100 * (accuracy["miou"] - base),
                     "agreement": None if k == 0 else {**agreements[k - 1].result(), "num_images": len(dataset)},
                     "speed": {"batch_1": speed},
                     "whole": {"miou": whole["accuracy"]["miou"], "p50_ms": whole["speed"]["batch_1"]["p50_ms"]}})
    log(f"{cfg.name} tiled ({tiling.describe()}): mIoU " + ", ".join(
        f"{r['source']} {r['accuracy']['miou']:.4f} (whole {r['whole']['miou']:.4f})" for r in rows))
    return rows
