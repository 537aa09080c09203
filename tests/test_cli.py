"""The CLI end to end on a tiny pipeline: build, cache, check, list, and every bad input as one clear line."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from engines.base import EngineError
from engines.manifest import atomic_write, manifest_path, read_manifest, sha256_file
from engines.onnxruntime import OnnxRuntimeRunner
from export.__main__ import main
from helpers import ROOT, cli, tiny_pipeline


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build shared by the tests that only read it (they copy it before damaging anything)."""
    folder = tmp_path_factory.mktemp("tiny")
    config = tiny_pipeline(folder)
    result = cli("build", "--config", config)
    assert result.returncode == 0, result.stderr
    return folder, config, result


def engine(folder, precision="fp32"):
    return folder / "out" / "bisenetv2" / "onnxruntime" / f"{precision}.engine.onnx"


def test_build_writes_engines_with_manifests(built):
    folder, _, result = built
    assert "2 artifacts: 2 built, 0 up to date" in result.stdout
    for precision in ("fp32", "int8"):
        m = read_manifest(engine(folder, precision))
        assert m["model"] == "bisenetv2" and m["precision"] == precision and m["backend"] == "onnxruntime"
        assert m["classes"] == ["class_0", "class_1", "class_2", "class_3"] and len(m["palette"]) == 4
        assert m["input"]["min"] == [64, 64] and m["input"]["max"] == [128, 128]
        assert m["normalization"]["mean"] == [123.675, 116.28, 103.53]
        assert set(m["hashes"]) >= {"inputs", "weights", "onnx", "config"}
        assert m["engine"]["sha256"] == sha256_file(engine(folder, precision))
        assert m["parity"]["passed"] and 0.5 <= m["parity"]["pixel_agreement"] <= 1
    assert read_manifest(engine(folder))["parity"]["max_abs_error"] < 1e-3
    for stage in ("export.onnx", "onnxruntime/rewritten.onnx", "onnxruntime/fp32.onnx", "onnxruntime/int8.onnx"):
        assert (folder / "out" / "bisenetv2" / stage).exists(), stage
    with OnnxRuntimeRunner.from_engine(engine(folder)) as runner:
        out = runner.infer({"images": torch.randn(1, 3, 96, 128).numpy()})["logits"]
    assert out.shape == (1, 4, 96, 128)  # dynamic H and W survive every stage


def test_int8_manifest_records_the_cpu_and_loading_elsewhere_says_so(built, tmp_path, monkeypatch, caplog):
    """An INT8 engine's manifest says which INT8 kernels scored it and how wide its weights are; loaded on
    a CPU whose kernels would saturate them (engines/cpu.py), it says so in one line and still runs."""
    from engines import cpu
    from test_int8_cpus import AVX2, VNNI

    folder, _, _ = built
    for f in (engine(folder, "int8"), manifest_path(engine(folder, "int8"))):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "int8.engine.onnx"
    data = json.loads(manifest_path(path).read_text())
    assert data["int8"]["scheme"] == "u8s8-7bit" and data["int8"]["weight_max_abs"] == cpu.SATURATION_FREE_WEIGHT
    assert data["device"]["cpu"] == cpu.this_cpu()
    monkeypatch.setattr(cpu, "this_cpu", lambda: AVX2)
    with caplog.at_level(logging.WARNING, logger="engines.onnxruntime"):
        OnnxRuntimeRunner.from_engine(path)
    assert caplog.messages == []  # 7-bit weights: the same integers on every kernel
    data["int8"]["weight_max_abs"], data["device"]["cpu"] = 127, VNNI
    manifest_path(path).write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="engines.onnxruntime"):
        with OnnxRuntimeRunner.from_engine(path) as runner:
            runner.infer({"images": torch.randn(1, 3, 64, 64).numpy()})
    assert len(caplog.messages) == 1 and "saturate" in caplog.messages[0]


def test_cache_hit_miss_and_force(built, tmp_path):
    folder, config, _ = built
    work = tmp_path / "copy"
    shutil.copytree(folder, work)
    config = str(work / "pipeline.yaml")
    before = engine(work).stat().st_mtime_ns
    assert main(["build", "--config", config]) == 0
    assert engine(work).stat().st_mtime_ns == before  # identical inputs: nothing rebuilt
    data = yaml.safe_load(open(config))
    data["models"][0]["seed"] = 1  # other weights: a miss
    open(config, "w").write(yaml.safe_dump(data))
    assert main(["build", "--config", config, "--precisions", "fp32"]) == 0
    after = engine(work).stat().st_mtime_ns
    assert after != before
    assert main(["build", "--config", config, "--precisions", "fp32", "--force"]) == 0
    assert engine(work).stat().st_mtime_ns != after


def test_check_prints_table_and_writes_reports(built, tmp_path, capsys):
    folder, config, _ = built
    assert main(["check", "--config", config, "--json", str(tmp_path / "c.json"), "--report", str(tmp_path / "c.md")]) == 0
    out = capsys.readouterr().out
    assert "speedup" in out and "bisenetv2" in out
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "int8"]
    assert rows[0]["pixel_agreement"] == 1.0 and rows[0]["miou_vs_pytorch"] == 1.0
    assert all(r["engine"]["p50_ms"] > 0 and r["pytorch"]["p50_ms"] > 0 for r in rows)
    assert "| bisenetv2 | fp32 |" in (tmp_path / "c.md").read_text()


def test_list_shows_every_model_with_parameters(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("bisenetv2", "segformer_b0", "segformer_b5", "ccnet", "ccnet_r101"):
        assert name in out
    assert "3.75M" in out or "3.7" in out  # segformer_b0 with 19 classes


def test_corrupt_engine_is_refused_with_one_line(built, tmp_path):
    folder, _, _ = built
    work = tmp_path / "copy"
    shutil.copytree(folder, work)
    path = engine(work)
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a crash of some other tool
    with pytest.raises(EngineError, match="does not match its manifest"):
        OnnxRuntimeRunner.from_engine(path)
    result = cli("check", "--config", str(work / "pipeline.yaml"))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: engine") and "rebuild" in errors[0]
    assert "Traceback" not in result.stderr


def test_engine_from_another_onnxruntime_is_refused(built, tmp_path):
    folder, _, _ = built
    work = tmp_path / "copy"
    shutil.copytree(folder, work)
    m = read_manifest(engine(work))
    m["backend_version"] = "1.0.0"
    manifest_path(engine(work)).write_text(json.dumps(m))
    with pytest.raises(EngineError, match="built with ONNX Runtime 1.0.0.*rebuild"):
        OnnxRuntimeRunner.from_engine(engine(work))


def test_failed_parity_keeps_the_previous_engine(built, tmp_path):
    folder, _, _ = built
    work = tmp_path / "copy"
    shutil.copytree(folder, work)
    good = sha256_file(engine(work))
    config = tiny_pipeline(work, parity={"num_inputs": 1, "fp32": {"max_abs_error": 1e-15}})
    assert main(["build", "--config", config, "--precisions", "fp32", "--force"]) == 1
    assert sha256_file(engine(work)) == good
    assert read_manifest(engine(work))["engine"]["sha256"] == good
    assert main(["build", "--config", config, "--precisions", "fp32", "--force", "--no-verify"]) == 0


def test_atomic_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "fp32.engine.onnx"
    target.write_bytes(b"good engine")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        atomic_write(target, b"x" * 1000)
    assert target.read_bytes() == b"good engine"
    assert [p.name for p in tmp_path.iterdir()] == ["fp32.engine.onnx"]


def test_interrupt_between_engine_and_manifest_is_held_back(tmp_path, monkeypatch):
    """Ctrl-C right after the new engine is in place: the manifest is still written, then the interrupt comes.
    The signal goes to another thread, as the kernel may do with a process-wide signal in a process with
    ONNX Runtime's threads; Python runs the handler in the main thread all the same."""
    import signal
    import threading

    import engines.manifest as manifest_module
    from engines.manifest import sha256_bytes, write_engine

    path = tmp_path / "fp32.engine.onnx"
    write_engine(path, b"old engine", {"engine": {"sha256": sha256_bytes(b"old engine")}})
    go, done = threading.Event(), threading.Event()

    def other_thread():
        go.wait()
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        done.set()

    threading.Thread(target=other_thread, daemon=True).start()
    real = manifest_module.atomic_write

    def engine_then_interrupt(target, data):
        real(target, data)
        if target == path:
            go.set()
            done.wait(5)
            for _ in range(1000):  # bytecodes in which Python would raise a pending KeyboardInterrupt
                pass

    monkeypatch.setattr(manifest_module, "atomic_write", engine_then_interrupt)
    # Python's own Ctrl-C handler, whatever this process inherited (a background job starts with SIGINT ignored).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            write_engine(path, b"new engine", {"engine": {"sha256": sha256_bytes(b"new engine")}})
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert path.read_bytes() == b"new engine"
    assert read_manifest(path)["engine"]["sha256"] == sha256_bytes(b"new engine")


def _state_dict_file(path, model_name, num_classes):
    from models import create_model

    torch.save(create_model(model_name, num_classes=num_classes).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("unknown_model", "--models: 'segformer_b9' is not in the pipeline; it has: bisenetv2"),
    ("missing_weights", "do not exist; fix models[].weights"),
    ("corrupt_weights", "cannot be read as a PyTorch checkpoint"),
    ("mismatched_weights", "do not fit bisenetv2 with num_classes=4: missing keys:"),
    ("wrong_classes", "shape mismatch: head.seg.2.weight"),
    ("empty_calibration", "has no images"),
    ("missing_calibration", "does not exist"),
    ("unreadable_image", "cannot decode image"),
    ("tensorrt", "--backends tensorrt: TensorRT engines cannot be built here:"),
    ("bad_config", "models[0].precisions[0]: 'int4' is not one of fp32, fp16, int8"),
])
def test_bad_input_is_one_clear_line(tmp_path, case, message):
    model = {"name": "bisenetv2", "num_classes": 4, "precisions": ["int8"], "input": {"size": [64, 64]}}
    overrides, args = {}, []
    if case == "unknown_model":
        args = ["--models", "segformer_b9"]
    elif case == "missing_weights":
        model["weights"] = "nowhere.pt"
    elif case == "corrupt_weights":
        (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
        model["weights"] = "w.pt"
    elif case == "mismatched_weights":
        model["weights"] = _state_dict_file(tmp_path / "w.pt", "segformer_b0", 4)
    elif case == "wrong_classes":
        model["weights"] = _state_dict_file(tmp_path / "w.pt", "bisenetv2", 19)
    elif case == "empty_calibration":
        (tmp_path / "empty").mkdir()
        overrides["calibration"] = {"images": "empty"}
    elif case == "missing_calibration":
        overrides["calibration"] = {"images": "nowhere"}
    elif case == "unreadable_image":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "a.png").write_bytes(b"not a png")
        overrides["calibration"] = {"images": "bad"}
    elif case == "tensorrt":
        args = ["--backends", "tensorrt"]
    elif case == "bad_config":
        model["precisions"] = ["int4"]
    config = tiny_pipeline(tmp_path, models=[model], **overrides)
    result = cli("build", "--config", config, *args)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "bisenetv2" / "onnxruntime" / "int8.engine.onnx").exists()


def test_usage_errors_exit_2():
    assert cli("build", "--precisions", "int4").returncode == 2
    assert cli("frobnicate").returncode == 2


def test_interrupted_build_keeps_good_engines(built, tmp_path):
    """Ctrl-C in the middle of a rebuild: one line, exit 1, the earlier engines still load, no temp files."""
    import signal

    folder, _, _ = built
    work = tmp_path / "copy"
    shutil.copytree(folder, work)
    before = {p: sha256_file(p) for p in (engine(work, "fp32"), engine(work, "int8"))}
    # A shell running a command in the background without job control (CI scripts, `cmd &`) starts it with
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler: give the build Ctrl-C back.
    proc = subprocess.Popen([sys.executable, "-m", "export", "build", "--config", str(work / "pipeline.yaml"), "--force"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stderr:  # wait until the export is done; the tiny build's engines take about a second
        if "exported to ONNX" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert "error: interrupted" in rest and "Traceback" not in rest
    for path in before:
        manifest = read_manifest(path)
        assert manifest["engine"]["sha256"] == sha256_file(path)  # old or new, but whole and matching
        with OnnxRuntimeRunner.from_engine(path) as runner:
            assert runner.infer({"images": torch.randn(1, 3, 64, 64).numpy()})["logits"].shape == (1, 4, 64, 64)
    assert not list(work.rglob("*.tmp"))


def test_embedded_pre_and_post_processing(tmp_path, capsys):
    """embed_pre_post: the engine takes uint8 NHWC frames and returns a uint8 class map equal to PyTorch's argmax."""
    import numpy as np

    from data import render_scene
    from export.images import preprocess

    model = {"name": "bisenetv2", "num_classes": 4, "precisions": ["fp32"], "embed_pre_post": True,
             "input": {"size": [64, 64]}}
    config = tiny_pipeline(tmp_path, models=[model], parity={"num_inputs": 2})
    assert main(["build", "--config", config]) == 0
    path = engine(tmp_path)
    m = read_manifest(path)
    assert m["embed_pre_post"] and m["input"]["name"] == "frames" and m["input"]["dtype"] == "uint8"
    assert m["output"] == {"name": "classes", "layout": "NHW", "dtype": "uint8", "num_classes": 4}
    assert m["parity"]["pixel_agreement"] == 1.0 and m["parity"]["max_abs_error"] is None
    frame = render_scene(7, (64, 64))[0]
    with OnnxRuntimeRunner.from_engine(path) as runner:
        classes = runner.infer({"frames": frame[None]})["classes"]
    from export.compile.weights import load_model
    from export.config import load_pipeline

    torch_model, _ = load_model(load_pipeline(config).models[0], load_pipeline(config))
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(preprocess(frame, (64, 64), m["normalization"]["mean"],
                                                             m["normalization"]["std"]))).argmax(1).numpy()
    assert classes.dtype == np.uint8 and classes.shape == (1, 64, 64)
    assert (classes == expected).mean() > 0.999
    assert main(["check", "--config", config]) == 0
    assert "n/a" in capsys.readouterr().out


def test_tensorrt_bound_graph_with_an_unlowered_op_fails_the_build(tmp_path, monkeypatch, capsys):
    """Without the criss-cross lowering, the TensorRT-bound CCNet graph keeps a seg:: node: the build names it."""
    import export.compile.build

    monkeypatch.setattr(export.compile.build, "apply_rewrites", lambda graph, target: (graph, {}))
    monkeypatch.setattr(export.compile.build, "tensorrt_reason", lambda: "no TensorRT in this test")
    model = {"name": "ccnet", "num_classes": 4, "precisions": ["fp32"], "input": {"size": [64, 64]}}
    config = tiny_pipeline(tmp_path, models=[model], backends=["tensorrt"])
    assert main(["build", "--config", config]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ccnet fp32: TensorRT-bound graph fails the compatibility check: node")
    assert "CrissCrossAttention" in err and "TensorRT 10.3" in err
    assert not (tmp_path / "out" / "ccnet" / "tensorrt" / "fp32.onnx").exists()


def test_accuracy_budget_and_fp16_guard_are_recorded(tmp_path):
    """With accuracy.data, INT8 is scored against labels and the guard's report lands in the manifest."""
    from data import write_dataset

    write_dataset(tmp_path / "val", 3, size=(64, 64), seed=5)
    model = {"name": "bisenetv2", "num_classes": 10, "precisions": ["fp16", "int8"], "input": {"size": [64, 64]}}
    config = tiny_pipeline(tmp_path, models=[model], accuracy={"data": "val", "budget_miou": 100.0},
                           parity={"num_inputs": 1, "int8": {"min_pixel_agreement": 0.0},
                                   "fp16": {"min_pixel_agreement": 0.0}})
    result = cli("build", "--config", config)
    assert result.returncode == 0, result.stderr
    assert "mIoU" in result.stderr and "held" in result.stderr
    guard = read_manifest(engine(tmp_path, "int8"))["precision_guard"]
    assert guard["held"] and guard["budget"] == 100.0 and guard["kept"] == []
    assert 0 <= guard["final_score"] <= 100 and guard["evaluations"] == 1
    fp16 = read_manifest(engine(tmp_path, "fp16"))["precision_guard"]
    assert fp16["limit"] == 0.5 * 65504 and fp16["kept"] == []  # a tame net: nothing near FP16's range


def test_accuracy_data_with_other_classes_is_refused(tmp_path):
    from data import write_dataset

    write_dataset(tmp_path / "val", 2, size=(64, 64), seed=5)
    model = {"name": "bisenetv2", "num_classes": 4, "precisions": ["int8"], "input": {"size": [64, 64]}}
    result = cli("build", "--config", tiny_pipeline(tmp_path, models=[model], accuracy={"data": "val"}))
    assert result.returncode == 1
    assert "accuracy.data val has 10 classes, bisenetv2 has num_classes=4" in result.stderr.splitlines()[-1]


def test_missed_accuracy_budget_fails_the_build(tmp_path):
    """A budget no INT8 graph can meet (negative: better than PyTorch) with no fallback allowed: the build says so."""
    from data import write_dataset

    write_dataset(tmp_path / "val", 2, size=(64, 64), seed=5)
    model = {"name": "bisenetv2", "num_classes": 10, "precisions": ["int8"], "input": {"size": [64, 64]}}
    config = tiny_pipeline(tmp_path, models=[model],
                           accuracy={"data": "val", "budget_miou": -100.0, "max_fallback": 0},
                           parity={"num_inputs": 1, "int8": {"min_pixel_agreement": 0.0}})
    result = cli("build", "--config", config)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "is more than accuracy.budget_miou -100" in last and "--no-verify" in last
    assert not engine(tmp_path, "int8").exists()
