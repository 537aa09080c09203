"""Images in: reading a user's folder and the model's preprocessing (generated scenes: data/synthetic.py)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from data.layouts import IMAGE_SUFFIXES

from .errors import UserError


def list_images(folder: Path, purpose: str, limit: int | None = None) -> list[Path]:
    """Image files in ``folder`` (sorted, so runs are repeatable); a UserError when there are none."""
    if folder is None:
        raise UserError(f"{purpose}: no image folder is set; name one in pipeline.yaml")
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{purpose}: image folder {folder} does not exist; create it or fix the path in pipeline.yaml")
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise UserError(f"{purpose}: cannot read image folder {folder} ({exc.strerror})") from None
    if not files:
        raise UserError(f"{purpose}: image folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                        "add real images: random data is no substitute")
    return files[:limit] if limit else files


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot decode image {path}; remove it or replace it with a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def preprocess(rgb: np.ndarray, size: tuple[int, int], mean: list[float], std: list[float]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) float32, resized to ``size`` and normalized like training."""
    h, w = size
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    x = (rgb.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
