"""The CPU target's INT8 placement (export/compile/int8_placement.py): with ``onnxruntime.int8_placement: auto``
the build builds every placement, and keeps the fastest whose accuracy holds the budget and parity, recording
each candidate in the manifest; a fixed placement builds only that one; the setting is in the cache key.

Speed is never asserted: the builds here inject their timings through ``measure_latencies``, the one function
that times."""
from __future__ import annotations

import collections
import contextlib
import io
import shutil

import onnx
import pytest
import yaml

from engines.manifest import read_manifest
from export.__main__ import main
from export.compile import int8_placement, precisions
from export.compile.build import calibration_set
from export.compile.int8_placement import Candidate, measure_latencies, pick
from export.compile.precision import CPU_INT8_PLACEMENTS, to_int8
from export.config import load_pipeline
from helpers import tiny_pipeline


def engine(folder, precision="int8"):
    return folder / "out" / "bisenetv2" / "onnxruntime" / f"{precision}.engine.onnx"


AUTO = {"threads": 1, "int8_placement": "auto"}  # tiny_pipeline fixes one placement; these tests are of auto


def injected(latencies: dict[str, float]):
    """A stand-in for ``measure_latencies`` that returns these medians (ms) and counts its calls."""
    def measure(runners, feed, **_):
        measure.calls += 1
        assert set(runners) == set(latencies) and "images" in feed
        return {name: latencies[name] for name in runners}

    measure.calls = 0
    return measure


def build(config: str, **patches) -> str:
    """``python -m export build --config config`` in this process with ``patches`` applied to
    export.compile.int8_placement / .precisions; returns its log (stderr)."""
    log = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(log):
        for name, value in patches.items():
            module = int8_placement if hasattr(int8_placement, name) else precisions
            mp.setattr(module, name, value)
        assert main(["build", "--config", config]) == 0, log.getvalue()
    return log.getvalue()


def op_types(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module")
def auto_build(tmp_path_factory):
    """A tiny auto build in which conv_matmul is timed twice as fast as all_ops (and both hold parity)."""
    folder = tmp_path_factory.mktemp("auto")
    config = tiny_pipeline(folder, onnxruntime=AUTO)
    log = build(config, measure_latencies=injected({"all_ops": 10.0, "conv_matmul": 5.0}))
    return folder, config, log


def test_the_manifest_records_every_candidate_and_the_choice(auto_build):
    folder, config, log = auto_build
    block = read_manifest(engine(folder))["int8"]
    assert block["setting"] == "auto" and block["placement"] == "conv_matmul"
    assert block["scheme"] == "u8s8-7bit" and block["weight_max_abs"] <= 64  # 7-bit weights in both placements
    rows = {c["placement"]: c for c in block["candidates"]}
    assert list(rows) == list(CPU_INT8_PLACEMENTS)
    assert rows["all_ops"]["median_ms"] == 10.0 and rows["conv_matmul"]["median_ms"] == 5.0
    assert rows["conv_matmul"]["chosen"] and not rows["all_ops"]["chosen"]
    assert rows["conv_matmul"]["why"] == "the fastest that holds" and rows["all_ops"]["why"] == "slower"
    for row in rows.values():
        assert row["holds"] and 0.5 <= row["pixel_agreement"] <= 1  # tiny_pipeline's parity.int8
        assert row["miou"] is None and row["held"] is None  # no accuracy.data: not scored
    assert block["timing"]["rounds"] == int8_placement.ROUNDS and block["timing"]["input"] == {"images": [1, 3, 64, 64]}
    # One line in the log says which placement won and the ratio.
    lines = [line for line in log.splitlines() if "placement" in line]
    assert lines == ["  bisenetv2 int8 onnxruntime: placement conv_matmul, 2.00x the speed of all_ops (5.00 vs 10.00 "
                     f"ms, median of {int8_placement.ROUNDS} interleaved rounds, load average "
                     f"{block['timing']['load_average']}; all_ops: slower)"]
    # The artifact is the chosen placement's graph, not the other's.
    pipeline = load_pipeline(config)
    rewritten = onnx.load(str(folder / "out" / "bisenetv2" / "onnxruntime" / "rewritten.onnx"))
    calibration = calibration_set(pipeline, pipeline.models[0])[0]
    saved = op_types(onnx.load(str(folder / "out" / "bisenetv2" / "onnxruntime" / "int8.onnx")))
    by_placement = {p: op_types(to_int8(rewritten, calibration, "onnxruntime", placement=p)) for p in CPU_INT8_PLACEMENTS}
    assert by_placement["conv_matmul"] != by_placement["all_ops"]
    assert saved == by_placement["conv_matmul"]


def test_a_faster_placement_within_the_margin_does_not_replace_the_default(tmp_path):
    model = {"name": "bisenetv2", "num_classes": 4, "precisions": ["int8"], "input": {"size": [64, 64]}}
    build(tiny_pipeline(tmp_path, models=[model], onnxruntime=AUTO),
          measure_latencies=injected({"all_ops": 10.0, "conv_matmul": 9.8}))
    block = read_manifest(engine(tmp_path))["int8"]
    rows = {c["placement"]: c for c in block["candidates"]}
    assert block["placement"] == "all_ops" and rows["all_ops"]["chosen"]
    assert rows["conv_matmul"]["why"] == "faster by less than the 5% margin"


def test_a_fixed_placement_builds_only_that_one(tmp_path):
    quantized = []

    def spy(*args, placement, **kwargs):
        quantized.append(placement)
        return to_int8(*args, placement=placement, **kwargs)

    never = injected({})
    model = {"name": "bisenetv2", "num_classes": 4, "precisions": ["int8"], "input": {"size": [64, 64]}}
    config = tiny_pipeline(tmp_path, models=[model], onnxruntime={"threads": 1, "int8_placement": "conv_matmul"})
    log = build(config, to_int8=spy, measure_latencies=never)
    assert quantized == ["conv_matmul"] and never.calls == 0
    block = read_manifest(engine(tmp_path))["int8"]
    assert block["setting"] == block["placement"] == "conv_matmul" and block["timing"] is None
    assert block["candidates"] == [{"placement": "conv_matmul", "median_ms": None, "miou": None, "held": None,
                                    "pixel_agreement": None, "holds": None, "chosen": True,
                                    "why": "fixed by onnxruntime.int8_placement"}]
    assert "placement" not in log  # nothing was chosen


def test_a_faster_placement_that_misses_the_accuracy_budget_is_never_chosen(tmp_path):
    """With accuracy.data each candidate goes through the accuracy guard; conv_matmul is timed 5x faster, but a
    scorer that finds it 60 points worse makes it miss the budget (with no fallback allowed), so all_ops is
    kept, and the manifest says why."""
    from data import write_dataset

    real = precisions.int8_with_budget

    def guard(graph, calibration, target, method, evaluate, *args, placement, **kwargs):
        worse = (lambda m: evaluate(m) - 60.0) if placement == "conv_matmul" else evaluate
        return real(graph, calibration, target, method, worse, *args, placement=placement, **kwargs)

    write_dataset(tmp_path / "val", 2, size=(64, 64), seed=5)
    model = {"name": "bisenetv2", "num_classes": 10, "precisions": ["int8"], "input": {"size": [64, 64]}}
    config = tiny_pipeline(tmp_path, models=[model], onnxruntime=AUTO,
                           accuracy={"data": "val", "budget_miou": 30.0, "max_fallback": 0},
                           parity={"num_inputs": 1, "int8": {"min_pixel_agreement": 0.0}})
    build(config, int8_with_budget=guard, measure_latencies=injected({"all_ops": 10.0, "conv_matmul": 2.0}))
    manifest = read_manifest(engine(tmp_path))
    rows = {c["placement"]: c for c in manifest["int8"]["candidates"]}
    assert manifest["int8"]["placement"] == "all_ops"
    assert rows["all_ops"]["held"] and rows["all_ops"]["chosen"] and rows["all_ops"]["why"] == "the only one that holds"
    assert rows["conv_matmul"]["held"] is False and not rows["conv_matmul"]["holds"]
    assert "is more than accuracy.budget_miou 30" in rows["conv_matmul"]["why"]
    assert rows["conv_matmul"]["miou"] < rows["all_ops"]["miou"]
    assert manifest["precision_guard"]["placement"] == "all_ops" and manifest["precision_guard"]["held"]


def test_the_setting_is_in_the_cache_key(auto_build, tmp_path):
    """Unchanged, the INT8 engine is reused without measuring again; another setting rebuilds it (and only
    it: the fp32 engine's key does not hold the INT8 placement)."""
    folder, _, _ = auto_build
    work = tmp_path / "copy"
    shutil.copytree(folder, work)
    config = str(work / "pipeline.yaml")
    before = {p: engine(work, p).stat().st_mtime_ns for p in ("fp32", "int8")}
    never = injected({})
    log = build(config, measure_latencies=never)
    assert never.calls == 0 and "bisenetv2 int8 onnxruntime: up to date" in log
    assert {p: engine(work, p).stat().st_mtime_ns for p in before} == before
    data = yaml.safe_load(open(config))
    data["onnxruntime"]["int8_placement"] = "all_ops"
    open(config, "w").write(yaml.safe_dump(data))
    log = build(config, measure_latencies=never)
    assert "bisenetv2 fp32 onnxruntime: up to date" in log and "bisenetv2 int8 onnxruntime: built" in log
    assert engine(work, "fp32").stat().st_mtime_ns == before["fp32"]
    assert read_manifest(engine(work))["int8"]["placement"] == "all_ops"


# The choice itself, on candidates made up of their measurements -------------------------------------------------

def candidate(placement: str, ms: float, problems: tuple[str, ...] = (), score: float | None = None) -> Candidate:
    guard = None if score is None else {"final_score": score}
    return Candidate(placement, onnx.ModelProto(), guard, {"pixel_agreement": 0.9}, list(problems), ms)


@pytest.mark.parametrize("all_ops, conv_matmul, chosen", [
    (10.0, 5.0, "conv_matmul"),  # faster by half
    (10.0, 9.4, "conv_matmul"),  # by 6%, more than the margin
    (10.0, 9.6, "all_ops"),  # by 4%: the default stays
    (10.0, 12.0, "all_ops"),
])
def test_pick_the_faster_of_two_that_hold(all_ops, conv_matmul, chosen):
    kept, why = pick([candidate("all_ops", all_ops), candidate("conv_matmul", conv_matmul)])
    assert kept.placement == chosen and set(why) == {"all_ops", "conv_matmul"}


def test_pick_never_takes_one_that_fails_even_if_faster():
    slow, fast = candidate("all_ops", 10.0), candidate("conv_matmul", 1.0, ("pixel agreement 0.41 < 0.9",))
    kept, why = pick([slow, fast])
    assert kept is slow and why["conv_matmul"] == "pixel agreement 0.41 < 0.9"
    # The default failing: the other one, however slow.
    kept, why = pick([candidate("all_ops", 1.0, ("mIoU ...",)), candidate("conv_matmul", 50.0)])
    assert kept.placement == "conv_matmul" and why["conv_matmul"] == "the only one that holds"


def test_pick_when_none_holds_keeps_the_most_accurate():
    kept, why = pick([candidate("all_ops", 1.0, ("mIoU",), score=40.0), candidate("conv_matmul", 9.0, ("mIoU",), score=41.0)])
    assert kept.placement == "conv_matmul" and why["conv_matmul"] == "none holds; the most accurate"


class _Counting:
    """A runner whose calls take no time; it records the order it was called in."""

    def __init__(self, name: str, order: list[str]) -> None:
        self.name, self.order = name, order

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def infer(self, feed):
        self.order.append(self.name)
        return {}


def test_measure_latencies_interleaves_rounds():
    order: list[str] = []
    medians = measure_latencies({n: (lambda n=n: _Counting(n, order)) for n in ("a", "b")}, {"images": None},
                                rounds=4, warmup=1)
    assert set(medians) == {"a", "b"} and all(ms >= 0 for ms in medians.values())
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then rotating rounds


def test_an_unknown_placement_is_refused_with_its_path(tmp_path):
    from export.errors import UserError

    config = tiny_pipeline(tmp_path, onnxruntime={"int8_placement": "fastest"})
    with pytest.raises(UserError, match="onnxruntime.int8_placement: 'fastest' is not one of auto, all_ops, conv_matmul"):
        load_pipeline(config)
