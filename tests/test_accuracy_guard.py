"""The accuracy guards on nets broken on purpose: an INT8-fragile outlier-channel layer and a planted FP16
overflow. Inputs are smooth random fields: fine for testing the mechanism, not calibration for a user's build
(which needs real images)."""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.compile.accuracy_guard import FP16_MAX, fp16_with_range_guard, int8_with_budget
from export.compile.precision import to_fp16

SIZE = 32


def smooth_fields(count: int, seed: int, size: int = SIZE) -> list[np.ndarray]:
    """(1,3,size,size) fields of unit variance with structure a few pixels wide: white noise low-passed in
    the Fourier domain."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    lowpass = np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * 0.06 ** 2))
    out = []
    for _ in range(count):
        x = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((1, 3, size, size))) * lowpass))
        out.append(((x - x.mean()) / x.std()).astype(np.float32))
    return out


def export(model: nn.Module) -> onnx.ModelProto:
    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(model.eval(), (torch.zeros(1, 3, SIZE, SIZE),), dynamo=True, opset_version=18,
                                    input_names=["images"], output_names=["logits"])
    return program.model_proto


def run(model: onnx.ModelProto, inputs: list[np.ndarray], simulate_qdq: bool = False) -> list[np.ndarray]:
    """``simulate_qdq``: Q/DQ run as written in FP32, as TensorRT computes them (the build scores
    TensorRT-bound graphs so), instead of by this CPU's integer kernels."""
    options = ort.SessionOptions()
    if simulate_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [session.run(None, {"images": x})[0] for x in inputs]


class ConvNet(nn.Module):
    """3 -> 8 -> 8 -> 4 classes, ReLU between."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


def int8_fragile_net() -> nn.Module:
    """Channels 0-3 of c2 scaled by 1000 and c3 compensating (ReLU commutes with a positive scale), so the
    float function is unchanged; but one per-tensor INT8 scale for c2's output is set by the big channels
    and rounds the small ones to 0, and c3's compensating weights are 1000x smaller than its others in the
    same per-channel row."""
    torch.manual_seed(3)  # a seed whose random net predicts all 4 classes on smooth fields
    net = ConvNet().eval()
    with torch.no_grad():
        net.c3.bias.zero_()  # or the bias alone decides the class
        big = [0, 1, 2, 3]
        net.c2.weight[big] *= 1000
        net.c2.bias[big] *= 1000
        net.c3.weight[:, big] /= 1000
    return net


@pytest.fixture(scope="module")
def fragile():
    """The fragile net's FP32 graph, calibration batches, and its score: % of held-out pixels whose class
    matches the FP32 graph's (reference 100)."""
    fp32 = export(int8_fragile_net())
    held_out = smooth_fields(16, seed=2)
    reference = [y.argmax(1) for y in run(fp32, held_out)]

    def pixel_agreement(model: onnx.ModelProto, simulate_qdq: bool = False) -> float:
        outputs = run(model, held_out, simulate_qdq)
        return 100.0 * float(np.mean([(y.argmax(1) == r).mean() for y, r in zip(outputs, reference)]))

    return fp32, smooth_fields(8, seed=1), pixel_agreement


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_int8_fallback_keeps_the_sensitive_layers_and_holds_the_budget(fragile, target):
    """Scored as the build scores each placement: the CPU graph by ONNX Runtime's integer kernels (exact on
    every x86 CPU with its 7-bit weights), the TensorRT-bound graph with Q/DQ simulated, so the search takes
    the same steps on every machine."""
    fp32, calibration, agreement = fragile
    pixel_agreement = functools.partial(agreement, simulate_qdq=target == "tensorrt")
    model, report = int8_with_budget(fp32, calibration, target, "minmax", pixel_agreement, reference_score=100.0,
                                     budget=2.0)
    print(target, {k: report[k] for k in ("initial_score", "final_score", "evaluations", "candidates")},
          report["kept"], report["sensitivity"])

    assert 100.0 - report["initial_score"] > 2.0, "plain INT8 must miss the budget, or the test tests nothing"
    assert report["held"] and 100.0 - report["final_score"] <= 2.0
    assert report["final_score"] == pytest.approx(pixel_agreement(model))
    convs = {n.name: n for n in fp32.graph.node if n.op_type == "Conv"}
    last = next(name for name, n in convs.items() if "logits" in n.output)
    kept = [row["node"] for row in report["kept"]]
    # c3 (reads the outlier tensor, holds the compensating weights) costs the most and is kept first. Both
    # placements then also need c2, whose own output Q/DQ still rounds the small channels to 0.
    assert kept[0] == last and report["kept"][0]["recovered"] > 50
    assert set(kept) <= set(convs) and len(kept) <= 2
    # Kept layers have float weights; the others are still quantized.
    producers = {o: n for n in model.graph.node for o in n.output}
    quantized = {n.name for n in model.graph.node if n.op_type == "Conv"
                 and any(i in producers and producers[i].op_type == "DequantizeLinear" for i in n.input[1:])}
    assert quantized == set(convs) - set(kept)
    # Cost: 1 initial + one single-exclusion per candidate (layers and op types) + a re-ranking step per further
    # kept one.
    k = min(8, report["candidates"]) + len(report["op_types"])
    assert report["evaluations"] == 1 + sum(k - i for i in range(len(kept)))
    if target == "tensorrt":
        assert report["op_types"] == []  # the TensorRT placement quantizes the layers only


def test_int8_reports_a_missed_budget(fragile):
    """With the analysis limited to the proxy's top layer, keeping it is not enough: the report says so."""
    fp32, calibration, pixel_agreement = fragile
    # ONNX Runtime's placement also quantizes conv outputs, so this net needs two layers kept there (the
    # TensorRT placement, inputs only, needs one).
    _, report = int8_with_budget(fp32, calibration, "onnxruntime", "minmax", pixel_agreement, reference_score=100.0,
                                 budget=2.0, top_k=1)
    assert not report["held"] and report["evaluations"] == 2 and len(report["kept"]) == 1
    assert report["initial_score"] < report["final_score"] < 98.0


class ResidualNet(nn.Module):
    """Two residual blocks: Conv -> ReLU -> Conv, summed with the block's input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
                                    for _ in range(2))

    def forward(self, x):
        h = torch.relu(self.stem(x))
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.head(h)


def reads_dequantized(model: onnx.ModelProto, op_type: str) -> list[str]:
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == op_type and any(i in dq for i in n.input)]


def integer_nodes(model: onnx.ModelProto, op_type: str) -> list[str]:
    """Nodes of ``op_type`` that ONNX Runtime runs as integer kernels: dequantized inputs, quantized output."""
    q = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return [name for name in reads_dequantized(model, op_type)
            if any(n.name == name and n.output[0] in q for n in model.graph.node)]


def test_int8_fallback_keeps_an_op_type_in_float_on_the_cpu_placement():
    """ONNX Runtime's CPU placement also runs the residual Adds in INT8 (ReLU folded into their output
    Q/DQ). The search offers every Add as one candidate; a score that charges each integer Add shows that it
    finds and keeps that group in float, while every Conv stays INT8."""
    fp32 = export(ResidualNet())

    def score(model: onnx.ModelProto) -> float:
        return 100.0 - 5.0 * len(integer_nodes(model, "Add"))

    model, report = int8_with_budget(fp32, smooth_fields(4, seed=1), "onnxruntime", "minmax", score,
                                     reference_score=100.0, budget=1.0)
    print({k: report[k] for k in ("initial_score", "final_score", "op_types")}, report["kept"])
    assert report["initial_score"] == 90.0, "both Adds must be quantized at first, or the test tests nothing"
    assert "Add" in report["op_types"] and report["held"] and report["final_score"] == 100.0
    adds = [n.name for n in fp32.graph.node if n.op_type == "Add"]
    assert [(k["node"], sorted(k["nodes"])) for k in report["kept"]] == [("every Add", sorted(adds))]
    assert integer_nodes(model, "Add") == [] and len(reads_dequantized(model, "Conv")) == 6
    single = next(row for row in report["sensitivity"] if row["node"] == "every Add")
    assert single["proxy"] is None and single["recovered"] == 10.0


def test_int8_within_budget_costs_one_evaluation():
    torch.manual_seed(0)
    fp32 = export(ConvNet())
    calls = []

    def score(model):
        calls.append(1)
        return 99.5

    _, report = int8_with_budget(fp32, smooth_fields(4, seed=1), "tensorrt", "minmax", score, reference_score=100.0,
                                 budget=1.0)
    assert report["held"] and report["kept"] == [] and report["evaluations"] == len(calls) == 1


class OverflowNet(nn.Module):
    """Two planted FP16 overflows, both finite in FP32 and scaled back down afterwards:
    a Conv whose output exceeds 65504 (x*3e3 -> conv -> *3e-4), and a squared activation summed for a norm
    (a Mul writing values above 65504 into a ReduceSum)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.c2.weight.abs_().add_(0.5)  # every tap adds: the output is ~72 x 0.6 x its input

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c2(h * 3e3) * 3e-4)  # (B, 8, H, W), the Conv between writes ~1e5
        g = h * 300.0
        norm = torch.sqrt((g * g).sum(1, keepdim=True))  # (B, 1, H, W), g * g reaches ~1e6
        return self.c3(h) * (norm / (norm + 1.0))


def test_fp16_range_guard_keeps_the_overflowing_nodes_in_fp32():
    fp32 = export(OverflowNet())
    calibration, held_out = smooth_fields(8, seed=1), smooth_fields(4, seed=2)
    expected = run(fp32, held_out)

    # Plain FP16 types a tensor that holds ~1e5 as FP16: a strongly typed engine overflows there. (ONNX Runtime's
    # CPU provider may compute such a chain in FP32 internally, since it has few FP16 kernels, so the final
    # output alone does not show it; the FP16-typed intermediate does.)
    plain = intermediates(to_fp16(fp32), held_out[0])
    assert any(v.dtype == np.float16 and not np.isfinite(v).all() for v in plain.values()), \
        "plain FP16 must overflow somewhere, or the test tests nothing"

    model, report = fp16_with_range_guard(fp32, calibration)
    got = run(model, held_out)
    rel = max(float(np.linalg.norm(g - e) / np.linalg.norm(e)) for g, e in zip(got, expected))
    print({r["node"]: (r["op_type"], r["why"], r["max_abs"], r["already_fp32"]) for r in report["kept"]},
          report["largest"], rel)
    assert all(np.isfinite(y).all() for y in got)
    assert rel < 1e-2

    # No FP16 tensor anywhere in the guarded graph holds a value near the range, on inputs it was not measured on.
    for name, value in intermediates(model, held_out[0]).items():
        if value.dtype == np.float16:
            assert np.abs(value.astype(np.float32)).max() <= report["limit"], name

    assert report["limit"] == 0.5 * FP16_MAX and report["largest"] == report["largest_finite"] > FP16_MAX
    assert report["non_finite_tensors"] == 0
    assert all(r["max_abs"] > report["limit"] for r in report["kept"])
    added = {(r["op_type"], r["why"]) for r in report["kept"] if not r["already_fp32"]}
    # The Conv writing ~1e5 and the Mul reading it (the *3e-4); the squaring Mul writing ~1e7 into the ReduceSum.
    assert added == {("Conv", "writes"), ("Mul", "reads"), ("Mul", "writes")}
    conv = next(r for r in report["kept"] if r["op_type"] == "Conv")
    assert conv["max_abs"] > FP16_MAX


def intermediates(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    outputs = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=t) for n in exposed.graph.node for t in n.output
                                if t not in outputs)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": x})))


def test_fp16_range_guard_changes_nothing_on_a_tame_net():
    torch.manual_seed(0)
    fp32 = export(ConvNet())
    model, report = fp16_with_range_guard(fp32, smooth_fields(4, seed=1))
    assert report["kept"] == [] and report["largest"] < 100
    assert onnx.printer.to_text(model.graph) == onnx.printer.to_text(to_fp16(fp32).graph)
