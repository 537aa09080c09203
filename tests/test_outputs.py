"""Rendering and every output: views and legend, video files that play (and never appear half-written),
image folders, JSON lines, and the browser view (MJPEG parts parsed by hand, a headless Chromium
screenshot of the page)."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import render_scene
from runtime.outputs import MjpegServerOutput, gui_available, open_output
from runtime.render import VIEWS, palette_lut, render
from runtime.types import Frame, Legend, Result, RuntimeFault, SourceInfo

from helpers import debian_program

ROOT = Path(__file__).resolve().parents[1]
DOCS_SCREENSHOT = ROOT / "docs" / "browser_view.png"
# Set to 1 to refresh docs/browser_view.png from the realistic-scene screenshot test.
UPDATE_SCREENSHOT = os.environ.get("SEGDEPLOY_UPDATE_SCREENSHOT") == "1"

LEGEND = Legend(["road", "sky", "car", "person"], [[128, 64, 128], [70, 130, 180], [255, 0, 0], [0, 200, 0]])
CAR = 2  # pure red: easy to find again after JPEG and a browser

CITYSCAPES = Legend(
    ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
     "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"],
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
     [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
     [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32]])


def scene(seed: int = 0, size: tuple[int, int] = (120, 160)) -> np.ndarray:
    return np.ascontiguousarray(render_scene(seed, size)[0][..., ::-1])  # RGB -> BGR


def class_map(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Blocks of every class, at half the frame's resolution like a small engine input."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(LEGEND.names), (shape[0] // 8 + 1, shape[1] // 8 + 1)).astype(np.uint8)
    return np.kron(blocks, np.ones((4, 4), np.uint8))[:shape[0] // 2, :shape[1] // 2]


def scene_classes(rgb: np.ndarray) -> np.ndarray:
    """A plausible Cityscapes class map for a synthetic scene, from colours and edges: grey rows at the
    bottom are road, coloured blobs on it cars or people; above, each column is sky from the top down to
    the first sharp colour step (a building's roof). Stands in for a model in the documentation screenshot."""
    ids = {name: i for i, name in enumerate(CITYSCAPES.names)}
    h, w = rgb.shape[:2]
    pixels = rgb.astype(np.int32)
    grey = pixels.max(2) - pixels.min(2) < 30
    ground_rows = np.flatnonzero(grey.mean(1) < 0.5)  # rows that are not mostly road
    horizon = ground_rows.max() + 1 if len(ground_rows) else 0
    rows = np.arange(h)[:, None]
    below = np.broadcast_to(rows >= horizon, (h, w))
    smooth = cv2.blur(rgb, (9, 1)).astype(np.int32)  # across only: keeps roof edges sharp, averages noise
    step = np.abs(np.diff(smooth, axis=0)).sum(2) > 30  # (h - 1, w)
    roof = np.where(step.any(0), step.argmax(0) + 1, h)
    top = pixels[0]
    sky_on_top = (top[:, 2] - top[:, 0] > 60) & (top[:, 2] > 150)  # columns whose first row is sky
    classes = np.full((h, w), ids["building"], np.uint8)
    classes[(rows < roof[None]) & sky_on_top[None] & ~below] = ids["sky"]
    classes[below] = ids["road"]
    blob = below & ~grey
    classes[blob & (pixels[..., 0] > pixels[..., 2])] = ids["person"]
    classes[blob & (pixels[..., 0] <= pixels[..., 2])] = ids["car"]
    return cv2.medianBlur(classes, 5)


def result(index: int, image: np.ndarray, classes: np.ndarray, age: float = 0.0) -> Result:
    """A Result whose frame was captured ``age`` seconds ago."""
    frame = Frame(index=index, image=image, timestamp=time.monotonic() - age, capture_seconds=0.001)
    return Result(frame, classes, timings={"capture": 0.001, "infer": 0.0125, "post": 0.002})


# --- render --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("view", VIEWS)
def test_render_views_have_the_frame_size(view):
    frame = scene()
    out = render(frame, class_map(frame.shape[:2]), LEGEND, view=view, stats_text="FPS 30.0")
    width = frame.shape[1] * (2 if view == "side-by-side" else 1)
    assert out.shape == (frame.shape[0], width, 3) and out.dtype == np.uint8


def test_overlay_alpha_0_is_the_frame_and_alpha_1_the_mask():
    frame = scene()
    before = frame.copy()
    classes = class_map(frame.shape[:2])
    assert np.array_equal(render(frame, classes, LEGEND, alpha=0.0, show_legend=False), frame)
    mask = render(frame, classes, LEGEND, view="mask", show_legend=False)
    assert np.array_equal(render(frame, classes, LEGEND, alpha=1.0, show_legend=False), mask)
    side = render(frame, classes, LEGEND, view="side-by-side", alpha=0.0, show_legend=False)
    assert np.array_equal(side, np.hstack((frame, frame)))
    assert np.array_equal(frame, before)  # the caller's frame is never drawn on


def test_mask_colours_are_the_palette_in_bgr_scaled_nearest():
    frame = scene()
    classes = class_map(frame.shape[:2])  # half resolution: each class pixel covers 2x2 frame pixels
    mask = render(frame, classes, LEGEND, view="mask", show_legend=False)
    expected_ids = classes.repeat(2, axis=0).repeat(2, axis=1)
    bgr = np.array(LEGEND.palette, np.uint8)[:, ::-1]
    assert np.array_equal(mask, bgr[expected_ids])
    assert np.array_equal(palette_lut(LEGEND)[CAR], [0, 0, 255])  # RGB red is BGR (0, 0, 255)


def test_legend_and_stats_are_drawn_in_their_corners():
    frame = np.full((240, 320, 3), 128, np.uint8)
    classes = np.full((120, 160), CAR, np.uint8)
    plain = render(frame, classes, LEGEND, show_legend=False)
    with_legend = render(frame, classes, LEGEND)
    changed = np.any(with_legend != plain, axis=2)
    assert changed[:, 160:].any() and not changed[:, :160].any()  # top-right box only
    swatches = with_legend[:120, 160:]
    for rgb in LEGEND.palette:  # a short legend lists every class, each with its swatch
        assert np.all(swatches == rgb[::-1], axis=2).sum() >= 4, rgb
    with_stats = render(frame, classes, LEGEND, show_legend=False, stats_text="FPS 30.0\nlatency 12 ms")
    changed = np.any(with_stats != plain, axis=2)
    assert changed[:60, :160].any() and not changed[120:].any()


def test_long_legends_list_only_the_classes_in_view():
    frame = np.full((360, 640, 3), 128, np.uint8)
    classes = np.full((90, 160), CITYSCAPES.names.index("road"), np.uint8)
    classes[:30] = CITYSCAPES.names.index("sky")
    out = render(frame, classes, CITYSCAPES)
    legend_box = out[:, 320:]
    for name, rgb in zip(CITYSCAPES.names, CITYSCAPES.palette):
        if len(set(rgb)) == 1:
            continue  # greys also occur in the anti-aliased text
        found = np.all(legend_box == rgb[::-1], axis=2).sum()
        assert (found >= 4) if name in ("road", "sky") else (found == 0), name


def test_render_rejects_unknown_views():
    with pytest.raises(RuntimeFault, match="overlay, mask, side-by-side"):
        render(scene(), class_map((120, 160)), LEGEND, view="blend")


def test_render_720p_is_fast():
    frame = scene(1, (720, 1280))
    classes = np.random.default_rng(0).integers(0, 19, (512, 1024)).astype(np.uint8)
    render(frame, classes, CITYSCAPES, stats_text="FPS 30.0")
    times = []
    for _ in range(10):
        start = time.perf_counter()
        render(frame, classes, CITYSCAPES, stats_text="FPS 30.0")
        times.append(time.perf_counter() - start)
    assert np.median(times) < 0.05  # a few ms on one core; generous for busy CI machines


# --- files -------------------------------------------------------------------------------------------------

def write_frames(out, count: int, size=(120, 160), info=None, legend=LEGEND) -> list[np.ndarray]:
    out.open(info or SourceInfo("synthetic", live=False, fps=12), legend)
    frames = []
    for i in range(count):
        frame = scene(i, size)
        rendered = render(frame, class_map(size, i), legend)
        out.write(result(i, frame, class_map(size, i)), rendered)
        frames.append(rendered)
    return frames


def count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        assert capture.isOpened(), f"cannot open {path}"
        count = 0
        while count < 1000 and capture.read()[0]:
            count += 1
        return count
    finally:
        capture.release()


@pytest.mark.parametrize("name", ["out.mp4", "out.avi", "out.mkv"])
def test_video_file_plays_back_every_frame(tmp_path, name):
    path = tmp_path / "videos" / name
    out = open_output(str(path))
    write_frames(out, 19)
    big = np.zeros((240, 320, 3), np.uint8)  # another size: resized to the first frame's
    out.write(result(19, big, np.zeros((60, 80), np.uint8)), big)
    assert not path.exists()  # still being written, under the temporary name
    out.close()
    out.close()  # idempotent: the pipeline may close again on its way out
    assert path.exists() and [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left
    assert count_frames(path) == 20
    capture = cv2.VideoCapture(str(path))
    try:
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12, abs=0.1)  # the source's rate
        assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (160, 120)
    finally:
        capture.release()
    if shutil.which("ffprobe"):
        probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                                "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0 and probe.stdout.strip().rstrip(",") == "20", probe.stderr


def test_video_fps_defaults_to_30(tmp_path):
    path = tmp_path / "live.avi"
    out = open_output(str(path))
    write_frames(out, 3, info=SourceInfo("rtsp://camera", live=True, fps=None))
    out.close()
    capture = cv2.VideoCapture(str(path))
    try:
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(30, abs=0.1)
    finally:
        capture.release()


def test_interrupted_video_never_appears_under_its_final_name(tmp_path):
    path = tmp_path / "out.mp4"
    script = (
        "import os, sys, numpy as np\n"
        "from runtime.outputs import open_output\n"
        "from runtime.types import Frame, Legend, Result, SourceInfo\n"
        f"out = open_output({str(path)!r})\n"
        "out.open(SourceInfo('test', live=False, fps=30), Legend(['a'], [[255, 0, 0]]))\n"
        "for i in range(10):\n"
        "    image = np.full((48, 64, 3), i * 20, np.uint8)\n"
        "    out.write(Result(Frame(i, image, 0.0), np.zeros((24, 32), np.uint8)), image)\n"
        "sys.stdout.flush()\n"
        "os._exit(3)  # killed mid-stream: no close, no finally, no atexit\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr
    assert not path.exists()
    assert (tmp_path / ".out.partial.mp4").exists()  # the partial file is hidden and says what it is

    out = open_output(str(path))  # the same in-process, before close
    write_frames(out, 3)
    try:
        assert not path.exists() and out.temp_path.exists()
    finally:
        out.close()
    assert count_frames(path) == 3 and not out.temp_path.exists()


@pytest.mark.parametrize("form", ["slash", "scheme"])
def test_image_folder_names_frames_by_index(tmp_path, form):
    folder = tmp_path / "frames"
    out = open_output(f"{folder}/" if form == "slash" else f"folder://{folder}")
    frames = write_frames(out, 5)
    out.close()
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.jpg" for i in range(5)]
    back = cv2.imread(str(folder / "000003.jpg"))
    assert back.shape == frames[3].shape and np.abs(back.astype(int) - frames[3]).mean() < 8  # JPEG loss only


def test_image_folder_png_is_lossless(tmp_path):
    out = open_output(f"{tmp_path}/png/", ext="png")
    frames = write_frames(out, 2)
    out.close()
    assert np.array_equal(cv2.imread(str(tmp_path / "png" / "000001.png")), frames[1])


def test_jsonl_has_one_line_per_frame_with_histogram_and_timings(tmp_path):
    path = tmp_path / "results.jsonl"
    out = open_output(str(path))
    out.open(SourceInfo("synthetic", live=False), LEGEND)
    classes = np.zeros((10, 10), np.uint8)
    classes[:3] = CAR  # 30 % car, 70 % road, no sky or person
    frame = scene()
    for i in range(3):
        out.write(result(i, frame, classes), frame)
        assert len(path.read_text().splitlines()) == i + 1  # flushed as written
    out.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert records[0]["classes"] == {"road": 0.7, "car": 0.3}
    assert records[0]["timings_ms"] == {"capture": 1.0, "infer": 12.5, "post": 2.0}
    assert isinstance(records[0]["timestamp"], float)


@pytest.mark.parametrize("uri", ["out.xyz", "rtsp://127.0.0.1/live", "https://127.0.0.1:8443", "results.json"])
def test_unknown_outputs_list_the_supported_forms(uri):
    with pytest.raises(RuntimeFault) as caught:
        open_output(uri)
    message = str(caught.value)
    assert uri in message and "\n" not in message
    for form in ("display://", ".mp4", "frames/", "folder://", ".jsonl", "http://HOST:PORT"):
        assert form in message


def test_unknown_options_are_named():
    with pytest.raises(RuntimeFault, match="does not take option.*quality"):
        open_output("out.mp4", quality=90)


@pytest.mark.skipif(gui_available(), reason="this OpenCV build has a GUI; the headless message cannot show")
def test_display_on_headless_opencv_says_what_to_install():
    for uri in ("display://", "display://0"):
        with pytest.raises(RuntimeFault, match=r"pip install opencv-python \(instead of opencv-python-headless\)"):
            open_output(uri)


# --- the browser view -------------------------------------------------------------------------------------

class Served:
    """An MJPEG output on a free port, fed by a background thread at about 30 frames per second."""

    def __init__(self, frames: list[np.ndarray], classes: list[np.ndarray], legend: Legend,
                 view: str = "overlay") -> None:
        self.output = open_output("http://127.0.0.1:0")
        assert isinstance(self.output, MjpegServerOutput)
        self.output.open(SourceInfo("synthetic", live=True, fps=30), legend)
        self.frames, self.classes, self.legend, self.view = frames, classes, legend, view
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._feed, name="test-feeder", daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        deadline = time.monotonic() + 120
        for i in range(3600):  # bounded in count and time, whatever happens to the test
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            frame, classes = self.frames[i % len(self.frames)], self.classes[i % len(self.classes)]
            rendered = render(frame, classes, self.legend, self.view, stats_text=f"FPS {self.output.fps:.1f}")
            self.output.write(result(i, frame, classes, age=0.035), rendered)  # as if inferred for 35 ms
            time.sleep(1 / 30)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.output.url.rstrip("/") + path, timeout=10) as response:
            return response.read()

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.output.close()


@pytest.fixture
def served():
    """Frames that are mostly car-red (the mask view), so the colour can be found again in a screenshot."""
    frame = np.full((360, 640, 3), 90, np.uint8)
    classes = np.full((180, 320), CAR, np.uint8)
    classes[:30] = 1  # a band of sky
    server = Served([frame], [classes], LEGEND, view="mask")
    try:
        yield server
    finally:
        server.shutdown()


def read_mjpeg_parts(output: MjpegServerOutput, count: int) -> tuple[str, list[bytes]]:
    connection = http.client.HTTPConnection("127.0.0.1", output.port, timeout=10)
    try:
        connection.request("GET", "/stream.mjpg")
        response = connection.getresponse()
        content_type = response.getheader("Content-Type")
        boundary = b"--" + content_type.split("boundary=")[1].encode()
        parts = []
        while len(parts) < count:
            line = response.fp.readline(1000).strip()
            if not line:
                continue
            assert line == boundary, line
            headers = {}
            while (line := response.fp.readline(1000).strip()):
                key, value = line.decode().split(":", 1)
                headers[key.lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            parts.append(response.fp.read(int(headers["content-length"])))
        return content_type, parts
    finally:
        connection.close()


def test_stream_sends_valid_jpeg_parts(served):
    content_type, parts = read_mjpeg_parts(served.output, 3)
    assert content_type.startswith("multipart/x-mixed-replace")
    for part in parts:
        image = cv2.imdecode(np.frombuffer(part, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (360, 640, 3)
        assert np.abs(image[200, 300].astype(int) - [0, 0, 255]).max() < 40  # car red, through JPEG


def test_page_frame_and_stats(served):
    page = served.get("/").decode()
    assert '<img id="view" src="/stream.mjpg"' in page and "/stats.json" in page
    for name, (r, g, b) in zip(LEGEND.names, LEGEND.palette):
        assert f"rgb({r},{g},{b})" in page and f"</span>{name}</li>" in page
    image = cv2.imdecode(np.frombuffer(served.get("/frame.jpg"), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 640, 3)
    time.sleep(0.5)  # let the FPS estimate see a few frames
    stats = json.loads(served.get("/stats.json"))
    assert 5 < stats["fps"] < 60 and stats["frames"] > 0 and stats["size"] == [360, 640]
    assert stats["present"] == [1, CAR] and stats["timings_ms"]["infer"] == 12.5
    with pytest.raises(urllib.error.HTTPError):
        served.get("/nothing")


def test_slow_clients_do_not_block_writes(served):
    stalled = socket.create_connection(("127.0.0.1", served.output.port), timeout=10)
    try:
        stalled.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")  # and never read
        big = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)  # JPEGs ~1 MB
        classes = np.zeros((90, 160), np.uint8)
        slowest = 0.0
        for i in range(60):
            start = time.perf_counter()
            served.output.write(result(i, big, classes), big)
            slowest = max(slowest, time.perf_counter() - start)
            time.sleep(0.005)
        assert slowest < 0.1
    finally:
        stalled.close()


def test_close_ends_streams_and_frees_the_port():
    output = open_output("http://127.0.0.1:0")
    output.open(SourceInfo("synthetic", live=True), LEGEND)
    try:
        image = np.zeros((48, 64, 3), np.uint8)
        output.write(result(0, image, np.zeros((24, 32), np.uint8)), image)
        connection = http.client.HTTPConnection("127.0.0.1", output.port, timeout=10)
        connection.request("GET", "/stream.mjpg")
        response = connection.getresponse()
        assert response.fp.readline().strip() == b"--frame"
    finally:
        output.close()
    try:
        start = time.monotonic()
        while response.fp.readline():  # the server ends the stream: EOF, not a 10 s timeout
            assert time.monotonic() - start < 5
    finally:
        connection.close()
    assert not any(t.name.startswith("mjpeg-server") for t in threading.enumerate())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", output.port), timeout=2).close()


def test_port_in_use_is_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        output = open_output(f"http://127.0.0.1:{port}")
        with pytest.raises(RuntimeFault, match=f"port {port} is in use") as caught:
            output.open(SourceInfo("synthetic", live=True), LEGEND)
        assert "\n" not in str(caught.value)


def test_http_host_defaults_to_loopback():
    output = open_output("http://:0")
    assert output.host == "127.0.0.1"
    assert open_output("http://0.0.0.0:9000").host == "0.0.0.0"  # other addresses only when named
    with pytest.raises(RuntimeFault, match="bad port"):
        open_output("http://127.0.0.1:http")


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed with apt-get when missing; the tests skip (with the reason) only
    when it cannot be installed."""
    return debian_program("chromium", "chromium")


def screenshot(chromium: str, url: str, folder: Path) -> np.ndarray:
    """A headless Chromium screenshot of ``url`` (BGR). The page's own JavaScript (the stats poll) runs;
    the virtual time budget bounds how long the page may load."""
    shot = folder / "shot.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={folder / 'profile'}",
               "--window-size=900,700", "--virtual-time-budget=3000", f"--screenshot={shot}", url]
    # Its own session, so a hung browser is killed with every helper process it started.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "HOME": str(folder)})
    try:
        _, stderr = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        stderr = "timed out after 90 s"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
    assert shot.exists(), f"no screenshot; chromium said: {stderr[-1500:]}"
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (700, 900)
    return image


def test_browser_shows_the_live_overlay(served, chromium, tmp_path):
    image = screenshot(chromium, served.output.url, tmp_path)
    red = np.all(np.abs(image.astype(int) - [0, 0, 255]) < 40, axis=2)
    # The served frames are mostly car-red: the stream, not just the 14-pixel legend swatch, is on the page.
    assert red.mean() > 0.2, f"only {red.mean():.1%} of the screenshot is the overlay's red"
    ys, xs = np.nonzero(red)
    assert xs.max() - xs.min() > 400 and ys.max() - ys.min() > 200


def test_browser_view_of_a_street_scene(chromium, tmp_path):
    """The screenshot in docs/browser_view.png (refreshed with SEGDEPLOY_UPDATE_SCREENSHOT=1)."""
    frames, classes = [], []
    for seed in (3, 4):
        rgb = render_scene(seed, (360, 640))[0]
        frames.append(np.ascontiguousarray(rgb[..., ::-1]))
        classes.append(cv2.resize(scene_classes(rgb), (320, 180), interpolation=cv2.INTER_NEAREST))
    server = Served(frames, classes, CITYSCAPES)
    try:
        image = screenshot(chromium, server.output.url, tmp_path)
    finally:
        server.shutdown()
    road_swatch = np.all(image == [128, 64, 128], axis=2).sum()  # exact CSS colour in the page's legend
    assert road_swatch >= 50
    assert image[40:400, :640].std() > 20  # the overlay, not a blank image
    if UPDATE_SCREENSHOT:
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(DOCS_SCREENSHOT), image)
