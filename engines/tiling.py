"""Sliding-window (tiled) inference: an engine run over a frame of any size, one tile at a time.

The frame is covered by tiles of a fixed size (``--tile HxW``) placed every ``--stride HxW``; the logits of
every tile are added into a frame-sized sum with a count per pixel, and the sum is divided by the count, so
logits are averaged where tiles overlap. The grid is mmsegmentation's ``slide_inference``
(mmseg/models/segmentors/encoder_decoder.py): ``grids = max(H - tile + stride - 1, 0) // stride + 1`` per
dimension; a tile starts at ``index * stride``, ends at ``min(start + tile, H)`` and then starts at
``max(end - tile, 0)``, so the last tile of a row ends flush with the frame instead of running past it.

Where a frame is smaller than the tile in a dimension, mmsegmentation runs the model on the whole (smaller)
dimension. An engine only takes sizes its profile and size divisor allow, so here such a crop is padded at
the bottom and right with zeros (in normalized space: the mean colour) to the tile size, and the logits are
cropped back to the frame. ``slide`` does this for any ``infer`` function, so the PyTorch reference that
engines are checked against goes through the same padding, the same grid and the same averaging.

Tiling needs logits: an engine with argmax inside (``embed_pre_post``) returns class ids, which cannot be
averaged, and is refused. Numpy only: export/ (with PyTorch as ``infer``) and runtime/ both use this.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .base import EngineError, Runner
from .manifest import embeds_pre_post

_HW = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_hw(text: str, flag: str) -> tuple[int, int]:
    """``"256x512"`` -> (256, 512); a ValueError naming ``flag`` and the expected form otherwise."""
    match = _HW.match(text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise ValueError(f"{flag}: expected HEIGHTxWIDTH in pixels, each at least 1, e.g. 256x512; got {text!r}")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class Tiling:
    """Tile and stride, (H, W) each. A stride larger than the tile would leave pixels no tile covers."""

    tile: tuple[int, int]
    stride: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", tuple(int(v) for v in self.tile))
        object.__setattr__(self, "stride", tuple(int(v) for v in self.stride))
        if min(*self.tile, *self.stride) < 1:
            raise ValueError(f"--tile {_hw(self.tile)} --stride {_hw(self.stride)}: sizes must be at least 1x1")
        if self.stride[0] > self.tile[0] or self.stride[1] > self.tile[1]:
            raise ValueError(f"--stride {_hw(self.stride)} is larger than --tile {_hw(self.tile)}, which would leave "
                             "pixels no tile covers; give a stride at most the tile in each dimension")

    @classmethod
    def from_flags(cls, tile: str | None, stride: str | None = None) -> "Tiling | None":
        """From the command line's ``--tile`` and ``--stride`` (default: the tile, i.e. no overlap); None
        without ``--tile``. A ValueError whose message is the usage error otherwise."""
        if tile is None:
            if stride is not None:
                raise ValueError("--stride only applies with --tile HxW")
            return None
        size = parse_hw(tile, "--tile")
        return cls(size, parse_hw(stride, "--stride") if stride is not None else size)

    def describe(self) -> str:
        return f"tiles {_hw(self.tile)}, stride {_hw(self.stride)}"

    def as_dict(self) -> dict:
        return {"tile": list(self.tile), "stride": list(self.stride)}


def _hw(size) -> str:
    return f"{size[0]}x{size[1]}"


def _starts(length: int, tile: int, stride: int) -> list[tuple[int, int]]:
    grids = max(length - tile + stride - 1, 0) // stride + 1
    spans = []
    for index in range(grids):
        end = min(index * stride + tile, length)
        spans.append((max(end - tile, 0), end))
    return spans


def windows(height: int, width: int, tiling: Tiling) -> list[tuple[int, int, int, int]]:
    """The tiles over a ``height`` x ``width`` frame as (y1, y2, x1, x2), rows first, as mmsegmentation
    visits them. A tile is smaller than ``tiling.tile`` only where the frame is."""
    return [(y1, y2, x1, x2) for y1, y2 in _starts(height, tiling.tile[0], tiling.stride[0])
            for x1, x2 in _starts(width, tiling.tile[1], tiling.stride[1])]


def slide(images: np.ndarray, infer: Callable[[np.ndarray], np.ndarray], tiling: Tiling) -> np.ndarray:
    """Logits (N, C, H, W) for normalized ``images`` (N, 3, H, W): ``infer`` (a (N, 3, th, tw) tile -> its
    (N, C, th, tw) logits) on every tile, averaged where tiles overlap. Crops smaller than the tile (frames
    smaller than it) are zero-padded to it at the bottom and right; their logits are cropped back."""
    n, _, h, w = images.shape
    th, tw = tiling.tile
    total, count = None, np.zeros((h, w), np.float32)
    for y1, y2, x1, x2 in windows(h, w, tiling):
        crop = images[:, :, y1:y2, x1:x2]
        ch, cw = y2 - y1, x2 - x1
        if (ch, cw) != (th, tw):
            crop = np.pad(crop, ((0, 0), (0, 0), (0, th - ch), (0, tw - cw)))
        logits = np.asarray(infer(np.ascontiguousarray(crop)))[:, :, :ch, :cw]
        if total is None:
            total = np.zeros((n, logits.shape[1], h, w), np.float32)
        total[:, :, y1:y2, x1:x2] += logits
        count[y1:y2, x1:x2] += 1
    return total / count


def check_tiling(manifest: dict, tiling: Tiling, path: Path | str) -> None:
    """An EngineError saying what to do unless the engine at ``path`` can run ``tiling``: it must return
    logits, and the tile must be a size its profile takes (within input.min .. input.max, a multiple of
    its size divisor; a fixed-size engine takes only its own size), as its manifest records them."""
    if embeds_pre_post(manifest):
        raise EngineError(f"--tile needs logits to average, but {path} has the argmax inside (embed_pre_post: true) "
                          f"and returns class ids; rebuild {manifest.get('model', 'the model')} with "
                          "embed_pre_post: false in pipeline.yaml, or run without --tile")
    spec = manifest.get("input", {})
    size = tuple(spec.get("size", ()))
    low, high = tuple(spec.get("min") or size), tuple(spec.get("max") or size)
    divisor = int(spec.get("size_divisor") or 1)
    th, tw = tiling.tile
    if spec.get("dynamic_hw") is False and tiling.tile != size:
        raise EngineError(f"--tile {_hw(tiling.tile)}: {path} takes only {_hw(size)} (its model has a fixed input "
                          f"size); use --tile {_hw(size)}")
    if th % divisor or tw % divisor:
        raise EngineError(f"--tile {_hw(tiling.tile)}: {path} takes sizes that are multiples of {divisor}; choose "
                          f"a tile whose height and width are multiples of {divisor}, within {_hw(low)} .. {_hw(high)}")
    if not (low[0] <= th <= high[0] and low[1] <= tw <= high[1]):
        raise EngineError(f"--tile {_hw(tiling.tile)} is outside the sizes {path} was built for ({_hw(low)} .. "
                          f"{_hw(high)}, input.min/max in pipeline.yaml); choose a tile within them, or rebuild "
                          "with a wider input.min/max")


class TiledRunner(Runner):
    """Another runner, tiled: ``infer`` takes a normalized frame of any size under the inner runner's input
    name and returns the averaged logits of ``slide`` under its output name."""

    def __init__(self, inner: Runner, tiling: Tiling, input_name: str = "images", output_name: str = "logits") -> None:
        super().__init__()
        self.inner, self.tiling, self.input_name, self.output_name = inner, tiling, input_name, output_name
        self.name = f"{inner.name} (tiled)"

    def activate_impl(self) -> None:
        self.inner.activate()

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        run = lambda tile: self.inner.infer({self.input_name: tile})[self.output_name]  # noqa: E731
        return {self.output_name: slide(feed[self.input_name], run, self.tiling)}

    def deactivate_impl(self) -> None:
        self.inner.deactivate()
