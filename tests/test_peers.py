"""benchmarks/peers.py, the peer benchmark behind `make bench`, on a tiny pipeline: every contender gets a row,
the table and the JSON say the same, and a model torch.compile cannot compile is a failed row, not a crash.
Speeds are not asserted (a shared machine), only that they were measured."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import ROOT, tiny_pipeline

PEERS = ROOT / "benchmarks" / "peers.py"
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
TINY = {"name": "sliding_window_fcn", "num_classes": 10, "precisions": ["fp32", "int8"],
        "input": {"size": [32, 32], "min": [32, 32], "max": [64, 64]}}


def load_peers():
    spec = importlib.util.spec_from_file_location("peers", PEERS)
    module = importlib.util.module_from_spec(spec)
    sys.modules["peers"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from data import write_dataset

    folder = tmp_path_factory.mktemp("peers")
    write_dataset(folder / "val", 2, size=(32, 32), seed=3)  # accuracy.data: every contender is scored on it
    config = tiny_pipeline(folder, models=[TINY], accuracy={"data": "val", "budget_miou": 100.0})
    md, js = folder / "peers.md", folder / "peers.json"
    # No build first: the benchmark builds what is missing.
    done = subprocess.run([sys.executable, str(PEERS), "--config", config, "--iterations", "2", "--warmup", "1",
                           "--threads", "1", "--markdown", str(md), "--json", str(js)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, md.read_text(), json.loads(js.read_text()), folder


def test_every_contender_has_a_measured_row(bench):
    _, _, result, folder = bench
    rows = {(r["contender"].split(" 2")[0], r["precision"], (r["graph"] or "").split("/out/")[-1]): r
            for r in result["rows"]}
    expected = {("PyTorch eager", "fp32", ""), ("torch.compile (inductor)", "fp32", ""),
                ("ours: onnxruntime", "fp32", "sliding_window_fcn/onnxruntime/fp32.engine.onnx"),
                ("ours: onnxruntime", "int8", "sliding_window_fcn/onnxruntime/int8.engine.onnx")}
    if HAS_OPENVINO:  # OpenVINO on the build's own graphs, fp32 and int8
        expected |= {("OpenVINO", "fp32", "sliding_window_fcn/onnxruntime/fp32.onnx"),
                     ("OpenVINO", "int8", "sliding_window_fcn/onnxruntime/int8.onnx")}
    assert set(rows) == expected
    assert (folder / "out" / "sliding_window_fcn" / "onnxruntime" / "fp32.engine.onnx").exists()
    for key, row in rows.items():
        assert row["status"] == "ok", (key, row["reason"])
        assert row["threads"] == 1 and row["size"] == [32, 32] and row["model"] == "sliding_window_fcn"
        assert len(row["latencies_ms"]) == 2 and row["p90_ms"] >= row["median_ms"] > 0
        assert row["vs_eager"] > 0 and 0.5 <= row["agreement"] <= 1.0
        assert 0.0 <= row["miou"] <= 100.0, key  # each scored on accuracy.data, its frames preprocessed
    assert rows[("PyTorch eager", "fp32", "")]["vs_eager"] == 1.0
    assert rows[("PyTorch eager", "fp32", "")]["agreement"] == 1.0
    assert rows[("torch.compile (inductor)", "fp32", "")]["setup_s"] > 0  # compile time, apart from latency
    for precision in ("fp32", "int8"):
        assert sum(r["fastest"] for r in result["rows"] if r["precision"] == precision) == 1
        fastest = min((r for r in result["rows"] if r["precision"] == precision), key=lambda r: r["median_ms"])
        assert fastest["fastest"]
    assert result["machine"]["cores"] >= 1 and result["machine"]["torch"] == torch.__version__
    assert (result["machine"]["openvino"] is not None) == HAS_OPENVINO


def test_markdown_table_is_the_json(bench):
    stdout, md, result, _ = bench
    assert md in stdout
    lines = [line for line in md.splitlines() if line.startswith("| sliding_window_fcn")]
    assert len(lines) == len(result["rows"])
    header = md.splitlines()[2]
    assert header.startswith("| model | contender | precision | median ms | p90 ms | vs eager |")
    for line, row in zip(lines, result["rows"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == header.count("|") - 1
        assert cells[1].strip("*") == row["contender"] and cells[2] == row["precision"]
        assert cells[3].strip("*") == f"{row['median_ms']:.1f}" and cells[5] == f"{row['vs_eager']:.2f}x"
        assert cells[1].startswith("**") == row["fastest"]
    assert "threads for every contender" in md and result["machine"]["cpu"] in md


class Uncompilable(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("no kernel for this\nsecond line of the trace")


def test_a_model_inductor_cannot_compile_is_a_failed_row():
    peers = load_peers()
    contender = peers.inductor(Uncompilable(), torch.zeros(1, 3, 8, 8))
    assert contender.status == "failed" and contender.call is None
    assert contender.reason == "RuntimeError: no kernel for this"
    peers.run_rounds([contender], warmup=1, iterations=2)  # not run, no crash
    (row,) = peers.rows_for(type("Cfg", (), {"name": "m", "input": type("I", (), {"size": [8, 8]})})(),
                            [contender], 1)
    assert row["status"] == "failed" and row["median_ms"] is None and not row["fastest"]
    assert "failed: RuntimeError: no kernel for this" in peers.render_markdown(
        {"machine": peers.machine(), "threads": 1, "iterations": 2, "warmup": 1, "build_dir": "/", "rows": [row]})


def test_each_contender_is_scored_on_the_labelled_set(monkeypatch):
    """With accuracy.data, every contender that ran gets its mIoU on that set (a fast INT8 peer that computes
    the graph differently shows it); without, none."""
    peers = load_peers()
    labels = [np.array([[0, 1], [1, 1]]), np.array([[1, 0], [0, 0]])]
    frames = [np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8)]  # what evaluation_set gives
    monkeypatch.setattr(peers, "evaluation_set", lambda pipeline, cfg: (frames, labels))

    def logits(classes):  # (1, 2, 2, 2) logits whose argmax is ``classes``
        return np.stack([classes == 0, classes == 1]).astype(np.float32)[None]

    def index(x):  # contenders take normalized (1, 3, h, w) float images, never frames
        assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
        return int(x.max())

    right = peers.Contender("right", "fp32", infer=lambda x: logits(labels[index(x)]))
    wrong = peers.Contender("wrong", "int8", infer=lambda x: logits(1 - labels[index(x)]))
    skipped = peers.Contender("not run", "int8", status="not run")
    cfg = type("Cfg", (), {"name": "m", "num_classes": 2, "input": type("I", (), {"size": [2, 2]}),
                           "mean": [0.0] * 3, "std": [1.0] * 3})()
    with_data = type("P", (), {"accuracy": type("A", (), {"data": "labelled"})()})()
    miou = peers.score(with_data, cfg, [right, wrong, skipped])
    assert miou == {id(right): 100.0, id(wrong): 0.0}
    rows = peers.rows_for(cfg, [right, wrong, skipped], 1, miou)
    assert [r["miou"] for r in rows] == [100.0, 0.0, None]
    md = peers.render_markdown({"machine": peers.machine(), "threads": 1, "iterations": 0, "warmup": 0,
                                "build_dir": "/", "rows": rows})
    assert "| mIoU |" in md and "| 100.00 |" in md
    without = type("P", (), {"accuracy": type("A", (), {"data": None})()})()
    assert peers.score(without, cfg, [right]) == {}
