"""``python -m export check --data``: scores against labels, reports with plots, speed beside accuracy, and
bad datasets as one clear line. The scores themselves are checked on hand-computed confusion matrices."""
from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest

from export.__main__ import main
from export.measure.evaluate import Agreement, class_map, label_confusion, label_scores
from export.measure.metrics import compare, compare_classes
from helpers import cli, tiny_pipeline

CLASSES = ["road", "car", "sky", "tree"]
COLOURS = np.array([[128, 64, 128], [0, 0, 142], [70, 130, 180], [107, 142, 35]], np.uint8)


def write_plain_dataset(root, count: int = 3, size: tuple[int, int] = (64, 64), classes=CLASSES):
    """A plain layout (images/ and masks/ with the same file names, classes.txt) drawn with cv2: each class
    a flat region in its own colour, a border of 255 (ignore) in the masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    h, w = size
    for i in range(count):
        mask = np.zeros((h, w), np.uint8)  # road
        mask[: h // 3] = 2  # sky
        cv2.rectangle(mask, (4 + 6 * i, h // 3), (20 + 6 * i, h // 2), 3, -1)  # tree
        cv2.ellipse(mask, (w // 2 + 4 * i, 3 * h // 4), (10, 6), 0, 0, 360, 1, -1)  # car
        image = COLOURS[mask]
        mask[:2] = 255
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{i:03d}.png"), mask)
    return root


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """A tiny pipeline built at fp32 and int8, and one ``check --data`` run over a 3-image dataset."""
    folder = tmp_path_factory.mktemp("data_check")
    config = tiny_pipeline(folder)
    built = cli("build", "--config", config)
    assert built.returncode == 0, built.stderr
    data = write_plain_dataset(folder / "dataset")
    out = folder / "reports"
    assert main(["check", "--config", config, "--data", str(data), "--batch", "3",
                 "--json", str(out / "check.json"), "--report", str(out / "check.md")]) == 0
    return folder, config, data, json.loads((out / "check.json").read_text()), out


# Scores on hand-computed examples ------------------------------------------------------------------------
def test_scores_of_a_hand_computed_confusion_matrix():
    # 4 classes. Label 0: 3 right, 1 taken for 1. Label 1: 2 right, 1 taken for 0, 1 taken for 3.
    # Class 2: neither labelled nor predicted (no IoU). Class 3: predicted once, never labelled (IoU 0).
    label = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 255, 255]], np.uint8)
    pred = np.array([[0, 0, 0, 1, 1, 1, 0, 3, 2, 2]], np.int64)  # the ignored pixels' predictions do not count
    conf = label_confusion(pred, label, 4)
    assert conf.tolist() == [[3, 1, 0, 0], [1, 2, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    scores = label_scores(conf)
    # IoU = TP / (row + column - TP): class 0: 3 / (4 + 4 - 3), class 1: 2 / (4 + 3 - 2), class 3: 0 / (0 + 1 - 0)
    assert scores["per_class_iou"] == [3 / 5, 2 / 5, None, 0.0]
    assert scores["miou"] == pytest.approx((3 / 5 + 2 / 5 + 0.0) / 3, abs=1e-15)
    assert scores["pixel_accuracy"] == 5 / 8 and scores["labelled_pixels"] == 8


def test_perfect_and_disjoint_predictions():
    perfect = label_scores(np.diag([4, 0, 2]))
    assert perfect["per_class_iou"] == [1.0, None, 1.0] and perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0
    swapped = label_scores(np.array([[0, 3], [5, 0]]))
    assert swapped["per_class_iou"] == [0.0, 0.0] and swapped["miou"] == 0.0 and swapped["pixel_accuracy"] == 0.0


def test_streamed_agreement_equals_the_plain_checks():
    rng = np.random.default_rng(0)
    refs = [rng.normal(size=(1, 4, 8, 8)).astype(np.float32) for _ in range(3)]
    outs = [r + rng.normal(0, 0.3, r.shape).astype(np.float32) for r in refs]
    streamed = Agreement(4, logits=True)
    for o, r in zip(outs, refs):
        streamed.add(o, class_map(o, False, 4), r, r.argmax(1))
    assert streamed.result() == pytest.approx(compare(outs, refs))
    classes = [o.argmax(1).astype(np.uint8) for o in outs]
    streamed = Agreement(4, logits=False)
    for c, r in zip(classes, refs):
        streamed.add(c, class_map(c, True, 4), r, r.argmax(1))
    assert streamed.result() == pytest.approx(compare_classes(classes, refs))


# End to end ---------------------------------------------------------------------------------------------
def test_scores_for_pytorch_and_every_engine(checked):
    _, _, data, result, _ = checked
    assert result["dataset"]["num_images"] == 3 and result["dataset"]["classes"] == CLASSES
    rows = result["rows"]
    assert [r["source"] for r in rows] == ["pytorch", "fp32 onnxruntime", "int8 onnxruntime"]
    pytorch = rows[0]
    for r in rows:
        acc = r["accuracy"]
        assert len(acc["per_class_iou"]) == 4 and all(v is None or 0 <= v <= 1 for v in acc["per_class_iou"])
        present = [v for v in acc["per_class_iou"] if v is not None]
        assert acc["miou"] == pytest.approx(sum(present) / len(present))
        assert 0 <= acc["pixel_accuracy"] <= 1
        assert acc["labelled_pixels"] == 3 * 62 * 64  # two rows of each mask are 255
        assert np.asarray(acc["confusion"]).sum() == acc["labelled_pixels"]
        assert r["delta_miou_points"] == pytest.approx(100 * (acc["miou"] - pytorch["accuracy"]["miou"]))
    fp32, int8 = rows[1], rows[2]
    assert fp32["accuracy"]["confusion"] == pytorch["accuracy"]["confusion"]  # same predictions as PyTorch
    assert fp32["agreement"]["pixel_agreement"] == 1.0 and fp32["agreement"]["max_abs_error"] < 1e-3
    assert fp32["agreement"]["num_images"] == 3 and 0.5 <= int8["agreement"]["pixel_agreement"] <= 1
    assert pytorch["agreement"] is None and pytorch["delta_miou_points"] == 0.0


def test_speed_beside_accuracy(checked):
    _, _, _, result, _ = checked
    flops = result["models"]["bisenetv2"]["flops"]
    assert flops["flops"] == 2 * flops["macs"] > 0 and flops["nodes_by_op"]["Conv"] > 0 and not flops["uncounted_nodes"]
    assert result["peak"]["measured"]["gflops"] > 0 and result["memory_method"]
    for r in result["rows"]:
        s = r["speed"]
        assert 0 < s["batch_1"]["p50_ms"] <= s["batch_1"]["p99_ms"] and len(s["batch_1"]["latencies_ms"]) == 2
        assert s["batch_n"]["frames_per_call"] == 3 and s["batch_n"]["throughput_fps"] > 0
        assert s["batch_n"]["mode"] == "batched"  # engines take a batch (a symbolic N), like PyTorch
        assert s["peak_rss_growth_mib"] >= 0
        assert s["achieved"]["batch_1"]["gflops"] == pytest.approx(flops["flops"] * s["batch_1"]["throughput_fps"] / 1e9)
        assert s["achieved"]["batch_1"]["share_of_measured_peak"] > 0
    assert all(r["file_bytes"] > 0 for r in result["rows"][1:])


def test_report_embeds_valid_plots(checked):
    _, _, _, result, out = checked
    md = (out / "check.md").read_text()
    plots = result["plots"]["bisenetv2"]
    assert set(plots) == {"iou", "confusion", "latency"}
    for rel in plots.values():
        assert rel.startswith("check_files/") and f"]({rel})" in md
        image = cv2.imread(str(out / rel))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert "| fp32 onnxruntime |" in md and "(batched)" in md and "1 MAC = 2 FLOPs" in md
    assert re.search(r"Measured peak\*\*: [\d.]+ GFLOP/s", md)


def test_plain_check_is_unchanged_by_the_new_options(checked, capsys):
    _, config, _, _, _ = checked
    assert main(["check", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "speedup" in out and "per frame" not in out
    with pytest.raises(SystemExit) as exc:
        main(["check", "--config", config, "--limit", "2"])
    assert exc.value.code == 2 and "only apply with --data" in capsys.readouterr().err


def test_check_batch_reports_per_frame_cost_against_batch_1(checked, tmp_path, capsys):
    _, config, _, _, _ = checked
    report = tmp_path / "check.json"
    assert main(["check", "--config", config, "--batch", "3", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    rows = json.loads(report.read_text())["rows"]
    for r in rows:
        b = r["batch_n"]
        assert b["batch"] == 3 and b["call_p50_ms"] > 0
        assert b["per_frame_p50_ms"] == pytest.approx(b["call_p50_ms"] / 3)
        assert b["per_frame_vs_batch_1"] == pytest.approx(b["per_frame_p50_ms"] / r["engine"]["p50_ms"])
        assert f"{r['model']} {r['precision']} {r['run_with']}: batch 3: " in out


# Bad input: one line, exit 1 ----------------------------------------------------------------------------
def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_and_empty_data_folders(checked, tmp_path, capsys):
    _, config, _, _, _ = checked
    assert main(["check", "--config", config, "--data", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["check", "--config", config, "--data", str(tmp_path / "empty")]) == 1
    assert "empty" in one_error_line(capsys)


def test_mismatched_pairs_are_refused(checked, tmp_path, capsys):
    _, config, _, _, _ = checked
    data = write_plain_dataset(tmp_path / "ds")
    (data / "masks" / "001.png").unlink()
    assert main(["check", "--config", config, "--data", str(data)]) == 1
    assert "001" in one_error_line(capsys)


def test_class_count_mismatch_names_both(checked, tmp_path, capsys):
    _, config, _, _, _ = checked
    data = write_plain_dataset(tmp_path / "ds", classes=CLASSES + ["person"])
    assert main(["check", "--config", config, "--data", str(data)]) == 1
    line = one_error_line(capsys)
    assert "5 classes" in line and "bisenetv2 predicts 4" in line


def test_report_lists_what_the_precision_guards_kept():
    from export.measure.report import guard_lines

    int8 = {"budget": 0.5, "initial_score": 24.24, "final_score": 30.45, "reference_score": 30.91, "held": True,
            "evaluations": 46, "kept": [
                {"node": "node_conv2d_55", "op_type": "Conv", "nodes": ["node_conv2d_55"], "recovered": 5.92},
                {"node": "every Add", "op_type": "Add", "nodes": [f"add_{i}" for i in range(10)], "recovered": 0.1}]}
    fp16 = {"limit": 32752.0, "largest": float("inf"), "largest_finite": 1.2e5, "non_finite_tensors": 2, "kept": [
        {"node": "conv_7", "op_type": "Conv", "already_fp32": False},
        {"node": "softmax_1", "op_type": "Softmax", "already_fp32": True}]}
    lines = guard_lines([{"source": "int8 onnxruntime", "precision_guard": int8},
                         {"source": "fp16 onnxruntime", "precision_guard": fp16},
                         {"source": "fp32 onnxruntime", "precision_guard": None}])
    text = "\n".join(lines)
    assert "int8 onnxruntime: INT8 mIoU at build 24.24 -> 30.45 against PyTorch's 30.91 (budget 0.5: held" in text
    assert "node_conv2d_55 (Conv, +5.92); every Add (Add, 10 nodes, +0.10)" in text
    assert "fp16 onnxruntime: FP16 range guard, largest finite |value| 1.2e+05 on the calibration images (2 tensor(s) " \
           "hold inf/NaN" in text and "beyond the op-type rules: conv_7." in text
    assert "fp32" not in text
    assert guard_lines([{"source": "fp32 onnxruntime", "precision_guard": None}]) == []
