"""The opt-in openvino backend on a tiny pipeline: fp32 and int8 engines built beside the ONNX Runtime ones, with
manifests and parity; fp16 skipped with its note; the runner reloads an engine and refuses another version's;
a unit whose accuracy misses the budget is refused without touching an earlier engine or failing the build;
the runtime, export check and the peer benchmark pick the engines up. Skipped where OpenVINO cannot run."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import engines.openvino as ov_engine
from engines import artifacts as layout
from engines.base import EngineError
from engines.manifest import manifest_path, read_manifest, sha256_file
from helpers import cli, tiny_pipeline

REASON = ov_engine.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"openvino backend unavailable: {REASON}")

MODEL = {"name": "bisenetv2", "num_classes": 10, "precisions": ["fp32", "fp16", "int8"],
         "input": {"size": [64, 64], "min": [64, 64], "max": [128, 128]}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build with ``--backends onnxruntime,openvino``; accuracy.data (10 classes) so that INT8 is scored."""
    from data import write_dataset

    folder = tmp_path_factory.mktemp("openvino")
    write_dataset(folder / "val", 3, size=(64, 64), seed=5)
    config = tiny_pipeline(folder, models=[MODEL], accuracy={"data": "val", "budget_miou": 100.0},
                           parity={"num_inputs": 1, "int8": {"min_pixel_agreement": 0.5},
                                   "fp16": {"min_pixel_agreement": 0.5}})
    result = cli("build", "--config", config, "--backends", "onnxruntime,openvino")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, config, result


def blob(folder, precision: str):
    return layout.engine(folder / "out", "bisenetv2", "openvino", precision)


def test_fp32_and_int8_engines_are_built_with_manifests_and_parity(built):
    folder, _, result = built
    assert "6 artifacts: 5 built, 0 up to date, 1 skipped" in result.stdout
    assert "bisenetv2 fp16 openvino: no fp16 engine" in result.stderr and not blob(folder, "fp16").exists()
    for precision in ("fp32", "int8"):
        m = read_manifest(blob(folder, precision))
        assert m["backend"] == "openvino" and m["kind"] == "engine" and m["precision"] == precision
        assert m["backend_version"] == ov_engine.version()
        assert m["parity"]["passed"] and m["parity"]["measured_with"].startswith(f"openvino {ov_engine.version()}")
        assert m["parity"]["batch"] > 1 and m["parity"]["batch_max_abs_diff"] < 1e-3  # the blob takes any N
        assert m["openvino"]["compile_config"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert m["engine"]["sha256"] == sha256_file(blob(folder, precision))
    assert read_manifest(blob(folder, "fp32"))["parity"]["max_abs_error"] < 1e-3
    accuracy = read_manifest(blob(folder, "int8"))["accuracy"]  # the engine itself, on OpenVINO's kernels
    assert accuracy["held"] and accuracy["budget"] == 100.0 and accuracy["num_images"] == 3
    assert "openvino" in accuracy["measured_with"] and "int8 openvino: mIoU" in result.stderr
    assert read_manifest(blob(folder, "int8"))["int8"]["scheme"] == read_manifest(
        layout.engine(folder / "out", "bisenetv2", "onnxruntime", "int8"))["int8"]["scheme"]  # the same graph
    rows = json.loads((folder / "out" / "summary.json").read_text())
    assert {(r["backend"], r["precision"]): r["status"] for r in rows if r["backend"] == "openvino"} == {
        ("openvino", "fp32"): "built", ("openvino", "fp16"): "skipped", ("openvino", "int8"): "built"}
    assert blob(folder, "int8") in layout.built(folder / "out", "bisenetv2")


def test_the_runner_reloads_an_engine_at_any_batch_and_size(built):
    folder, _, _ = built
    from engines.onnxruntime import OnnxRuntimeRunner

    x = np.random.default_rng(0).standard_normal((2, 3, 128, 128)).astype(np.float32)  # not the build's size
    with ov_engine.OpenVINORunner.from_engine(blob(folder, "fp32"), threads=1) as runner:
        logits = runner.infer({"images": x})["logits"]
    with OnnxRuntimeRunner.from_engine(layout.engine(folder / "out", "bisenetv2", "onnxruntime", "fp32"), 1) as ort:
        reference = ort.infer({"images": x})["logits"]
    assert logits.shape == (2, 10, 128, 128) and np.abs(logits - reference).max() < 1e-3


def test_an_engine_of_another_openvino_version_is_refused(built, tmp_path):
    folder, _, _ = built
    engine = tmp_path / "fp32.blob"
    shutil.copy(blob(folder, "fp32"), engine)
    m = read_manifest(blob(folder, "fp32"))
    m["backend_version"] = "2025.0.0"
    manifest_path(engine).write_text(json.dumps(m))
    with pytest.raises(EngineError) as err:
        ov_engine.OpenVINORunner.from_engine(engine)
    message = str(err.value)
    assert f"built with OpenVINO 2025.0.0, this is {ov_engine.version()}" in message and "\n" not in message
    assert "python -m export build --force --backends openvino --models bisenetv2" in message


def test_a_unit_that_misses_the_budget_is_refused_and_the_build_goes_on(built, tmp_path, monkeypatch, capsys):
    """The score planted through the seam (OpenVINOBackend.score) is below the budget: nothing is written over the
    earlier engine, the warning has the numbers, the row says refused; the next build with the same inputs does
    not measure it again."""
    from export.compile import backends
    from export.compile.build import BuildOptions, build
    from export.config import load_pipeline

    folder, config, _ = built
    out = tmp_path / "out"
    shutil.copytree(folder / "out", out)
    earlier = blob(tmp_path, "int8")
    before = (sha256_file(earlier), manifest_path(earlier).read_text())
    monkeypatch.setattr(backends.OpenVINOBackend, "score", lambda self, ctx, data: ctx.accuracy_scorer().reference - 101)
    rows = build(load_pipeline(config), BuildOptions(backends=["openvino"], out_dir=str(out), force=True))
    status = {r["precision"]: r["status"] for r in rows}
    assert status == {"fp32": "built", "fp16": "skipped", "int8": "refused"}
    refused = next(r for r in rows if r["status"] == "refused")
    assert refused["accuracy"]["held"] is False and "more than the budget 100 below" in refused["reason"]
    warning = next(line for line in capsys.readouterr().err.splitlines() if "warning:" in line)
    assert warning.startswith("  warning: bisenetv2 int8 openvino: mIoU -100.") and "vs PyTorch" in warning
    assert warning.endswith("not built; the earlier int8.blob is kept; the onnxruntime int8 engine holds it")
    assert (sha256_file(earlier), manifest_path(earlier).read_text()) == before
    assert json.loads(layout.refusal(earlier).read_text())["accuracy"]["held"] is False

    earlier.unlink()  # no engine, only the refusal: the same inputs are not measured again
    monkeypatch.undo()
    rows = build(load_pipeline(config), BuildOptions(backends=["openvino"], out_dir=str(out)))
    assert {r["precision"]: r["status"] for r in rows} == {"fp32": "cached", "fp16": "skipped", "int8": "refused"}
    assert "refused before with the same inputs" in capsys.readouterr().err and not earlier.exists()


def test_where_openvino_cannot_run_it_is_skipped_or_refused(built, monkeypatch, capsys):
    from export.compile import build as build_module
    from export.config import load_pipeline
    from export.errors import UserError

    folder, config, _ = built
    monkeypatch.setattr(build_module, "openvino_reason", lambda: "no OpenVINO in this test")
    pipeline = load_pipeline(config)
    pipeline.backends = ["onnxruntime", "openvino"]  # listed in the pipeline: a note, the rest is built
    rows = build_module.build(pipeline, build_module.BuildOptions(out_dir=str(folder / "out")))
    assert {r["backend"] for r in rows} == {"onnxruntime"}
    assert "note: OpenVINO engines are skipped: no OpenVINO in this test" in capsys.readouterr().err
    with pytest.raises(UserError, match="--backends openvino: OpenVINO engines cannot be built here: no OpenVINO"):
        build_module.build(pipeline, build_module.BuildOptions(backends=["openvino"], out_dir=str(folder / "out")))


def test_the_runtime_picks_openvino_when_asked_or_when_it_is_all_there_is(built, tmp_path):
    from runtime.engine import SegmentationEngine, resolve_engine

    folder, _, _ = built
    out = folder / "out"
    assert resolve_engine("bisenetv2", out)[0].parent.name == "onnxruntime"  # the default order is unchanged
    path, why = resolve_engine("bisenetv2", out, "openvino")
    assert path == blob(folder, "int8") and why == "bisenetv2 int8 on OpenVINO (CPU)"
    only = tmp_path / "build"
    shutil.copytree(out / "bisenetv2" / "openvino", only / "bisenetv2" / "openvino")
    assert resolve_engine("bisenetv2:fp32", only)[0] == layout.engine(only, "bisenetv2", "openvino", "fp32")
    with SegmentationEngine(blob(folder, "fp32"), threads=1) as engine:
        assert engine.segment(np.zeros((48, 80, 3), np.uint8)).shape == (64, 64)
    results = tmp_path / "results.jsonl"
    r = cli("--engine", "bisenetv2", "--backend", "openvino", "--build-dir", str(out), "--threads", "1",
            "--source", "synthetic://?width=96&height=64&frames=2&seed=3", "--output", str(results), module="runtime")
    assert r.returncode == 0, r.stderr
    assert "engine: bisenetv2 int8 on OpenVINO (CPU)" in r.stderr and len(results.read_text().splitlines()) >= 2


def test_check_and_the_peer_benchmark_run_the_openvino_engines(built):
    from export.measure.check import open_artifact
    from test_peers import load_peers

    folder, _, _ = built
    manifest, runner, how = open_artifact(blob(folder, "int8"), 1)
    assert how == "openvino" and isinstance(runner, ov_engine.OpenVINORunner)
    peers = load_peers()
    feed = {"images": np.zeros((1, 3, 64, 64), np.float32)}
    contenders = [peers.ours(p, 1, feed) for p in layout.built(folder / "out", "bisenetv2")]
    ours = {(c.name, c.precision) for c in contenders if c.status == "ok"}
    assert {("ours: openvino", "fp32"), ("ours: openvino", "int8")} <= ours
    peers.run_rounds(contenders, warmup=1, iterations=1)
    for c in contenders:
        c.close()
    assert all(c.times_ms for c in contenders if c.name == "ours: openvino")


SIGNAL_AFTER_ENGINES = """
import signal, sys
import numpy as np
import onnx
from onnx import TensorProto, helper
import engines.openvino as ov_engine

x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])
y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])
graph = helper.make_model(helper.make_graph([helper.make_node("Relu", ["images"], ["logits"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
assert ov_engine.unavailable_reason() is None
blob = ov_engine.build_engine(graph.SerializeToString(), 1)
runners = [ov_engine.OpenVINORunner(blob, 1) for _ in range(2)]
for runner in runners:  # two engines loaded at once, as the peer benchmark does
    runner.activate()
    runner.infer({"images": np.ones((1, 3, 8, 8), np.float32)})
for runner in runners:  # and dropped, the first first
    runner.deactivate()
del runners, runner
held = []
signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
signal.raise_signal(signal.SIGINT)  # handled on the main thread's alternate signal stack
print("held", held)
"""


def test_ctrl_c_after_openvino_engines_come_and_go_is_handled(tmp_path):
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack per Core; with a Core per call the main
    thread was left with a freed one and Ctrl-C there crashed the process (the build's write_engine holds
    Ctrl-C back with a handler; tests/test_cli.py crashed its worker after the OpenVINO tests)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_ENGINES], capture_output=True, text=True,
                            timeout=120, cwd=str(tmp_path), env=env)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "held [2]" in result.stdout
