"""The contract between the runtime's stages: sources produce Frames, the engine turns them into Results,
outputs consume Results. Every stage raises RuntimeFault (one line, says what to do) for problems a user
can fix; the CLI prints it and exits 1."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class RuntimeFault(Exception):
    """A problem the user can fix (missing file, unsupported URI, camera gone for good); one line."""


@dataclass
class Frame:
    index: int  # 0, 1, 2, ... in capture order (frames dropped later keep their numbers)
    image: np.ndarray  # (H, W, 3) uint8, BGR (OpenCV's order)
    timestamp: float  # time.monotonic() when captured
    capture_seconds: float = 0.0  # time spent reading/decoding this frame


@dataclass
class SourceInfo:
    uri: str
    live: bool  # True: latency-first (infer the newest frame, drop stale ones); False: every frame, in order
    fps: float | None = None  # nominal rate if known (files, cameras); None if unknown
    size: tuple[int, int] | None = None  # (H, W) of the first frame if known


class Source(ABC):
    """Frames from a camera, stream, file, folder or generator. ``read`` returns None at the end of the
    stream. Live network sources reconnect inside ``read`` (with backoff, reporting each attempt) and raise
    RuntimeFault when they give up. Corrupt frames are skipped and counted in ``counters``."""

    info: SourceInfo

    def __init__(self) -> None:
        self.counters: dict[str, int] = {"frames": 0, "corrupt": 0, "reconnects": 0}

    @abstractmethod
    def open(self) -> SourceInfo:
        """Open the source (RuntimeFault if it cannot be opened) and describe it."""

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream."""

    @abstractmethod
    def close(self) -> None:
        """Release the device, file or connection."""


@dataclass
class Result:
    frame: Frame
    classes: np.ndarray  # (h, w) uint8 class ids at the engine's input resolution (tiled: the frame's)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: capture, pre, infer, post, output
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Legend:
    names: list[str]
    palette: list[list[int]]  # RGB per class, from the engine's manifest


class Output(ABC):
    """Where rendered frames go. ``open`` is called once with the stream's description before the first
    ``write``; ``close`` must finalize files so they are playable, also after Ctrl-C."""

    @abstractmethod
    def open(self, info: SourceInfo, legend: Legend) -> None:
        ...

    @abstractmethod
    def write(self, result: Result, rendered: np.ndarray) -> None:
        """``rendered``: (H, W, 3) uint8 BGR, the view the user asked for, at the frame's resolution."""

    @abstractmethod
    def close(self) -> None:
        ...
