"""``python -m training``: train a registered model on CPU, deterministically, from synthetic street scenes
or a labelled folder, and save a state dict the export pipeline loads.

    python -m training --model bisenetv2 --steps 600 --size 128x256 --out weights/bisenetv2_synthetic.pt

The demo weights in weights/ were made with the commands in weights/README.md. Auxiliary training heads
are trained but not saved: they are dropped at export anyway, and leaving them out keeps the files small.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models import create_model, get_spec, training_only_keys
from data import EVAL_SEED, IGNORE, SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, DataError, detect_layout, open_dataset, render_scene

MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # the pipeline's default normalization (RGB, 0-255)
STD = np.array([58.395, 57.12, 57.375], np.float32)
VAL_SEED = EVAL_SEED  # validation scenes never overlap training scenes


def to_tensors(images: list[np.ndarray], labels: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = (np.stack(images).astype(np.float32) - MEAN) / STD  # (B, H, W, 3)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(np.stack(labels).astype(np.int64))


class Batches:
    """Deterministic batches: synthetic scenes drawn from seeds, or random crops of a labelled folder."""

    def __init__(self, data: str, size: tuple[int, int], batch: int, seed: int) -> None:
        self.size, self.batch, self.rng = size, batch, np.random.default_rng(seed)
        # Labelled folders train on their training split where the layout has one (Cityscapes, ADE20K, VOC).
        self.dataset = None if data == "synthetic" else open_dataset(data, split=None if detect_layout(data) == "plain" else "train")
        self.classes = SYNTHETIC_CLASSES if self.dataset is None else self.dataset.classes
        self.palette = SYNTHETIC_PALETTE if self.dataset is None else None
        self.seed = seed

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for i in range(self.batch):
            if self.dataset is None:
                image, label = render_scene(self.seed * 1_000_003 + step * self.batch + i, self.size)
            else:
                image, label = self._crop(*self.dataset[int(self.rng.integers(len(self.dataset)))])
            if self.rng.random() < 0.5:  # horizontal flip
                image, label = image[:, ::-1], label[:, ::-1]
            images.append(image)
            labels.append(label)
        return to_tensors(images, labels)

    def _crop(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        h, w = self.size
        scale = max(h / image.shape[0], w / image.shape[1]) * self.rng.uniform(1.0, 1.5)
        size = (max(w, round(image.shape[1] * scale)), max(h, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        y, x = int(self.rng.integers(image.shape[0] - h + 1)), int(self.rng.integers(image.shape[1] - w + 1))
        return image[y:y + h, x:x + w], label[y:y + h, x:x + w]


def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if len(getattr(model, "aux_heads", [])):
        logits, aux = model(x, return_aux=True)
        return F.cross_entropy(logits, y, ignore_index=IGNORE) + 0.4 * sum(F.cross_entropy(a, y, ignore_index=IGNORE) for a in aux)
    return F.cross_entropy(model(x), y, ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model: torch.nn.Module, num_classes: int, size: tuple[int, int], count: int) -> dict:
    """mIoU on ``count`` held-out synthetic scenes (seeds never used in training)."""
    model.eval()
    conf = np.zeros((num_classes, num_classes), np.int64)
    for i in range(count):
        image, label = render_scene(VAL_SEED + i, size)
        x, y = to_tensors([image], [label])
        pred = model(x).argmax(1).numpy().ravel()
        valid = label.ravel() != IGNORE
        conf += np.bincount(label.ravel()[valid].astype(np.int64) * num_classes + pred[valid],
                            minlength=num_classes**2).reshape(num_classes, num_classes)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {"miou": float(np.nanmean(iou)), "pixel_accuracy": float(tp.sum() / max(conf.sum(), 1)),
            "per_class_iou": [None if np.isnan(v) else round(float(v), 4) for v in iou]}


def train(model_name: str, data: str, steps: int, size: tuple[int, int], batch: int, lr: float, seed: int,
          log_every: int = 50, val_images: int = 20) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Denormal floats make CPU training crawl once activations and gradients get small (seen here: from
    # 0.6 s to minutes per step after about 100 steps); flushing them to zero costs no accuracy.
    torch.set_flush_denormal(True)
    batches = Batches(data, size, batch, seed)
    model = create_model(model_name, num_classes=len(batches.classes))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    losses, start = [], time.perf_counter()
    for step in range(steps):
        x, y = batches.get(step)
        loss = loss_fn(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps}  loss {np.mean(losses[-log_every:]):.4f}  "
                  f"{time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    info = {"model": model_name, "data": data, "steps": steps, "size": list(size), "batch": batch, "lr": lr,
            "seed": seed, "train_seconds": round(time.perf_counter() - start, 1), "losses": losses[:: max(1, steps // 50)],
            "classes": list(batches.classes), "palette": batches.palette, "torch": torch.__version__}
    if data == "synthetic" and val_images:
        info["validation"] = {"images": val_images, "size": list(size), **evaluate(model, len(batches.classes), size, val_images)}
    return model.eval(), info


def deployed_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights export needs: auxiliary training heads are left out."""
    skip = training_only_keys(model)
    return {k: v for k, v in model.state_dict().items() if k not in skip}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="synthetic", help="'synthetic' or a labelled folder (any layout export check reads)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--size", default="128x256", help="HxW of training crops")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core); fixes the result with the seed")
    p.add_argument("--out", required=True, help="where to save the state dict (.pt); a .json beside it records how")
    args = p.parse_args(argv)
    try:
        get_spec(args.model)
        size = tuple(int(v) for v in args.size.lower().split("x"))
        if len(size) != 2:
            raise ValueError
    except KeyError as exc:
        p.error(str(exc).strip("'\""))
    except ValueError:
        p.error(f"--size: expected HxW, got {args.size!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, info = train(args.model, args.data, args.steps, size, args.batch, args.lr, args.seed)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info["command"] = "python -m training " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(deployed_state_dict(model), out)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    val = info.get("validation")
    print(f"saved {out} ({out.stat().st_size / 2**20:.1f} MiB)" + (f"; validation mIoU {100 * val['miou']:.1f}" if val else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
