"""Frames in: one URI picks the camera, stream, file, folder or generator, as in jetson-inference's segNet.

    0, 1, /dev/video0, v4l2:///dev/video0   USB/V4L2 camera (live)
    csi://0                                  Jetson CSI camera via nvarguscamerasrc (live; needs GStreamer)
    rtsp://, rtsps://, http://, https://     network camera: RTSP, MJPEG or HLS over FFmpeg (live; reconnects)
    clip.mp4 .avi .mkv .mov .webm, file://   video file (every frame, in order; fps from the container)
    photo.jpg, frames/, "frames/*.png"       images, one frame each, in natural sort order
    synthetic://?width=640&height=360&fps=30&frames=300&seed=0&live=0
                                             a moving street-like test scene, no camera needed

Live sources are latency-first (the runtime keeps only the newest frame); files, folders and synthetic://
are throughput-first (every frame, in order). synthetic:// is throughput-first because its uses are tests
and benchmarks, where every frame should count and nothing should wait on a clock; ``?live=1`` paces it at
``fps`` and makes it live, to try the latency-first path without a camera.

``open_source`` parses the URI and raises RuntimeFault for a malformed or unsupported one, or a missing
path; ``Source.open`` acquires the device, file or connection and reads the first frame, so that
``info.size`` is real and a source that opens but delivers nothing fails at once, not mid-run.
"""
from __future__ import annotations

import glob
import os
import re
import sys
import time
from abc import abstractmethod
from fractions import Fraction
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, unquote, urlsplit

import cv2
import numpy as np

from data import render_scene
from data.layouts import IMAGE_SUFFIXES
from data.synthetic import ROAD, SIDEWALK

from .types import Frame, RuntimeFault, Source, SourceInfo

Log = Callable[[str], None]

VIDEO_SUFFIXES = {".mp4", ".m4v", ".avi", ".mkv", ".mov", ".webm", ".ts", ".mpg", ".mpeg", ".flv", ".wmv"}
STREAM_SCHEMES = {"rtsp", "rtsps", "http", "https"}
SUPPORTED = ("supported: a camera (0, /dev/video0, v4l2:///dev/video0, csi://0), a stream (rtsp://, rtsps://, "
             "http(s)://), a video file (.mp4 .avi .mkv .mov .webm, or file://...), an image, a folder or a glob "
             "of images (\"frames/*.png\"), or synthetic://?width=640&height=360")

# Reconnecting a lost stream: the first attempt at once, then waits doubling from 0.5 s to 5 s between them.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 5.0


def print_to_stderr(message: str) -> None:
    """The default ``log``: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def open_source(uri: str, *, width: int | None = None, height: int | None = None, fps: float | None = None,
                reconnect_timeout: float = 30.0, log: Log = print_to_stderr) -> Source:
    """The Source for ``uri`` (not yet opened). ``width``/``height``/``fps`` are requests to cameras and the
    default size and rate of synthetic://; files and streams have their own and ignore them (with a log line).
    ``reconnect_timeout``: how long a lost network stream is retried before RuntimeFault."""
    uri = uri.strip()
    if not uri:
        raise RuntimeFault(f"no input given; {SUPPORTED}")
    requested = dict(width=width, height=height, fps=fps)
    if uri.isdigit():
        return V4L2Camera(f"/dev/video{uri}", uri, log=log, **requested)
    if uri.startswith("/dev/"):
        return V4L2Camera(uri, uri, log=log, **requested)
    scheme = uri.split("://", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri) else ""
    if scheme == "v4l2":
        parts = urlsplit(uri)
        device = parts.path or parts.netloc  # v4l2:///dev/video0, or v4l2://0
        if not device:
            raise RuntimeFault(f"'{uri}': name the device, e.g. v4l2:///dev/video0")
        return V4L2Camera(f"/dev/video{device}" if device.isdigit() else device, uri, log=log, **requested)
    if scheme == "csi":
        sensor = urlsplit(uri).netloc
        if not sensor.isdigit():
            raise RuntimeFault(f"'{uri}': a CSI camera is csi://N with N the sensor id, e.g. csi://0")
        return CSICamera(int(sensor), uri, log=log, **requested)
    if scheme == "synthetic":
        return SyntheticSource.from_uri(uri, **requested)
    if scheme in STREAM_SCHEMES:
        _ignore_requests(uri, requested, log)
        if Path(urlsplit(uri).path).suffix.lower() in VIDEO_SUFFIXES and scheme.startswith("http"):
            return VideoFile(uri, uri, log=log)  # a clip on a web server is a file, not a camera
        # HLS arrives a segment (typically 2-10 s) at a time: a shorter read timeout would cut it off
        hls = urlsplit(uri).path.lower().endswith(".m3u8")
        return NetworkStream(uri, reconnect_timeout=reconnect_timeout, read_timeout=20.0 if hls else 5.0, log=log)
    if scheme == "file":
        parts = urlsplit(uri)
        return _open_path(unquote(parts.netloc + parts.path), uri, requested, log)
    if scheme:
        raise RuntimeFault(f"unsupported input '{_redact(uri)}'; {SUPPORTED}")
    return _open_path(uri, uri, requested, log)


def _open_path(path: str, uri: str, requested: dict, log: Log) -> Source:
    """A local video, image, folder or glob."""
    if any(c in path for c in "*?["):
        files = [Path(p) for p in glob.glob(path, recursive=True)]
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not images:
            raise RuntimeFault(f"no images match '{uri}' ({len(files)} files matched, none with an image "
                               f"suffix: {' '.join(sorted(IMAGE_SUFFIXES))}); {SUPPORTED}")
        _ignore_requests(uri, requested, log)
        return ImageSource(images, uri, log=log)
    p = Path(path)
    if p.is_dir():
        try:
            images = [f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        except OSError as exc:
            raise RuntimeFault(f"cannot read folder '{uri}' ({exc.strerror})") from None
        if not images:
            raise RuntimeFault(f"folder '{uri}' has no images ({' '.join(sorted(IMAGE_SUFFIXES))})")
        _ignore_requests(uri, requested, log)
        return ImageSource(images, uri, log=log)
    if not p.exists():
        raise RuntimeFault(f"input '{uri}' not found: no such file, folder or device; {SUPPORTED}")
    suffix = p.suffix.lower()
    _ignore_requests(uri, requested, log)
    if suffix in IMAGE_SUFFIXES:
        return ImageSource([p], uri, log=log)
    if suffix in VIDEO_SUFFIXES:
        return VideoFile(str(p), uri, log=log)
    raise RuntimeFault(f"'{uri}' is neither a video ({' '.join(sorted(VIDEO_SUFFIXES))}) nor an image "
                       f"({' '.join(sorted(IMAGE_SUFFIXES))}); convert it, or rename it if the suffix is wrong")


def _ignore_requests(uri: str, requested: dict, log: Log) -> None:
    given = [f"{k}={v}" for k, v in requested.items() if v is not None]
    if given:
        log(f"{_redact(uri)}: {', '.join(given)} ignored (they apply to cameras and synthetic://)")


def _redact(uri: str) -> str:
    """``uri`` with any password replaced, for messages and logs: camera URLs often carry credentials."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def _as_bgr(image: np.ndarray | None) -> np.ndarray | None:
    """(H, W, 3) uint8 BGR, or None for an empty or unusable frame."""
    if image is None or image.size == 0 or image.dtype != np.uint8:
        return None
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    return None


def _frame(source: Source, image: np.ndarray, started: float, finished: float | None = None) -> Frame:
    """Number and time-stamp the next frame of ``source``, captured between ``started`` and ``finished``."""
    finished = time.monotonic() if finished is None else finished
    frame = Frame(index=source.counters["frames"], image=image, timestamp=finished,
                  capture_seconds=finished - started)
    source.counters["frames"] += 1
    return frame


class _CaptureSource(Source):
    """What the sources read through cv2.VideoCapture share: frames normalized to BGR uint8, empty ones
    skipped and counted, and the first frame read by ``open``. Subclasses say how to connect and what a
    failed read means (the end of a file, a camera gone, a stream to reconnect)."""

    live = True

    def __init__(self, uri: str, log: Log) -> None:
        super().__init__()
        self.uri, self.name, self.log = uri, _redact(uri), log
        self._cap: cv2.VideoCapture | None = None
        self._first: tuple | None = None  # (image, started, finished): read by open(), given by the first read()

    @abstractmethod
    def _connect(self) -> cv2.VideoCapture:
        """An opened capture, or RuntimeFault saying why not."""

    @abstractmethod
    def _lost(self) -> np.ndarray | None:
        """After a failed read: a frame to go on with, None for the end of the stream, or RuntimeFault."""

    def _fps(self) -> float | None:
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        return float(fps) if 0 < fps <= 1000 else None  # streams report 0, or a clock rate like 90000

    def open(self) -> SourceInfo:
        self._cap = self._connect()
        started = time.monotonic()
        image = self._read_image()
        if image is None:
            self.close()
            raise RuntimeFault(f"{self.name} opened but delivered no frame; check that it is a working video "
                               "source (play it with ffplay or VLC)")
        self._first = (image, started, time.monotonic())
        self.info = SourceInfo(self.uri, live=self.live, fps=self._fps(), size=image.shape[:2])
        return self.info

    def read(self) -> Frame | None:
        if self._first is not None:
            (image, started, finished), self._first = self._first, None
            return _frame(self, image, started, finished)
        if self._cap is None:
            raise RuntimeError(f"{self.name}: read() before open() or after close()")
        started = time.monotonic()
        image = self._read_image()
        if image is None:
            image = self._lost()
        return None if image is None else _frame(self, image, started)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._first = None

    def _read_image(self) -> np.ndarray | None:
        """The next non-empty frame; None when the capture reports failure."""
        for _ in range(100):  # bounded: a device that only ever returns empty frames is a failure
            ok, image = self._cap.read()
            if not ok:
                return None
            bgr = _as_bgr(image)
            if bgr is not None:
                return bgr
            self._skipped(1, "empty frame")
        return None

    def _read_past_damage(self, tries: int) -> np.ndarray | None:
        """After one failed read, try ``tries`` more: OpenCV fails a read on an undecodable frame and then
        goes on with the next one, while the end of a file or a dead link keeps failing."""
        for failures in range(1, tries + 1):
            image = self._read_image()
            if image is not None:
                self._skipped(failures, "undecodable frame")
                return image
        return None

    def _skipped(self, count: int, what: str) -> None:
        self.counters["corrupt"] += count
        self.log(f"{self.name}: skipped {count} {what}{'s' if count > 1 else ''} after frame "
                 f"{self.counters['frames']}")


class V4L2Camera(_CaptureSource):
    """A USB (UVC) or other V4L2 camera, with the requested resolution and rate if it offers them."""

    def __init__(self, device: str, uri: str, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None, log: Log = print_to_stderr) -> None:
        super().__init__(uri, log)
        self.device, self.width, self.height, self.fps = device, width, height, fps

    def _connect(self) -> cv2.VideoCapture:
        if not os.path.exists(self.device):
            present = " ".join(sorted(glob.glob("/dev/video*"))) or "none"
            raise RuntimeFault(f"camera {self.device} not found; cameras present: {present}; check the cable, "
                               "or list them with v4l2-ctl --list-devices")
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            raise RuntimeFault(f"camera {self.device} exists but cannot be opened; is another program using it, "
                               "is this user outside the 'video' group, or is it a UVC metadata node (try the "
                               "next /dev/video*)?")
        if self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        return cap

    def open(self) -> SourceInfo:
        info = super().open()
        h, w = info.size
        if self.width and self.height and (w, h) != (self.width, self.height):
            self.log(f"camera {self.device} delivers {w}x{h}, not the requested {self.width}x{self.height} "
                     "(see its modes with v4l2-ctl --list-formats-ext)")
        return info

    def _fps(self) -> float | None:
        return super()._fps() or self.fps

    def _lost(self) -> np.ndarray | None:
        image = self._read_past_damage(3)
        if image is None:
            raise RuntimeFault(f"camera {self.device} stopped delivering frames (unplugged?); check the cable "
                               "and start again")
        return image


def has_gstreamer() -> bool:
    """Whether this OpenCV can open GStreamer pipelines (JetPack's can; the PyPI wheels cannot)."""
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


class CSICamera(_CaptureSource):
    """A Jetson CSI (MIPI) camera through nvarguscamerasrc, as in TENSORRT_NOTES.md's "Jetson camera"."""

    def __init__(self, sensor_id: int, uri: str, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None, log: Log = print_to_stderr) -> None:
        super().__init__(uri, log)
        self.sensor_id, self.width, self.height, self.fps = sensor_id, width or 1280, height or 720, fps or 30.0

    def pipeline(self) -> str:
        rate = Fraction(self.fps).limit_denominator(1001)
        # appsink drop=true max-buffers=1: a slow reader gets the newest frame, not a growing queue
        return (f"nvarguscamerasrc sensor-id={self.sensor_id} ! video/x-raw(memory:NVMM), width={self.width}, "
                f"height={self.height}, framerate={rate.numerator}/{rate.denominator} ! nvvidconv flip-method=0 ! "
                "video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1")

    def _connect(self) -> cv2.VideoCapture:
        if not has_gstreamer():
            raise RuntimeFault(f"{self.uri} needs OpenCV built with GStreamer, which this one is not (PyPI's "
                               "opencv-python wheels never are); on Jetson use JetPack's OpenCV, e.g. a venv "
                               "made with --system-site-packages and no opencv-python installed in it")
        cap = cv2.VideoCapture(self.pipeline(), cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            raise RuntimeFault(f"CSI camera {self.sensor_id} cannot be opened at {self.width}x{self.height}@"
                               f"{self.fps:g}; check the ribbon cable and the sensor id, and restart the camera "
                               "daemon: sudo systemctl restart nvargus-daemon")
        return cap

    def _fps(self) -> float | None:
        return self.fps

    def _lost(self) -> np.ndarray | None:
        image = self._read_past_damage(3)
        if image is None:
            raise RuntimeFault(f"CSI camera {self.sensor_id} stopped delivering frames; restart the camera "
                               "daemon (sudo systemctl restart nvargus-daemon) and start again")
        return image


class NetworkStream(_CaptureSource):
    """An IP camera or stream read by OpenCV's FFmpeg backend (RTSP over TCP first, as OpenCV asks FFmpeg
    for unless OPENCV_FFMPEG_CAPTURE_OPTIONS says otherwise). A lost stream is reconnected inside ``read``
    with backoff, each attempt logged; RuntimeFault after ``reconnect_timeout`` seconds without success.

    A stream that stalls (connection up, no data) is lost after ``read_timeout``. This is checked here,
    not left to OpenCV: after a read timeout OpenCV still returns the frames held in FFmpeg's decoder, one
    read timeout each, so a stall would otherwise take several timeouts to notice and deliver stale frames.
    """

    def __init__(self, uri: str, *, reconnect_timeout: float = 30.0, open_timeout: float = 10.0,
                 read_timeout: float = 5.0, log: Log = print_to_stderr) -> None:
        super().__init__(uri, log)
        self.reconnect_timeout, self.open_timeout, self.read_timeout = reconnect_timeout, open_timeout, read_timeout
        self._stalled = False

    def _connect(self, open_timeout: float | None = None) -> cv2.VideoCapture:
        params = []
        if hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):  # OpenCV >= 4.5.4; the default is 30 s each
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(1000 * (open_timeout or self.open_timeout)),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(1000 * self.read_timeout)]
        cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            raise RuntimeFault(f"cannot open stream {self.name}; check the URL and credentials, and that the "
                               "camera is on and reachable (try it with ffplay or VLC)")
        return cap

    def _read_image(self) -> np.ndarray | None:
        started = time.monotonic()
        image = super()._read_image()
        self._stalled = time.monotonic() - started >= 0.9 * self.read_timeout
        return None if self._stalled else image

    def _lost(self) -> np.ndarray | None:
        if not self._stalled:  # a fast failure may be one undecodable frame
            image = self._read_past_damage(2)
            if image is not None:
                return image
        return self._reconnect()

    def _reconnect(self) -> np.ndarray:
        self.close()
        lost_at, wait, attempt = time.monotonic(), BACKOFF_FIRST, 0
        while True:
            attempt += 1
            elapsed = time.monotonic() - lost_at
            self.log(f"{self.name}: stream lost; reconnect attempt {attempt} "
                     f"({elapsed:.1f} s of {self.reconnect_timeout:g} s)")
            try:
                # no attempt may hold on much past the deadline
                self._cap = self._connect(min(self.open_timeout, max(1.0, self.reconnect_timeout - elapsed)))
                image = self._read_image()
            except RuntimeFault:
                image = None
            if image is not None:
                self.counters["reconnects"] += 1
                self.log(f"{self.name}: reconnected after {time.monotonic() - lost_at:.1f} s")
                return image
            self.close()
            remaining = self.reconnect_timeout - (time.monotonic() - lost_at)
            if remaining <= 0:
                raise RuntimeFault(f"stream {self.name} lost for {time.monotonic() - lost_at:.0f} s; gave up "
                                   f"after {attempt} attempts; check that the camera is on and reachable, or "
                                   "allow longer with --reconnect-timeout")
            time.sleep(min(wait, remaining))
            wait = min(2 * wait, BACKOFF_MAX)


class VideoFile(_CaptureSource):
    """A video file (or a clip on a web server): every frame in order, then None. Throughput-first."""

    live = False

    def __init__(self, path: str, uri: str, *, log: Log = print_to_stderr) -> None:
        super().__init__(uri, log)
        self.path = path

    def _connect(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            raise RuntimeFault(f"cannot read video {self.name}: damaged, or a format FFmpeg does not know; "
                               "check that it plays (ffplay or VLC)")
        return cap

    def _lost(self) -> np.ndarray | None:
        image = self._read_past_damage(10)
        if image is None:
            total = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if total > 0 and self.counters["frames"] + self.counters["corrupt"] < total - 1:
                self.log(f"{self.name}: ended after {self.counters['frames']} of {total} frames (the rest does "
                         "not decode)")
        return image


class ImageSource(Source):
    """Image files, one frame each, in natural sort order (frame2 before frame10). Unreadable files are
    skipped, counted and logged. Throughput-first; each image keeps its own size."""

    def __init__(self, paths: list[Path], uri: str, *, log: Log = print_to_stderr) -> None:
        super().__init__()
        self.paths = sorted(paths, key=_natural_key)
        self.uri, self.log = uri, log
        self._next = 0
        self._first: tuple | None = None  # (image, started, finished), as in _CaptureSource

    def open(self) -> SourceInfo:
        started = time.monotonic()
        image = self._read_image()
        if image is None:
            raise RuntimeFault(f"none of the {len(self.paths)} images in '{self.uri}' can be read; replace them "
                               "with readable images")
        self._first = (image, started, time.monotonic())
        self.info = SourceInfo(self.uri, live=False, fps=None, size=image.shape[:2])
        return self.info

    def read(self) -> Frame | None:
        if self._first is not None:
            (image, started, finished), self._first = self._first, None
            return _frame(self, image, started, finished)
        started = time.monotonic()
        image = self._read_image()
        return None if image is None else _frame(self, image, started)

    def close(self) -> None:
        self._next = len(self.paths)
        self._first = None

    def _read_image(self) -> np.ndarray | None:
        while self._next < len(self.paths):
            path = self.paths[self._next]
            self._next += 1
            image = _as_bgr(cv2.imread(str(path), cv2.IMREAD_COLOR))
            if image is not None:
                return image
            self.counters["corrupt"] += 1
            self.log(f"skipped {path}: not a readable image")
        return None


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


class SyntheticSource(Source):
    """A generated street scene (data/synthetic.py's, the demo weights' training distribution) with cars and
    pedestrians moving across, deterministic for a seed: the scene is drawn once and the movers on a copy of
    it per frame.

    Throughput-first by default (tests and benchmarks: no clock to wait on); ``live=True`` paces frames at
    ``fps`` like a camera: a reader that falls behind gets the next frame at once, never a burst of backlog.
    """

    OPTIONS = {"width": int, "height": int, "fps": float, "frames": int, "seed": int, "live": int}

    def __init__(self, uri: str = "synthetic://", *, width: int = 640, height: int = 360, fps: float = 30.0,
                 frames: int | None = None, seed: int = 0, live: bool = False) -> None:
        super().__init__()
        self.uri, self.size, self.fps, self.frames, self.seed, self.live = (
            uri, (height, width), fps, frames, seed, live)
        self._background: np.ndarray | None = None
        self._movers: list[tuple] = []
        self._due = 0.0

    @classmethod
    def from_uri(cls, uri: str, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None) -> SyntheticSource:
        """Options from the query string win over the ``width``/``height``/``fps`` given by the caller."""
        options: dict = {k: v for k, v in dict(width=width, height=height, fps=fps).items() if v is not None}
        for key, value in parse_qsl(urlsplit(uri).query, keep_blank_values=True):
            if key not in cls.OPTIONS:
                raise RuntimeFault(f"'{uri}': unknown option '{key}'; synthetic:// takes "
                                   f"{', '.join(cls.OPTIONS)}, e.g. synthetic://?width=640&height=360&fps=30")
            try:
                options[key] = cls.OPTIONS[key](value)
            except ValueError:
                raise RuntimeFault(f"'{uri}': {key}={value!r} is not a number") from None
        for key in ("width", "height", "fps", "frames"):
            if key in options and not options[key] > 0:
                raise RuntimeFault(f"'{uri}': {key} must be positive, got {options[key]:g}")
        options["live"] = bool(options.get("live", 0))
        return cls(uri, **options)

    def open(self) -> SourceInfo:
        self._background, self._movers = _street(self.size, self.seed)
        self._due = time.monotonic()
        self.info = SourceInfo(self.uri, live=self.live, fps=self.fps, size=self.size)
        return self.info

    def read(self) -> Frame | None:
        if self._background is None:
            raise RuntimeError(f"{self.uri}: read() before open() or after close()")
        index = self.counters["frames"]
        if self.frames is not None and index >= self.frames:
            return None
        started = time.monotonic()
        if self.live:
            period = 1.0 / self.fps
            if started < self._due:
                time.sleep(self._due - started)
            elif started - self._due > period:  # the reader fell behind: a camera would have moved on
                self._due = started
            self._due += period
        return _frame(self, self.scene(index), started)

    def close(self) -> None:
        self._background = None

    def scene(self, index: int) -> np.ndarray:
        """Frame ``index`` of the scene, (H, W, 3) uint8 BGR."""
        h, w = self.size
        image = self._background.copy()
        for kind, y, x0, speed, scale, color in self._movers:
            span = w + 4 * scale
            x = int((x0 + speed * index) % span - 2 * scale)
            if kind == "car":
                _draw_car(image, x, y, scale, color)
            else:
                _draw_person(image, x, y, scale, color, step=(index // 4) % 2)
        return image


def _street(size: tuple[int, int], seed: int) -> tuple[np.ndarray, list[tuple]]:
    """The still scene, BGR, drawn by the project's one scene generator (data/synthetic.py: the scenes the
    demo weights were trained on), and the objects that move across it: cars in two lanes of its road
    driving opposite ways, pedestrians on its sidewalk. Each mover is (kind, y of the ground contact, x at
    frame 0, pixels per frame, scale, BGR colour); its rows are the ones where the scene's labels show the
    most road (or sidewalk), so cars drive on the road whatever the camera's random pose."""
    rgb, label = render_scene(seed, size)
    rng = np.random.default_rng(seed + 1)
    h, w = size

    def rows_of(cls: int, fallback: float) -> np.ndarray:
        share = (label == cls).mean(axis=1)  # (H,) fraction of each row that is ``cls``
        rows = np.flatnonzero(share >= 0.5 * share.max()) if share.max() > 0 else np.array([])
        return rows if rows.size else np.array([int(h * fallback)])

    road, sidewalk = rows_of(ROAD, 0.85), rows_of(SIDEWALK, 0.6)
    movers = []
    lanes = ((int(np.percentile(road, 40)), 1), (int(np.percentile(road, 90)), -1))  # far, near
    for y, direction in lanes:
        scale = max(2, int(y - road.min() + h // 12) // 8)  # nearer lanes (lower rows) show bigger cars
        count, speed = int(rng.integers(2, 4)), direction * float(rng.uniform(0.006, 0.015)) * w
        for k in range(count):  # one speed per lane, spread out, so cars never drive through each other
            color = tuple(int(c) for c in rng.integers(20, 235, 3))
            x0 = (k + float(rng.uniform(0, 0.3))) * (w + 4 * scale) / count
            movers.append(("car", y, x0, speed, scale, color))
    for _ in range(int(rng.integers(2, 5))):
        color = tuple(int(c) for c in rng.integers(20, 235, 3))
        movers.append(("person", int(rng.choice(sidewalk)), float(rng.uniform(0, w)),
                       float(rng.choice([-1, 1]) * rng.uniform(0.002, 0.005)) * w, max(2, h // 30), color))
    return np.ascontiguousarray(rgb[..., ::-1]), movers


def _draw_car(image: np.ndarray, x: int, y: int, s: int, color: tuple) -> None:
    cv2.rectangle(image, (x - 2 * s, y - s), (x + 2 * s, y - s // 4), color, -1)  # body
    cv2.rectangle(image, (x - s, y - 2 * s + s // 3), (x + s, y - s), tuple(c // 2 for c in color), -1)  # cabin
    for wx in (x - 3 * s // 2, x + 3 * s // 2):
        cv2.circle(image, (wx, y - s // 4), max(1, s // 2), (25, 25, 25), -1)  # wheels


def _draw_person(image: np.ndarray, x: int, y: int, s: int, color: tuple, step: int) -> None:
    stride = s // 2 if step else -s // 2
    cv2.line(image, (x, y - s), (x - stride, y), (40, 40, 60), max(1, s // 3))  # legs
    cv2.line(image, (x, y - s), (x + stride, y), (40, 40, 60), max(1, s // 3))
    cv2.ellipse(image, (x, y - 2 * s), (max(1, s // 2), s), 0, 0, 360, color, -1)  # body
    cv2.circle(image, (x, y - 3 * s - s // 3), max(1, s // 2), (120, 160, 210), -1)  # head
