"""The inputs an engine is checked on against PyTorch, and the agreement of its outputs with PyTorch's: shared
by the build's parity gate and ``python -m export check``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch

from data import CHECK_SEED, render_scene
from engines.base import Runner

from ..config import ModelConfig, Pipeline, Threshold
from ..images import list_images, preprocess, read_rgb
from .metrics import compare, compare_classes


@dataclass
class Samples:
    """Parity and speed inputs in both forms an engine may take, and PyTorch's logits for them."""

    frames: list[np.ndarray]  # (1, H, W, 3) uint8 RGB at the model's input size
    tensors: list[np.ndarray]  # (1, 3, H, W) float32, normalized
    references: list[np.ndarray] | None = None
    originals: list[np.ndarray] | None = None  # (H, W, 3) uint8 RGB at their own size, before resizing (tiling)

    def feeds(self, pre_post: bool) -> list[dict[str, np.ndarray]]:
        return [{"frames": f} for f in self.frames] if pre_post else [{"images": t} for t in self.tensors]


def sample_inputs(pipeline: Pipeline, cfg: ModelConfig, count: int, model: torch.nn.Module | None = None) -> Samples:
    """Inputs for parity and speed checks: the check folder's images if one is named, else generated scenes.
    With ``model``, also PyTorch's logits for them."""
    h, w = cfg.input.size
    folder = pipeline.resolve(pipeline.check.images)
    if folder is not None:
        images = [read_rgb(p) for p in list_images(folder, "check.images", count)]
    else:
        images = [render_scene(CHECK_SEED + i)[0] for i in range(count)]  # resized below, like camera frames
    frames = [cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)[None] for img in images]
    samples = Samples(frames, [preprocess(f[0], (h, w), cfg.mean, cfg.std) for f in frames], originals=images)
    if model is not None:
        with torch.no_grad():
            samples.references = [model(torch.from_numpy(x)).numpy() for x in samples.tensors]
    return samples


def engine_outputs(runner: Runner, feeds: list[dict[str, np.ndarray]], pre_post: bool) -> list[np.ndarray]:
    """The engine's class maps (pre/post-processing pre_post) or logits for each feed."""
    key = "classes" if pre_post else "logits"
    return [runner.infer(feed)[key] for feed in feeds]


def agreement(outputs: list[np.ndarray], references: list[np.ndarray], pre_post: bool) -> dict:
    """Agreement with PyTorch's logits: logit errors too where the engine outputs logits."""
    return compare_classes(outputs, references) if pre_post else compare(outputs, references)


def batched_outputs(runner: Runner, feeds: list[dict[str, np.ndarray]], pre_post: bool, batch: int) -> list[np.ndarray]:
    """The engine's outputs for ``batch`` frames in one call (the feeds repeated to fill it), split per frame."""
    key = "classes" if pre_post else "logits"
    group = [feeds[i % len(feeds)] for i in range(batch)]
    stacked = {k: np.concatenate([f[k] for f in group]) for k in group[0]}
    out = runner.infer(stacked)[key]
    return [out[i:i + 1] for i in range(batch)]


def parity(make_runner: Callable[[], Runner], samples: Samples, pre_post: bool, size: list[int],
           batch: int = 1) -> dict:
    """Run a fresh runner over ``samples`` and measure its agreement with PyTorch. With ``batch`` > 1 the
    samples also go through as one batch of that many frames, and those outputs count in the agreement too
    (``batch_max_abs_diff``: how far a frame's batched output is from its batch-1 output)."""
    with make_runner() as runner:
        outputs = engine_outputs(runner, samples.feeds(pre_post), pre_post)
        batched = batched_outputs(runner, samples.feeds(pre_post), pre_post, batch) if batch > 1 else []
    n = len(outputs)
    references = samples.references + [samples.references[i % n] for i in range(len(batched))]
    result = {**agreement(outputs + batched, references, pre_post), "num_inputs": n, "size": list(size),
              "batch": batch}
    if batched:
        result["batch_max_abs_diff"] = max(float(np.abs(b.astype(np.float64) - outputs[i % n]).max())
                                           for i, b in enumerate(batched))
    return result


def parity_problems(threshold: Threshold, parity: dict, guard: dict | None, accuracy: dict | None = None) -> list[str]:
    """What fails ``threshold`` (pipeline.yaml parity.<precision>), the precision guard's budget and the
    artifact's own accuracy (``accuracy``, where its backend measured it): the build's gate, and what the INT8
    placement choice holds each candidate to."""
    problems = []
    # Engines with the argmax inside output no logits: only agreement can be gated for them.
    if threshold.max_abs_error is not None and parity["max_abs_error"] is not None \
            and not parity["max_abs_error"] <= threshold.max_abs_error:
        problems.append(f"max abs logit error {parity['max_abs_error']:.3g} > {threshold.max_abs_error:g}")
    if threshold.min_pixel_agreement is not None and parity["pixel_agreement"] < threshold.min_pixel_agreement:
        problems.append(f"pixel agreement {parity['pixel_agreement']:.4f} < {threshold.min_pixel_agreement:g}")
    if guard and guard.get("held") is False:
        problems.append(f"mIoU {guard['final_score']:.2f} is more than accuracy.budget_miou {guard['budget']:g} "
                        f"below PyTorch's {guard['reference_score']:.2f} with {len(guard['kept'])} layer(s) or "
                        "op type(s) kept in float")
    if accuracy and not accuracy["held"]:
        problems.append(f"mIoU {accuracy['score']:.2f} vs PyTorch {accuracy['reference_score']:.2f}, more than the "
                        f"budget {accuracy['budget']:g} below")
    return problems
