"""How close an engine's logits are to PyTorch's (the build's parity gate, ``export check``), and mIoU against
labels (the build's accuracy guard, ``check --data``, benchmarks)."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from data import IGNORE


def confusion(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix, rows = reference class, columns = predicted class."""
    idx = ref.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(conf: np.ndarray) -> float:
    """mIoU over the classes present in either the reference or the prediction."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else 1.0


def compare(outputs: list[np.ndarray], references: list[np.ndarray]) -> dict[str, float]:
    """Max abs and relative L2 logit error, pixel agreement and mIoU of argmax maps (engine vs PyTorch)."""
    num_classes = references[0].shape[1]
    max_abs, num, den, agree, pixels = 0.0, 0.0, 0.0, 0, 0
    conf = np.zeros((num_classes, num_classes), np.int64)
    for out, ref in zip(outputs, references):
        out, ref = out.astype(np.float64), ref.astype(np.float64)
        if not np.isfinite(out).all():
            max_abs = float("inf")
        else:
            max_abs = max(max_abs, float(np.abs(out - ref).max()))
        num += float(((out - ref) ** 2).sum())
        den += float((ref**2).sum())
        p, r = out.argmax(1), ref.argmax(1)
        agree += int((p == r).sum())
        pixels += p.size
        conf += confusion(p, r, num_classes)
    return {
        "max_abs_error": max_abs,
        "rel_l2_error": float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num)),
        "pixel_agreement": agree / pixels,
        "miou_vs_pytorch": mean_iou(conf),
    }


def compare_classes(classes: list[np.ndarray], references: list[np.ndarray]) -> dict[str, float | None]:
    """For engines that output class maps (argmax inside the graph): agreement and mIoU only; there are no
    logits to compare."""
    num_classes = references[0].shape[1]
    conf = np.zeros((num_classes, num_classes), np.int64)
    agree = pixels = 0
    for pred, ref in zip(classes, references):
        r = ref.argmax(1)
        p = pred.reshape(r.shape).astype(np.int64)
        agree += int((p == r).sum())
        pixels += r.size
        conf += confusion(np.minimum(p, num_classes - 1), r, num_classes)
    return {"max_abs_error": None, "rel_l2_error": None, "pixel_agreement": agree / pixels,
            "miou_vs_pytorch": mean_iou(conf)}


def label_miou(predictions: Iterable[np.ndarray], labels: Iterable[np.ndarray], num_classes: int,
               ignore: int = IGNORE) -> float:
    """mIoU in points (0-100) of predicted class maps against label maps of the same shape; pixels labelled
    ``ignore`` are left out."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for pred, label in zip(predictions, labels):
        valid = label != ignore
        conf += confusion(pred[valid], label[valid], num_classes)
    return 100 * mean_iou(conf)
