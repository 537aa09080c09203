"""Images in: reading a user's folder, the model's preprocessing, and generated test scenes."""
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


def synthetic_scene(seed: int, size: tuple[int, int] = (256, 512)) -> np.ndarray:
    """A deterministic street-like picture (sky, buildings, road, objects, noise), (H, W, 3) uint8 RGB.

    Stands in for camera frames where the user has named no folder, e.g. for speed checks. It is not
    a calibration set: INT8 calibration always reads a folder of images.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.zeros((h, w, 3), np.float32)
    horizon = int(h * rng.uniform(0.35, 0.55))
    t = np.linspace(0, 1, horizon)[:, None, None]
    img[:horizon] = (1 - t) * np.array([90, 140, 220]) + t * np.array([190, 210, 235])  # sky
    img[horizon:] = np.array([105, 100, 110]) * rng.uniform(0.8, 1.1)  # road
    x = 0
    while x < w:  # buildings along the horizon
        bw = int(rng.integers(max(1, w // 12), max(2, w // 4)))
        bh = int(rng.integers(max(1, horizon // 3), max(2, horizon)))
        img[horizon - bh:horizon, x:x + bw] = rng.integers(60, 200, 3)
        x += bw
    for _ in range(int(rng.integers(2, 6))):  # cars and people as blobs on the road
        cy, cx = int(rng.integers(horizon, h)), int(rng.integers(0, w))
        axes = (int(rng.integers(1, max(2, w // 8))), int(rng.integers(1, max(2, h // 8))))
        cv2.ellipse(img, (cx, cy), axes, 0, 0, 360,
                    tuple(float(c) for c in rng.integers(0, 255, 3)), -1)
    cv2.line(img, (w // 2, h), (w // 2, horizon), (240, 240, 240), max(1, w // 100))  # lane marking
    img *= rng.uniform(0.7, 1.2)  # lighting
    img += rng.normal(0, 6, img.shape)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8)
