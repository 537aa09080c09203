"""One conformance test set over every registered model: forward shape, finite output, export with dynamic
H/W, and ONNX Runtime parity in fp32, fp16 and int8 (both placements) at small sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.onnxruntime import OnnxRuntimeRunner
from export.compat import check_tensorrt_compat
from export.metrics import compare
from export.onnx_export import export_onnx
from export.precision import to_fp16, to_int8
from export.rewrites import apply_rewrites
from helpers import calibration_batches, make_deterministic
from models import MODELS, create_model, get_spec

NAMES = sorted(MODELS)
EXPORT_SIZE = (64, 64)
CHECK_SIZE = (64, 96)  # another size than the export's: the graph must really be dynamic


@pytest.fixture(scope="module", params=NAMES)
def exported(request, tmp_path_factory):
    name = request.param
    spec = get_spec(name)
    model = make_deterministic(create_model(name, num_classes=5))
    graph = export_onnx(model, tmp_path_factory.mktemp(name) / "model.onnx", EXPORT_SIZE, spec.size_divisor,
                        spec.dynamic_hw)
    size = CHECK_SIZE if spec.dynamic_hw else EXPORT_SIZE
    inputs = calibration_batches(size, 6)[4:]
    with torch.no_grad():
        references = [model(torch.from_numpy(x)).numpy() for x in inputs]
    return name, graph, inputs, references, calibration_batches(size, 4)


def run(graph, inputs):
    with OnnxRuntimeRunner(graph.SerializeToString()) as runner:
        return [runner.infer({"images": x})["logits"] for x in inputs]


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_finite(name):
    model = make_deterministic(create_model(name, num_classes=5))
    with torch.no_grad():
        out = model(torch.randn(2, 3, *EXPORT_SIZE))
    assert out.shape == (2, 5, *EXPORT_SIZE)
    assert torch.isfinite(out).all()


def test_export_contract(exported):
    name, graph, *_ = exported
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in dims[2:]) == get_spec(name).dynamic_hw


def test_fp32_parity(exported):
    _, graph, inputs, references, _ = exported
    lowered, _ = apply_rewrites(graph, "onnxruntime")
    result = compare(run(lowered, inputs), references)
    assert result["rel_l2_error"] < 1e-5
    assert result["pixel_agreement"] > 0.999


def test_fp16_parity(exported):
    _, graph, inputs, references, _ = exported
    fp16 = to_fp16(apply_rewrites(graph, "onnxruntime")[0])
    assert any(t.data_type == 10 for t in fp16.graph.initializer), "no FP16 weights: the conversion did nothing"
    result = compare(run(fp16, inputs), references)
    assert result["rel_l2_error"] < 5e-3
    assert result["pixel_agreement"] > 0.98


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_int8_parity(exported, target):
    _, graph, inputs, references, calibration = exported
    int8 = to_int8(apply_rewrites(graph, target)[0], calibration, target)
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    if target == "tensorrt":
        assert check_tensorrt_compat(int8, "10.3") == []  # symmetric, zero point 0, no custom ops left
    result = compare(run(int8, inputs), references)
    assert np.isfinite(result["max_abs_error"])
    assert result["rel_l2_error"] < 0.15
    assert result["pixel_agreement"] > 0.85
