"""Turning a class map into something to look at: colour overlay, mask or side-by-side view, with a legend
of the classes in view and an FPS line, like jetson-inference's segNet overlay.

Everything is vectorized (a 256-entry palette lookup table, OpenCV resizes and blends); only the legend's
few rows are drawn one by one. A 720p overlay with legend takes a few milliseconds on one CPU core.
"""
from __future__ import annotations

import cv2
import numpy as np

from .types import Legend, RuntimeFault

VIEWS = ("overlay", "mask", "side-by-side")
ALL_CLASSES_UP_TO = 8  # legends this short are listed in full; longer ones list only the classes in view
FONT = cv2.FONT_HERSHEY_SIMPLEX


def palette_lut(legend: Legend) -> np.ndarray:
    """(256, 3) uint8 BGR colour per class id; ids the palette does not cover are black."""
    lut = np.zeros((256, 3), np.uint8)
    if legend.palette:
        rgb = np.asarray(legend.palette, np.int64).reshape(-1, 3)[:256]
        lut[:len(rgb)] = np.clip(rgb, 0, 255)[:, ::-1]  # the manifest stores RGB; OpenCV draws BGR
    return lut


def colorize(classes: np.ndarray, lut: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Class map (h, w) -> colour image (H, W, 3) BGR at ``size`` = (H, W), nearest-neighbour.

    Colouring and nearest-neighbour resizing commute, so the smaller of the two maps is coloured."""
    classes = _as_uint8(classes)
    h, w = size
    if classes.size > h * w:
        classes = cv2.resize(classes, (w, h), interpolation=cv2.INTER_NEAREST)
    colour = cv2.LUT(cv2.merge((classes, classes, classes)), lut.reshape(256, 1, 3))
    if colour.shape[:2] != (h, w):
        colour = cv2.resize(colour, (w, h), interpolation=cv2.INTER_NEAREST)
    return colour


def render(frame_bgr: np.ndarray, classes: np.ndarray, legend: Legend, view: str = "overlay",
           alpha: float = 0.5, show_legend: bool = True, stats_text: str | None = None) -> np.ndarray:
    """The view of one segmented frame, (H, W, 3) uint8 BGR (twice as wide for ``side-by-side``).

    ``classes`` is at the engine's resolution and is scaled to the frame with nearest-neighbour, so class
    borders stay hard. ``alpha`` is the weight of the class colours in the overlay. ``stats_text`` (e.g.
    FPS and latency; may hold several lines) is drawn top-left, the legend top-right. The input frame is
    never modified."""
    if view not in VIEWS:
        raise RuntimeFault(f"unknown view {view!r}; choose one of: {', '.join(VIEWS)}")
    if not 0.0 <= alpha <= 1.0:
        raise RuntimeFault(f"overlay alpha {alpha} is outside 0..1; use e.g. 0.5")
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8 BGR, got {frame_bgr.shape} {frame_bgr.dtype}")
    if classes.ndim != 2:
        raise ValueError(f"classes must be a (h, w) class-id map, got shape {classes.shape}")

    colour = colorize(classes, palette_lut(legend), frame_bgr.shape[:2])
    if view == "mask":
        out = colour
    else:
        overlay = cv2.addWeighted(frame_bgr, 1.0 - alpha, colour, alpha, 0.0)
        out = overlay if view == "overlay" else np.hstack((frame_bgr, overlay))

    row = _row_height(frame_bgr.shape[0])
    if show_legend:
        counts = np.bincount(_as_uint8(classes).ravel(), minlength=len(legend.names))
        draw_legend(out, legend, legend_classes(counts, legend), row, counts)
    if stats_text:
        draw_text_box(out, stats_text.splitlines(), row)
    return out


def legend_classes(counts: np.ndarray, legend: Legend) -> list[int]:
    """Class ids the legend lists, in id order: every class of a short legend, else the classes present.
    ``counts``: pixels per class id (``np.bincount`` of the class map)."""
    n = len(legend.names)
    present = [int(i) for i in np.flatnonzero(counts)]
    if n <= ALL_CLASSES_UP_TO:
        return list(range(n)) + [i for i in present if i >= n]
    return present


def class_name(legend: Legend, class_id: int) -> str:
    return legend.names[class_id] if class_id < len(legend.names) else f"class {class_id}"


def draw_legend(image: np.ndarray, legend: Legend, ids: list[int], row: int,
                counts: np.ndarray | None = None) -> None:
    """A box in the top-right corner: one colour swatch and name per class id, on a darkened background.
    When the rows do not fit, the classes with the most pixels (``counts``) are kept."""
    if not ids:
        return
    h, w = image.shape[:2]
    scale, thickness = _font(row)
    pad = max(3, row // 4)
    max_rows = max(1, (h - 2 * pad) // row)
    hidden = 0
    if len(ids) > max_rows:  # keep the largest classes, and say how many are left out
        hidden = len(ids) - (max_rows - 1)
        if counts is not None:
            ids = sorted(sorted(ids, key=lambda i: -counts[i])[:max_rows - 1])
        else:
            ids = ids[:max_rows - 1]
    labels = [class_name(legend, i) for i in ids] + ([f"+{hidden} more"] if hidden else [])
    text_w = max(cv2.getTextSize(label, FONT, scale, thickness)[0][0] for label in labels)
    swatch = row - 2 * max(2, row // 6)
    box_w = min(w, pad + swatch + pad + text_w + pad)
    box_h = min(h, pad + row * len(labels) + pad // 2)
    x0 = w - box_w
    _darken(image, x0, 0, box_w, box_h)
    lut = palette_lut(legend)
    for n, label in enumerate(labels):
        top = pad + n * row
        inset = (row - swatch) // 2
        if n < len(ids):
            colour = tuple(int(c) for c in lut[ids[n]])
            cv2.rectangle(image, (x0 + pad, top + inset), (x0 + pad + swatch, top + inset + swatch), colour, -1)
            cv2.rectangle(image, (x0 + pad, top + inset), (x0 + pad + swatch, top + inset + swatch),
                          (255, 255, 255), 1)
        baseline = top + row - inset - max(1, row // 10)
        cv2.putText(image, label, (x0 + 2 * pad + swatch, baseline), FONT, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)


def draw_text_box(image: np.ndarray, lines: list[str], row: int) -> None:
    """White text lines on a darkened box in the top-left corner."""
    h, w = image.shape[:2]
    scale, thickness = _font(row)
    pad = max(3, row // 4)
    text_w = max(cv2.getTextSize(line, FONT, scale, thickness)[0][0] for line in lines)
    box_w, box_h = min(w, text_w + 2 * pad), min(h, pad + row * len(lines) + pad // 2)
    _darken(image, 0, 0, box_w, box_h)
    for n, line in enumerate(lines):
        baseline = pad + (n + 1) * row - max(2, row // 4)
        cv2.putText(image, line, (pad, baseline), FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def _darken(image: np.ndarray, x: int, y: int, w: int, h: int) -> None:
    roi = image[y:y + h, x:x + w]
    cv2.convertScaleAbs(roi, roi, alpha=0.35)


def _row_height(frame_height: int) -> int:
    # Text scales with the frame, within limits that keep it readable on 240p and not huge on 4K.
    return int(np.clip(round(frame_height / 26), 16, 40))


def _font(row: int) -> tuple[float, int]:
    scale = row / 40
    return scale, 1 if row < 30 else 2


def _as_uint8(classes: np.ndarray) -> np.ndarray:
    if classes.dtype == np.uint8:
        return classes
    if classes.size and (classes.min() < 0 or classes.max() > 255):
        raise ValueError(f"class ids must be 0..255, got {classes.min()}..{classes.max()}")
    return classes.astype(np.uint8)
