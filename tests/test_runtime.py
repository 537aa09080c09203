"""The video runtime end to end, on ONNX Runtime engines built by the tests."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from engines.manifest import manifest_path, read_manifest
from engines.onnxruntime import OnnxRuntimeRunner
from engines.tiling import Tiling, slide
from export.__main__ import main as export_main
from helpers import cli, tiny_pipeline
from runtime.engine import SegmentationEngine, resolve_engine
from runtime.sources import open_source
from runtime.types import RuntimeFault

SYNTHETIC = "synthetic://?width=96&height=64&frames={n}&seed=3"


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    """fp32 engines with host-side and with embedded pre/post-processing."""
    folder = tmp_path_factory.mktemp("runtime")
    models = [{"name": "bisenetv2", "num_classes": 4, "precisions": ["fp32"], "input": {"size": [64, 64]}},
              {"name": "segformer_b0", "num_classes": 4, "precisions": ["fp32"], "embed_pre_post": True,
               "input": {"size": [64, 64]}}]
    assert export_main(["build", "--config", tiny_pipeline(folder, models=models)]) == 0
    return folder / "out"


def run_cli(*args, timeout=300):
    return cli(*args, module="runtime", timeout=timeout)


def direct_histograms(engine_path, uri, n, tiling=None):
    """What the engine says about each frame of ``uri`` when called directly, one frame at a time."""
    source = open_source(uri)
    source.open()
    hists = []
    with SegmentationEngine(engine_path, tiling=tiling) as engine:
        for _ in range(n):
            frame = source.read()
            classes = engine.segment(frame.image)
            counts = np.bincount(classes.ravel(), minlength=len(engine.legend.names)) / classes.size
            hists.append({engine.legend.names[i]: round(float(f), 5) for i, f in enumerate(counts) if f > 0})
    source.close()
    return hists


@pytest.mark.parametrize("model", ["bisenetv2", "segformer_b0"])
def test_synthetic_to_video_file_matches_the_engine(build_dir, tmp_path, model):
    n = 12
    video, stats = tmp_path / "out.mp4", tmp_path / "stats.jsonl"
    r = run_cli("--engine", f"{model}:fp32", "--build-dir", str(build_dir), "--source", SYNTHETIC.format(n=n),
                "--output", str(video), "--stats", str(stats))
    assert r.returncode == 0, r.stderr
    assert f"engine: {model} fp32 on ONNX Runtime" in r.stderr
    cap = cv2.VideoCapture(str(video))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == n
    lines = [json.loads(line) for line in stats.read_text().splitlines()]
    per_frame, summary = lines[:-1], lines[-1]["summary"]
    assert [x["frame"] for x in per_frame] == list(range(n))  # a file source: every frame, in order
    assert summary["frames"] == n and not summary["dropped"]
    assert set(per_frame[0]["stages_ms"]) == {"capture", "pre", "infer", "post", "output"}
    engine_path = build_dir / model / "onnxruntime" / "fp32.engine.onnx"
    assert [x["classes"] for x in per_frame] == direct_histograms(engine_path, SYNTHETIC.format(n=n), n)


def test_video_file_and_image_folder_sources(build_dir, tmp_path):
    source = open_source(SYNTHETIC.format(n=8))
    source.open()
    frames = [source.read().image for _ in range(8)]
    source.close()
    writer = cv2.VideoWriter(str(tmp_path / "in.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for f in frames:
        writer.write(f)
    writer.release()
    (tmp_path / "imgs").mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i:03d}.png"), f)
    for src, name in ((tmp_path / "in.avi", "a"), (tmp_path / "imgs", "b")):
        out = tmp_path / f"frames_{name}"
        r = run_cli("--engine", "bisenetv2", "--build-dir", str(build_dir), "--source", str(src),
                    "--output", f"{out}/", "--view", "side-by-side")
        assert r.returncode == 0, r.stderr
        written = sorted(out.iterdir())
        assert len(written) == 8
        assert cv2.imread(str(written[0])).shape == (64, 192, 3)  # side by side: twice as wide


def test_long_run_does_not_grow_memory(build_dir):
    """Thousands of small frames through the whole pipeline in-process; resident memory stays flat."""
    import threading

    from runtime.pipeline import RunOptions, run

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    engine_path = build_dir / "bisenetv2" / "onnxruntime" / "fp32.engine.onnx"
    with SegmentationEngine(engine_path) as engine:
        measured = []
        for n in (300, 3000):
            source = open_source("synthetic://?width=64&height=64&frames=%d&seed=1" % n)
            info = source.open()
            summary = run(source, info, engine, [], RunOptions(report_every=1e9), threading.Event())
            source.close()
            assert summary["frames"] == n
            measured.append(rss_mb())
    assert measured[1] - measured[0] < 40, measured  # ten times the frames, no more than noise in memory


@pytest.mark.parametrize("args, message", [
    (["--source", "nowhere.mp4"], "nowhere.mp4"),
    (["--source", "ftp://example/video"], "ftp://"),
    (["--source", "SYNTH", "--engine", "nosuchmodel"], "no engines for 'nosuchmodel'"),
    (["--source", "SYNTH", "--engine", "missing.plan"], "does not exist"),
    (["--source", "SYNTH", "--backend", "tensorrt"], "TensorRT cannot run here"),
    (["--source", "SYNTH", "--tile", "48x64"], "takes sizes that are multiples of 32"),
    (["--source", "SYNTH", "--tile", "128x128"], "outside the sizes"),
    (["--source", "SYNTH", "--engine", "segformer_b0", "--tile", "64x64"], "embed_pre_post: false"),
])
def test_bad_input_is_one_clear_line(build_dir, args, message):
    args = [a.replace("SYNTH", SYNTHETIC.format(n=2)) for a in args]
    if "--engine" not in args:
        args += ["--engine", "bisenetv2"]
    r = run_cli("--build-dir", str(build_dir), *args)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--tile", "64"], "--tile: expected HEIGHTxWIDTH"),
    (["--tile", "64x64", "--stride", "65x8"], "--stride 65x8 is larger than --tile 64x64"),
    (["--stride", "32x32"], "--stride only applies with --tile"),
])
def test_malformed_tile_is_a_usage_error(build_dir, args, message):
    r = run_cli("--build-dir", str(build_dir), "--engine", "bisenetv2", "--source", SYNTHETIC.format(n=2), *args)
    assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1], r.stderr
    assert "Traceback" not in r.stderr


TILED = "synthetic://?width=160&height=96&frames={n}&seed=3"


def test_tiled_run_segments_frames_at_their_own_size(build_dir, tmp_path):
    """--tile: a 96x160 source through a 64x64 engine in overlapping tiles, not resized to 64x64; the class
    maps are the source's size and the same as the engine called directly in the same windows."""
    n = 4
    out, stats = tmp_path / "frames", tmp_path / "stats.jsonl"
    r = run_cli("--engine", "bisenetv2:fp32", "--build-dir", str(build_dir), "--source", TILED.format(n=n),
                "--tile", "64x64", "--stride", "32x48", "--output", f"{out}/", "--view", "mask", "--stats", str(stats))
    assert r.returncode == 0, r.stderr
    assert "tiled: tiles 64x64, stride 32x48" in r.stderr
    written = sorted(out.iterdir())
    assert len(written) == n and all(cv2.imread(str(p)).shape == (96, 160, 3) for p in written)
    engine_path = build_dir / "bisenetv2" / "onnxruntime" / "fp32.engine.onnx"
    per_frame = [json.loads(line) for line in stats.read_text().splitlines()[:-1]]
    tiling = Tiling.from_flags("64x64", "32x48")
    assert [x["classes"] for x in per_frame] == direct_histograms(engine_path, TILED.format(n=n), n, tiling)

    source = open_source(TILED.format(n=1))
    source.open()
    frame = source.read().image
    source.close()
    with SegmentationEngine(engine_path, tiling=tiling) as engine:
        classes = engine.segment(frame)
    m = read_manifest(engine_path)
    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float32)
    x = ((rgb - m["normalization"]["mean"]) / np.asarray(m["normalization"]["std"], np.float32)).transpose(2, 0, 1)[None]
    with OnnxRuntimeRunner.from_engine(engine_path) as runner:
        logits = slide(np.ascontiguousarray(x, np.float32), lambda t: runner.infer({"images": t})["logits"], tiling)
    assert classes.shape == (96, 160) and (classes == logits.argmax(1)[0]).mean() > 0.999


def test_engine_built_for_another_machine_is_refused(build_dir, tmp_path):
    work = tmp_path / "build"
    shutil.copytree(build_dir, work)
    engine = work / "bisenetv2" / "onnxruntime" / "fp32.engine.onnx"
    m = read_manifest(engine)
    m["backend_version"] = "0.1.0"
    manifest_path(engine).write_text(json.dumps(m))
    r = run_cli("--engine", str(engine), "--source", SYNTHETIC.format(n=2))
    assert r.returncode == 1 and "built with ONNX Runtime 0.1.0" in r.stderr and "Traceback" not in r.stderr


def test_engine_choice_prefers_what_runs_best_here(build_dir):
    path, why = resolve_engine("bisenetv2", build_dir)
    assert path.name == "fp32.engine.onnx" and "ONNX Runtime" in why  # the only one built; TensorRT absent
    with pytest.raises(RuntimeFault, match="no usable engine for bisenetv2:int8"):
        resolve_engine("bisenetv2:int8", build_dir)


from test_sources import camera_video, ffmpeg, rtsp_camera  # noqa: E402,F401  (fixtures: an RTSP camera on 127.0.0.1)


def test_runtime_reads_an_rtsp_camera_through_a_restart(build_dir, rtsp_camera, tmp_path):
    """A network camera read by the runtime; the server dies mid-stream and comes back; the output plays."""
    import subprocess
    import sys
    import time

    from helpers import ROOT

    stats, video = tmp_path / "stats.jsonl", tmp_path / "live.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "--engine", "bisenetv2", "--build-dir", str(build_dir),
                             "--source", rtsp_camera.url, "--output", str(video), "--stats", str(stats),
                             "--max-frames", "60", "--reconnect-timeout", "20"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not stats.exists() or len(stats.read_text().splitlines()) < 15):
            time.sleep(0.2)
        assert stats.exists(), "the runtime wrote no frame within 60 s"
        rtsp_camera.stop()
        time.sleep(1.5)
        rtsp_camera.start()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "reconnect attempt" in err and "Traceback" not in err
    summary = json.loads(stats.read_text().splitlines()[-1])["summary"]
    assert summary["frames"] == 60 and summary["source"]["reconnects"] >= 1
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 60


def test_ctrl_c_finalizes_the_output(build_dir, tmp_path):
    """An endless source stopped by SIGINT: exit 0, summary printed, and a video file that plays."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT

    video = tmp_path / "endless.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "--engine", "bisenetv2", "--build-dir", str(build_dir),
                             "--source", "synthetic://?width=96&height=64", "--output", str(video)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "done:" in err and "Traceback" not in err
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    assert ok and frame.shape == (64, 96, 3) and cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0
