"""Frame sources: the URI forms, files and folders with damage in them, and real network cameras on
127.0.0.1 (RTSP served from a test video by ffmpeg, MJPEG over HTTP) that stall, vanish and come back."""
from __future__ import annotations

import http.server
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.sources import NetworkStream, has_gstreamer, open_source
from runtime.types import RuntimeFault

from helpers import debian_program

SIZE = (64, 96)  # (H, W) of the test videos and images


class Logs(list):
    """A ``log`` callback that keeps (monotonic time, message)."""

    def __call__(self, message: str) -> None:
        self.append((time.monotonic(), message))

    def matching(self, pattern: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in self if re.search(pattern, m)]


def read_all(source, limit: int = 1000) -> list:
    frames = []
    while len(frames) < limit and (frame := source.read()) is not None:
        frames.append(frame)
    return frames


def fault(uri: str, **kwargs) -> str:
    """The RuntimeFault that opening ``uri`` raises (from parsing or from ``open``)."""
    with pytest.raises(RuntimeFault) as exc:
        source = open_source(uri, **kwargs)
        try:
            source.open()
        finally:
            source.close()
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def flat(i: int, size=SIZE) -> np.ndarray:
    """Frame ``i`` of a test video: one flat grey level per frame, so decoding order can be checked."""
    return np.full((*size, 3), 4 + 8 * i, np.uint8)


def level(frame) -> int:
    return round((float(frame.image.mean()) - 4) / 8)


def write_video(path: Path, frames) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", [flat(i) for i in range(30)])


# ---------------------------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_moves_and_ends():
    uri = "synthetic://?width=160&height=96&fps=25&frames=12&seed=5"
    a, b, other = open_source(uri), open_source(uri), open_source(uri.replace("seed=5", "seed=6"))
    info = a.open()
    b.open(), other.open()
    assert (info.live, info.fps, info.size) == (False, 25.0, (96, 160))
    frames = read_all(a)
    assert len(frames) == 12 and a.read() is None and a.counters["frames"] == 12
    assert [f.index for f in frames] == list(range(12))
    assert all(f.image.shape == (96, 160, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(x.timestamp <= y.timestamp for x, y in zip(frames, frames[1:]))
    assert all(f.capture_seconds >= 0 for f in frames)
    assert all(np.array_equal(f.image, g.image) for f, g in zip(frames, read_all(b)))  # same seed, same scene
    assert not np.array_equal(frames[0].image, other.read().image)  # another seed, another scene
    changed = [np.mean(np.any(x.image != y.image, axis=2)) for x, y in zip(frames, frames[1:])]
    assert all(0.002 < c < 0.5 for c in changed), changed  # things move between every pair of frames
    for s in (a, b, other):
        s.close()


def test_synthetic_is_unbounded_by_default_and_takes_caller_sizes():
    source = open_source("synthetic://", width=80, height=48)
    assert source.open().size == (48, 80)
    assert len(read_all(source, limit=500)) == 500
    source.close()


def test_synthetic_live_is_paced_at_fps():
    source = open_source("synthetic://?width=64&height=48&fps=50&frames=6&live=1")
    assert source.open().live
    start = time.monotonic()
    assert len(read_all(source)) == 6
    assert time.monotonic() - start >= 5 / 50 * 0.9
    source.close()


# ---------------------------------------------------------------------------------------- files, folders

@pytest.mark.parametrize("form", ["path", "file://"])
def test_video_file_every_frame_in_order(video, form):
    uri = str(video) if form == "path" else f"file://{video}"
    source = open_source(uri)
    info = source.open()
    assert (info.live, info.fps, info.size) == (False, 30.0, SIZE)
    frames = read_all(source)
    assert [level(f) for f in frames] == list(range(30))
    assert [f.index for f in frames] == list(range(30))
    assert source.read() is None and source.counters == {"frames": 30, "corrupt": 0, "reconnects": 0}
    source.close()


def test_first_frame_times_its_capture_not_the_wait_for_read(video):
    source = open_source(str(video))
    before = time.monotonic()
    source.open()
    time.sleep(0.3)  # the caller opens outputs and so on before reading
    frame = source.read()
    assert frame.timestamp < before + 0.3 and frame.capture_seconds < 0.3
    source.close()


def test_damaged_video_skips_the_bad_frame(tmp_path):
    rng = np.random.default_rng(0)  # noise: every frame is large, so the damage hits exactly one
    path = write_video(tmp_path / "noise.mp4", [rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8) for _ in range(30)])
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start:start + 4000] = bytes(0xFF if i % 3 else 0 for i in range(start, start + 4000))
    path.write_bytes(bytes(data))
    logs = Logs()
    source = open_source(str(path), log=logs)
    source.open()
    frames = read_all(source)
    assert source.counters["corrupt"] >= 1 and len(frames) + source.counters["corrupt"] <= 30
    assert len(frames) >= 25 and source.read() is None
    assert logs.matching("skipped .* undecodable frame")
    source.close()


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """frame1 ... frame10 (natural order differs from plain sorting) and one file that is not an image."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(1, 11):
        cv2.imwrite(str(folder / f"frame{i}.png"), flat(i))
    (folder / "frame5b.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is no image")
    (folder / "notes.txt").write_text("not a frame")
    return folder


@pytest.mark.parametrize("form", ["folder", "glob"])
def test_image_folder_and_glob_skip_a_corrupt_image(image_folder, form):
    uri = str(image_folder) if form == "folder" else str(image_folder / "*.png")
    logs = Logs()
    source = open_source(uri, log=logs)
    info = source.open()
    assert (info.live, info.fps, info.size) == (False, None, SIZE)
    frames = read_all(source)
    assert [level(f) for f in frames] == list(range(1, 11))  # natural order; the corrupt file skipped
    assert source.counters["corrupt"] == 1 and source.counters["frames"] == 10
    assert [m for _, m in logs] == [f"skipped {image_folder / 'frame5b.png'}: not a readable image"]
    source.close()


def test_single_image_is_one_frame(image_folder):
    source = open_source(str(image_folder / "frame3.png"))
    assert source.open().size == SIZE
    frames = read_all(source)
    assert len(frames) == 1 and level(frames[0]) == 3
    source.close()


def test_resolution_change_mid_stream(tmp_path):
    sizes = [(64, 96), (64, 96), (120, 160), (48, 48), (64, 96)]
    for i, size in enumerate(sizes):
        image = flat(i, size)
        if i == 3:
            image = image[..., 0]  # a greyscale image arrives as BGR too
        cv2.imwrite(str(tmp_path / f"{i:02d}.jpg"), image)
    source = open_source(str(tmp_path))
    assert source.open().size == (64, 96)  # the first frame's
    frames = read_all(source)
    assert [f.image.shape for f in frames] == [(*s, 3) for s in sizes]
    assert [level(f) for f in frames] == list(range(5))
    source.close()


# ----------------------------------------------------------------------------------------------- errors

def test_errors_are_one_line_naming_the_input(tmp_path):
    assert "nowhere.mp4" in fault(str(tmp_path / "nowhere.mp4")) and "supported" in fault("nowhere.mp4")
    assert "ftp://example/video" in fault("ftp://example/video") and "rtsp://" in fault("ftp://example/video")
    assert "gopher://x" in fault("gopher://x")
    assert "no images match" in fault(str(tmp_path / "*.png"))
    (tmp_path / "empty").mkdir()
    assert "has no images" in fault(str(tmp_path / "empty"))
    (tmp_path / "data.bin").write_bytes(b"123")
    assert "neither a video" in fault(str(tmp_path / "data.bin"))
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    assert "cannot read video" in fault(str(tmp_path / "bad.mp4"))
    assert "unknown option 'colour'" in fault("synthetic://?colour=red")
    assert "width must be positive" in fault("synthetic://?width=0")
    assert "csi://N" in fault("csi://front")
    assert "rtsp://user:***@127.0.0.1" in fault("rtsp://user:secret@127.0.0.1:1/x")  # no password in logs
    assert "secret" not in fault("rtsp://user:secret@127.0.0.1:1/x")


@pytest.mark.parametrize("uri", ["/dev/video9", "9", "v4l2:///dev/video9"])
def test_missing_camera(uri):
    assert fault(uri).startswith("camera /dev/video9 not found; ")


@pytest.mark.skipif(has_gstreamer(), reason="this OpenCV has GStreamer: csi://0 would try a real camera")
def test_csi_camera_without_gstreamer_says_why():
    message = fault("csi://0")
    assert "GStreamer" in message and "JetPack" in message


def test_csi_pipeline_matches_the_jetson_notes():
    from runtime.sources import CSICamera

    pipeline = CSICamera(1, "csi://1", width=1920, height=1080, fps=29.97).pipeline()
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=1920, height=1080, "
                               "framerate=2997/100 ! nvvidconv")
    assert pipeline.endswith("appsink drop=true max-buffers=1")


# ------------------------------------------------------------------------------------ network cameras

@pytest.fixture(scope="session")
def ffmpeg() -> str:
    """The ffmpeg program, installed with apt-get if missing; the tests that need it skip only if that fails."""
    return debian_program("ffmpeg", "ffmpeg")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspCamera:
    """An RTSP camera on 127.0.0.1: ffmpeg encodes a looping test video to RTP, and a small RTSP server
    answers OPTIONS/DESCRIBE/SETUP/PLAY and relays the RTP packets to clients over the RTSP connection
    (interleaved TCP). ffmpeg cannot serve RTSP to a client by itself: its RTSP output only pushes to a
    server, and ``-rtsp_flags listen`` is an input option (for receiving a push).

    ``stop()`` is the camera losing power or network (connections close); ``stall()`` kills only the encoder,
    so connections stay up but no data comes, as when a camera hangs or a link drops without a reset."""

    def __init__(self, ffmpeg: str, video: Path, port: int, workdir: Path) -> None:
        self.ffmpeg_path, self.video, self.port, self.sdp = ffmpeg, video, port, workdir / f"rtsp_{port}.sdp"
        encoders = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
        self.codec = (["-c:v", "libx264", "-tune", "zerolatency", "-pix_fmt", "yuv420p"] if "libx264" in encoders
                      else ["-c:v", "mpeg4"]) + ["-g", "10"]  # a key frame every 1/3 s: clients join fast
        self.encoder: subprocess.Popen | None = None
        self.sockets: list[socket.socket] = []
        self.clients: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    def start(self) -> RtspCamera:
        self.stopped.clear()
        rtp, rtcp = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        for s in (rtp, rtcp):
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.2)
        self.listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: restarts on the same port
        self.listener.settimeout(0.2)
        self.sockets = [rtp, rtcp, self.listener]
        self.sdp.unlink(missing_ok=True)
        self.encoder = subprocess.Popen(
            [self.ffmpeg_path, "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
             "-i", str(self.video), "-an", *self.codec, "-f", "rtp", "-sdp_file", str(self.sdp),
             f"rtp://127.0.0.1:{rtp.getsockname()[1]}?rtcpport={rtcp.getsockname()[1]}&pkt_size=1200"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        threads = [threading.Thread(target=f, args=a, daemon=True)
                   for f, a in ((self._accept, ()), (self._relay, (rtp,)), (self._drain, (rtcp,)))]
        self.threads = list(threads)
        for t in threads:  # not self.threads: the accept thread appends (and starts) a thread per client to it
            t.start()
        deadline = time.monotonic() + 10
        while not (self.sdp.exists() and "m=video" in self.sdp.read_text()):
            if time.monotonic() > deadline or self.encoder.poll() is not None:
                raise RuntimeError(f"ffmpeg did not start streaming {self.video} (exit status {self.encoder.poll()})")
            time.sleep(0.02)
        return self

    def stall(self) -> None:
        if self.encoder is not None:
            self.encoder.kill()
            self.encoder.wait(10)
            self.encoder = None

    def stop(self) -> None:
        self.stall()
        self.stopped.set()
        with self.lock:
            for conn in self.clients:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # the client sees the connection close, as when a camera dies
                except OSError:
                    pass
        for t in self.threads:
            t.join(5)
        for s in self.sockets:
            s.close()
        self.threads, self.sockets = [], []

    def _description(self, url: str) -> bytes:
        media = self.sdp.read_text()
        media = re.sub(r"m=video \d+", "m=video 0", media[media.index("m=video"):])
        lines = [line for line in media.splitlines() if line and not line.startswith("c=")]
        return "\r\n".join(["v=0", "o=- 0 0 IN IP4 127.0.0.1", "s=test camera", "c=IN IP4 0.0.0.0", "t=0 0",
                            *lines, "a=control:streamid=0", ""]).encode()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:  # timeout, or closed by stop()
                continue
            conn.settimeout(0.2)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while not self.stopped.is_set():
                try:
                    chunk = conn.recv(4096)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    request, *fields = head.decode(errors="replace").split("\r\n")
                    method, url = request.split(" ")[:2]
                    headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields if ":" in f)}
                    buffer = buffer[int(headers.get("content-length", 0)):]
                    reply, body, status = [f"CSeq: {headers.get('cseq', '0')}"], b"", "200 OK"
                    if method == "OPTIONS":
                        reply.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER")
                    elif method == "DESCRIBE":
                        body = self._description(url)
                        reply += [f"Content-Base: {url}/", "Content-Type: application/sdp",
                                  f"Content-Length: {len(body)}"]
                    elif method == "SETUP" and "TCP" not in headers.get("transport", ""):
                        status = "461 Unsupported Transport"  # FFmpeg then asks for TCP
                    elif method == "SETUP":
                        reply += ["Transport: RTP/AVP/TCP;unicast;interleaved=0-1", "Session: 1;timeout=60"]
                    elif method in ("PLAY", "GET_PARAMETER", "TEARDOWN"):
                        reply.append("Session: 1")
                    with self.lock:
                        conn.sendall("\r\n".join([f"RTSP/1.0 {status}", *reply, "", ""]).encode() + body)
                        if method == "PLAY":
                            self.clients.append(conn)
        except (OSError, ValueError):  # the client went away, or sent something this server does not parse
            pass
        finally:
            with self.lock:
                if conn in self.clients:
                    self.clients.remove(conn)
            conn.close()

    def _relay(self, rtp: socket.socket) -> None:
        while not self.stopped.is_set():
            try:
                packet = rtp.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                for conn in list(self.clients):
                    try:
                        conn.sendall(b"$\x00" + len(packet).to_bytes(2, "big") + packet)
                    except OSError:
                        self.clients.remove(conn)

    def _drain(self, rtcp: socket.socket) -> None:
        while not self.stopped.is_set():
            try:
                rtcp.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("camera") / "camera.mp4", [flat(i) for i in range(30)])


@pytest.fixture
def rtsp_camera(ffmpeg, camera_video, tmp_path):
    camera = RtspCamera(ffmpeg, camera_video, free_port(), tmp_path)
    try:
        yield camera.start()
    finally:
        camera.stop()  # kills ffmpeg, whatever the test did


def read_for(source, seconds: float, frames: int) -> list:
    """Up to ``frames`` frames, for at most about ``seconds`` (each read is itself bounded by timeouts)."""
    got, deadline = [], time.monotonic() + seconds
    while len(got) < frames and time.monotonic() < deadline:
        frame = source.read()
        assert frame is not None  # a live stream never ends by itself
        got.append(frame)
    return got


def test_rtsp_camera_reconnects_after_it_comes_back(rtsp_camera):
    logs = Logs()
    source = open_source(rtsp_camera.url, reconnect_timeout=15, log=logs)
    try:
        info = source.open()
        assert info.live and info.size == SIZE
        before = read_for(source, 5, 20)
        assert len(before) == 20 and all(f.image.shape == (*SIZE, 3) for f in before)
        rtsp_camera.stop()
        restart = threading.Timer(1.0, rtsp_camera.start)
        restart.start()
        try:
            after = read_for(source, 12, 60)  # reads through the outage: reconnecting happens inside read()
        finally:
            restart.join()
        assert source.counters["reconnects"] >= 1, logs
        assert len(after) == 60
        assert [f.index for f in before + after] == list(range(80))
        assert logs.matching(r"^rtsp://127\.0\.0\.1:\d+/live: stream lost; reconnect attempt 1 \(0\.0 s of 15 s\)$")
        assert logs.matching("reconnected after")
    finally:
        source.close()


def test_rtsp_camera_gone_for_good_gives_up_after_the_timeout(rtsp_camera):
    logs = Logs()
    source = open_source(rtsp_camera.url, reconnect_timeout=3, log=logs)
    try:
        source.open()
        assert len(read_for(source, 5, 5)) == 5
        rtsp_camera.stop()
        stopped = time.monotonic()
        with pytest.raises(RuntimeFault) as exc:
            read_for(source, 20, 1000)
        waited = time.monotonic() - stopped
    finally:
        source.close()
    attempts = len(logs.matching("reconnect attempt"))
    assert re.fullmatch(rf"stream {re.escape(rtsp_camera.url)} lost for \d+ s; gave up after {attempts} attempts; .*",
                        str(exc.value)), exc.value
    assert 3 <= attempts <= 5  # at once, then after 0.5, 1 and 2 s of backoff (the last cut to the deadline)
    assert 3 <= waited < 8, waited


def test_rtsp_camera_that_stalls_is_noticed_after_the_read_timeout(rtsp_camera):
    """The connection stays up but no data comes: lost after read_timeout, with no stale frames in between."""
    logs = Logs()
    source = NetworkStream(rtsp_camera.url, reconnect_timeout=1, open_timeout=1, read_timeout=1, log=logs)
    try:
        source.open()
        assert len(read_for(source, 5, 5)) == 5
        rtsp_camera.stall()
        stalled = time.monotonic()
        with pytest.raises(RuntimeFault, match="lost for"):
            read_for(source, 20, 1000)
    finally:
        source.close()
    first_attempt = logs.matching("reconnect attempt 1 ")[0][0]
    assert first_attempt - stalled < 2.0  # one read timeout, not one per frame held in the decoder


class MjpegHandler(http.server.BaseHTTPRequestHandler):
    """multipart/x-mixed-replace JPEGs, as many IP cameras serve them: the test video's frames, at 30 FPS."""

    frames: list[bytes] = []

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for i in range(300):  # bounded: 10 s of stream
                jpeg = self.frames[i % len(self.frames)]
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                 + jpeg + b"\r\n")
                time.sleep(1 / 30)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_mjpeg_over_http():
    MjpegHandler.frames = [cv2.imencode(".jpg", flat(i))[1].tobytes() for i in range(30)]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), MjpegHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        source = open_source(f"http://127.0.0.1:{server.server_address[1]}/video.mjpg", log=Logs())
        try:
            info = source.open()
            frames = read_for(source, 5, 10)
        finally:
            source.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert info.live and info.size == SIZE and len(frames) == 10
    levels = [level(f) for f in frames]
    assert all((b - a) % 30 == 1 for a, b in zip(levels, levels[1:])), levels  # consecutive frames
