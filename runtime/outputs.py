"""Where rendered frames go, chosen by URI like jetson-inference's videoOutput: an OpenCV window, a video
file, an image folder, a JSON-lines log of per-frame class statistics, or a browser (an MJPEG server).

    open_output("display://")            an OpenCV window (needs a GUI build of OpenCV)
    open_output("out.mp4")               a video file (.mp4, .avi, .mkv), finalized on close
    open_output("frames/")               one image per frame, named by frame index (folder://path too)
    open_output("results.jsonl")         one JSON line per frame: class fractions and timings
    open_output("http://127.0.0.1:8080") live view in a browser: /, /stream.mjpg, /frame.jpg, /stats.json
"""
from __future__ import annotations

import errno
import html
import json
import os
import re
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np

from .render import class_name
from .types import Legend, Output, Result, RuntimeFault, SourceInfo

SUPPORTED = ("display:// (an OpenCV window)",
             "out.mp4, out.avi or out.mkv (a video file)",
             "frames/ or folder://path (one image per frame)",
             "results.jsonl (class fractions and timings per frame)",
             "http://HOST:PORT (live view in a browser; HOST defaults to 127.0.0.1)")
VIDEO_FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
DEFAULT_FPS = 30.0


def open_output(uri: str, **options: Any) -> Output:
    """The Output a URI names (see the module docstring). ``options`` tune it: ``title`` (display, http),
    ``fps`` and ``fourcc`` (video), ``ext`` and ``quality`` (image folder), ``quality`` (http)."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", uri)
    scheme, rest = (match.group(1).lower(), match.group(2)) if match else ("", uri)
    if scheme == "display":
        _check_options(uri, options, {"title"})
        return DisplayOutput(rest or "0", **options)
    if scheme == "http":
        _check_options(uri, options, {"quality", "title"})
        host, port = _host_port(uri)
        return MjpegServerOutput(host, port, **options)
    if scheme == "folder":
        _check_options(uri, options, {"ext", "quality"})
        return ImageFolderOutput(Path(rest), **options)
    if scheme == "file":
        uri = rest
    elif scheme:
        raise _unsupported(uri)

    path = Path(uri)
    if uri.endswith(("/", os.sep)) or path.is_dir():
        _check_options(uri, options, {"ext", "quality"})
        return ImageFolderOutput(path, **options)
    suffix = path.suffix.lower()
    if suffix in VIDEO_FOURCC:
        _check_options(uri, options, {"fps", "fourcc"})
        return VideoFileOutput(path, **options)
    if suffix == ".jsonl":
        _check_options(uri, options, set())
        return JsonLinesOutput(path)
    raise _unsupported(uri)


def class_fractions(classes: np.ndarray, legend: Legend) -> dict[str, float]:
    """Class name -> fraction of the map's pixels, for the classes present, in id order."""
    counts = np.bincount(classes.ravel(), minlength=len(legend.names))
    total = max(1, classes.size)
    return {class_name(legend, int(i)): round(float(counts[i]) / total, 6) for i in np.flatnonzero(counts)}


# --- an OpenCV window -------------------------------------------------------------------------------------

class DisplayOutput(Output):
    """An OpenCV window. Closing it, or pressing Esc or q in it, raises KeyboardInterrupt from ``write``,
    so the pipeline stops exactly as on Ctrl-C (outputs are closed and files finalized)."""

    def __init__(self, display: str = "0", title: str = "segmentation") -> None:
        if not gui_available():
            raise RuntimeFault("display:// needs a GUI build of OpenCV: pip install opencv-python "
                               "(instead of opencv-python-headless)")
        self.title = title if display in ("", "0") else f"{title} {display}"
        self._open = False

    def open(self, info: SourceInfo, legend: Legend) -> None:
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:  # e.g. a GUI build on a machine without a display ($DISPLAY unset)
            raise RuntimeFault(f"display:// cannot open a window ({_cv_message(exc)}); run on a desktop, "
                               "or use an http:// output and watch in a browser") from None
        self._open = True

    def write(self, result: Result, rendered: np.ndarray) -> None:
        cv2.imshow(self.title, rendered)
        key = cv2.waitKey(1) & 0xFF
        if key in (27, ord("q")) or cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            raise KeyboardInterrupt("display window closed")

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass  # the user already closed it


def gui_available() -> bool:
    """Whether this OpenCV build can open windows (opencv-python-headless cannot)."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return match is None or match.group(1).upper() != "NONE"


# --- files --------------------------------------------------------------------------------------------------

class VideoFileOutput(Output):
    """A video file written with cv2.VideoWriter (mp4v for .mp4 and .mkv, MJPG for .avi). The size is the
    first frame's (later frames of another size are resized to it); the rate is the source's, else 30.

    Frames go to a hidden temporary name beside the target (``.out.partial.mp4``), renamed on ``close``:
    an interrupted run never leaves a half-written file under the final name."""

    def __init__(self, path: Path, fps: float | None = None, fourcc: str | None = None) -> None:
        self.path = Path(path)
        self.temp_path = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.fourcc = fourcc or VIDEO_FOURCC[self.path.suffix.lower()]
        self._fps = fps
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (W, H), as OpenCV wants it
        self.frames = 0

    def open(self, info: SourceInfo, legend: Legend) -> None:
        fps = self._fps or info.fps
        # Cameras and streams often report 0 or nonsense rates; a player needs a plausible one.
        self._fps = float(fps) if fps and 0 < fps <= 1000 else DEFAULT_FPS

    def write(self, result: Result, rendered: np.ndarray) -> None:
        if self._writer is None:
            self._start(rendered)
        if (rendered.shape[1], rendered.shape[0]) != self._size:
            rendered = cv2.resize(rendered, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(rendered)
        self.frames += 1

    def _start(self, first: np.ndarray) -> None:
        self._size = (first.shape[1], first.shape[0])
        _make_parent(self.path)
        writer = cv2.VideoWriter(str(self.temp_path), cv2.VideoWriter_fourcc(*self.fourcc),
                                 self._fps or DEFAULT_FPS, self._size)
        if not writer.isOpened():
            raise RuntimeFault(f"cannot write video {self.path} with codec {self.fourcc} at {self._size[0]}x"
                               f"{self._size[1]}; write .avi (MJPG) or an image folder (frames/) instead")
        self._writer = writer

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.release()  # writes the container's index; without it the file does not play
        self._writer = None
        os.replace(self.temp_path, self.path)


class ImageFolderOutput(Output):
    """One image per frame, named by frame index (``000123.jpg``), in a folder created if needed."""

    def __init__(self, folder: Path, ext: str = "jpg", quality: int = 90) -> None:
        self.folder = Path(folder)
        self.ext = ext.lower().lstrip(".")
        if self.ext not in ("jpg", "jpeg", "png"):
            raise RuntimeFault(f"image folder output: unsupported image type {ext!r}; use jpg or png")
        self.params = ([cv2.IMWRITE_PNG_COMPRESSION, 1] if self.ext == "png"  # fast: frames arrive at video rate
                       else [cv2.IMWRITE_JPEG_QUALITY, int(quality)])

    def open(self, info: SourceInfo, legend: Legend) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeFault(f"cannot create output folder {self.folder} ({exc.strerror}); "
                               "choose a writable folder") from None

    def write(self, result: Result, rendered: np.ndarray) -> None:
        path = self.folder / f"{result.frame.index:06d}.{self.ext}"
        if not cv2.imwrite(str(path), rendered, self.params):
            raise RuntimeFault(f"cannot write {path}; is the disk full or the folder read-only?")

    def close(self) -> None:
        pass


class JsonLinesOutput(Output):
    """One JSON object per frame and line: ``index``, ``timestamp`` (the capture's time.monotonic()),
    ``classes`` (name -> pixel fraction, present classes only) and ``timings_ms``. Each line is flushed
    as written, so an interrupted run leaves every finished line readable."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = None
        self._legend = Legend([], [])

    def open(self, info: SourceInfo, legend: Legend) -> None:
        self._legend = legend
        try:
            _make_parent(self.path)
            self._file = open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise RuntimeFault(f"cannot write {self.path} ({exc.strerror}); choose a writable path") from None

    def write(self, result: Result, rendered: np.ndarray) -> None:
        record = {"index": result.frame.index,
                  "timestamp": round(result.frame.timestamp, 6),
                  "classes": class_fractions(result.classes, self._legend),
                  "timings_ms": {name: round(seconds * 1000, 3) for name, seconds in result.timings.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- a browser: MJPEG over HTTP -----------------------------------------------------------------------------

class MjpegServerOutput(Output):
    """A small HTTP server in a background thread: ``/`` is a page with the live stream, the legend and
    the FPS; ``/stream.mjpg`` the frames as multipart/x-mixed-replace JPEGs; ``/frame.jpg`` the latest
    frame; ``/stats.json`` FPS, latency and the classes in view.

    ``write`` only stores the latest frame: each client thread encodes (once per frame, shared) and sends
    the newest frame when it is ready for one, so slow clients skip frames instead of slowing the pipeline.
    Port 0 picks a free port; ``url`` says which."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, quality: int = 80,
                 title: str = "segmentation") -> None:
        self.host, self.port, self.quality, self.title = host, port, int(quality), title
        self.url = f"http://{_url_host(host)}:{port}/"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._encode_lock = threading.Lock()
        self._closing = False
        self._seq = 0  # frames written so far; clients wait for it to grow
        self._image: np.ndarray | None = None
        self._jpeg: tuple[int, bytes] = (0, b"")  # the encoding of frame number _seq, once a client asked
        self._classes: np.ndarray | None = None
        self._last: dict[str, Any] = {}
        self._write_times: deque[float] = deque(maxlen=240)
        self._streams: dict[threading.Thread, socket.socket] = {}
        self._legend = Legend([], [])
        self._info: SourceInfo | None = None

    def open(self, info: SourceInfo, legend: Legend) -> None:
        self._info, self._legend = info, legend
        self._page = _page(self.title, legend).encode()
        handler = type("Handler", (_Handler,), {"output": self})
        server_class = _Server6 if ":" in self.host else _Server
        try:
            self._server = server_class((self.host, self.port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise RuntimeFault(f"cannot serve on {self.url}: port {self.port} is in use; stop what uses it "
                                   f"or choose another port, e.g. http://{_url_host(self.host)}:{self.port + 1}"
                                   ) from None
            raise RuntimeFault(f"cannot serve on {self.url} ({exc.strerror or exc}); use an address of this "
                               "machine and a port above 1023, e.g. http://127.0.0.1:8080") from None
        self.port = self._server.server_address[1]
        self.url = f"http://{_url_host(self.host)}:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"mjpeg-server-{self.port}", daemon=True)
        self._thread.start()

    def write(self, result: Result, rendered: np.ndarray) -> None:
        image = np.array(rendered, copy=True)  # the caller may reuse its buffer; clients read this later
        classes = np.array(result.classes, copy=True)
        now = time.monotonic()
        with self._cond:
            self._image, self._classes = image, classes
            self._seq += 1
            self._write_times.append(now)
            self._last = {"index": result.frame.index, "size": [image.shape[0], image.shape[1]],
                          "latency_ms": round((now - result.frame.timestamp) * 1000, 1),
                          "timings_ms": {k: round(v * 1000, 2) for k, v in result.timings.items()}}
            self._cond.notify_all()

    @property
    def fps(self) -> float:
        """Frames written per second over the last 3 seconds (0 when the stream stalls)."""
        now = time.monotonic()
        with self._cond:
            times = [t for t in self._write_times if now - t <= 3.0]
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def stats(self) -> dict[str, Any]:
        """What ``/stats.json`` serves."""
        fps = self.fps
        with self._cond:
            last, classes, frames, clients = dict(self._last), self._classes, self._seq, len(self._streams)
        present = [] if classes is None else [int(i) for i in np.flatnonzero(np.bincount(classes.ravel()))]
        return {"fps": round(fps, 2), "frames": frames, "clients": clients, "present": present,
                "source": self._info.uri if self._info else None, **last}

    def close(self) -> None:
        if self._server is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            streams = dict(self._streams)
        for sock in streams.values():  # unblocks a send to a client that stopped reading
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        for thread in streams:
            thread.join(timeout=2)
        self._server = None

    # Called from the client threads.

    def next_jpeg(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The newest frame as JPEG once there is one newer than frame number ``after``; None on timeout
        or shutdown."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > after or self._closing, timeout) or self._closing:
                return None
        with self._encode_lock:  # each frame is encoded once, however many clients watch
            with self._cond:
                seq, image, cached = self._seq, self._image, self._jpeg
            if cached[0] == seq:
                return cached
            ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                return None
            self._jpeg = (seq, buffer.tobytes())
            return self._jpeg

    def page(self) -> bytes:
        return self._page

    @property
    def closing(self) -> bool:
        return self._closing

    def add_stream(self, sock: socket.socket) -> None:
        with self._cond:
            self._streams[threading.current_thread()] = sock

    def remove_stream(self) -> None:
        with self._cond:
            self._streams.pop(threading.current_thread(), None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # close() ends the streams itself; no client may keep the process alive


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    output: MjpegServerOutput
    timeout = 10  # seconds; a client that stops reading is dropped instead of holding its thread
    server_version = "segdeploy-runtime"
    BOUNDARY = "frame"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", self.output.page())
            elif path == "/stream.mjpg":
                self._stream()
            elif path == "/frame.jpg":
                got = self.output.next_jpeg(0, timeout=5.0)
                if got is None:
                    self._send(503, "text/plain; charset=utf-8", b"no frame yet\n")
                else:
                    self._send(200, "image/jpeg", got[1])
            elif path == "/stats.json":
                self._send(200, "application/json", json.dumps(self.output.stats()).encode())
            else:
                self._send(404, "text/plain; charset=utf-8",
                           b"not found; try /, /stream.mjpg, /frame.jpg or /stats.json\n")
        except OSError:  # the client went away (broken pipe, reset, timed out)
            pass

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={self.BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.output.add_stream(self.connection)
        try:
            seq = 0
            while not self.output.closing:
                got = self.output.next_jpeg(seq, timeout=1.0)
                if got is None:
                    continue
                seq, jpeg = got
                self.wfile.write(f"--{self.BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                 f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
        finally:
            self.output.remove_stream()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the runtime's own status lines


def _page(title: str, legend: Legend) -> str:
    rows = []
    for i, name in enumerate(legend.names):
        r, g, b = (legend.palette[i] if i < len(legend.palette) else (0, 0, 0))
        rows.append(f'<li data-id="{i}"><span class="sw" style="background:rgb({r},{g},{b})"></span>'
                    f"{html.escape(name)}</li>")
    # Long legends (e.g. 150 ADE20K classes) list only the classes in view; short ones dim the others.
    mode = "hide" if len(legend.names) > 8 else "dim"
    return (PAGE.replace("{{title}}", html.escape(title)).replace("{{mode}}", mode)
            .replace("{{legend}}", "\n".join(rows)))


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<style>
  body { margin: 0; padding: 12px; display: flex; gap: 16px; background: #15171a; color: #e8e8e8;
         font: 14px/1.4 system-ui, sans-serif; box-sizing: border-box; }
  main { flex: 1; min-width: 0; }
  h1 { font-size: 16px; margin: 0 0 8px; font-weight: 600; }
  #view { display: block; max-width: 100%; height: auto; background: #000; }
  #stats { margin-top: 8px; font-variant-numeric: tabular-nums; }
  #fps { font-weight: 600; }
  aside { flex: none; width: 180px; max-height: calc(100vh - 24px); overflow: auto; }
  aside h2 { font-size: 14px; margin: 0 0 6px; }
  ul { list-style: none; margin: 0; padding: 0; }
  li { display: flex; align-items: center; gap: 8px; margin: 3px 0; }
  .sw { flex: none; width: 14px; height: 14px; border: 1px solid #ffffff80; }
  ul.dim li.absent { opacity: 0.35; }
  ul.hide li.absent { display: none; }
</style>
</head>
<body>
<main>
  <h1>{{title}}</h1>
  <img id="view" src="/stream.mjpg" alt="live segmentation">
  <div id="stats"><span id="fps">&ndash; FPS</span> <span id="detail">waiting for frames</span></div>
</main>
<aside>
  <h2>Classes</h2>
  <ul id="legend" class="{{mode}}">
{{legend}}
  </ul>
</aside>
<script>
  const view = document.getElementById("view");
  view.onerror = () => setTimeout(() => { view.src = "/stream.mjpg?t=" + Date.now(); }, 1000);
  async function poll() {
    try {
      const s = await (await fetch("/stats.json", {cache: "no-store"})).json();
      document.getElementById("fps").textContent = s.fps.toFixed(1) + " FPS";
      document.getElementById("detail").textContent = s.size === undefined ? "waiting for frames" :
        `frame ${s.index} \u00b7 ${s.size[1]}\u00d7${s.size[0]} \u00b7 latency ${s.latency_ms} ms` +
        ` \u00b7 ${s.clients} viewer${s.clients === 1 ? "" : "s"}`;
      const present = new Set(s.present);
      for (const li of document.querySelectorAll("#legend li"))
        li.classList.toggle("absent", !present.has(Number(li.dataset.id)));
    } catch (e) {
      document.getElementById("detail").textContent = "disconnected";
    }
  }
  poll();
  setInterval(poll, 1000);
</script>
</body>
</html>
"""


# --- small helpers ------------------------------------------------------------------------------------------

def _host_port(uri: str) -> tuple[str, int]:
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        raise RuntimeFault(f"bad port in {uri!r}; expected http://HOST:PORT, e.g. http://127.0.0.1:8080") from None
    if parts.path not in ("", "/") or parts.query:
        raise RuntimeFault(f"{uri!r}: give only http://HOST:PORT; the server itself serves /, /stream.mjpg, "
                           "/frame.jpg and /stats.json")
    return parts.hostname or "127.0.0.1", 8080 if port is None else port


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeFault(f"cannot create folder {path.parent} ({exc.strerror}); choose a writable path") from None


def _check_options(uri: str, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise RuntimeFault(f"output {uri!r} does not take option(s) {', '.join(unknown)}; "
                           f"it takes: {', '.join(sorted(allowed)) or 'none'}")


def _unsupported(uri: str) -> RuntimeFault:
    return RuntimeFault(f"unsupported output {uri!r}; use one of: {'; '.join(SUPPORTED)}")


def _cv_message(exc: cv2.error) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else "OpenCV error"
