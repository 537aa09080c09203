"""DPT (models/dpt.py): its parameter count and one graph serving several sizes. Forward, export, the TensorRT op tables
and fp32/fp16/int8 parity of every variant's small configuration are in test_conformance.py."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.compile.onnx_export import export_onnx
from helpers import make_deterministic
from models import count_parameters, create_model, get_spec

def test_dpt_parameter_count() -> None:
    """No count for DPT-Base (ViT-B/16) is published in the paper's text we found, the isl-org/DPT README or
    mmsegmentation's configs/dpt/README.md; this pins the architecture: the ViT-B/16 at 384 without its final
    norm (85.8M) and the reassemble/fusion/head at 256 features with 150 classes."""
    with torch.device("meta"):
        assert count_parameters(create_model("dpt_vit_b16", num_classes=150)) == 111_177_558


@pytest.mark.parametrize("name", ["dpt_vit_b16"])
def test_one_graph_serves_several_sizes(name: str, tmp_path) -> None:
    """Exported at 64 x 64, the graph computes PyTorch's logits at 64 x 96 and 96 x 64 (position embeddings
    resized, DPT's resampling and x2 upsampling following the input)."""
    spec = get_spec(name)
    model = make_deterministic(create_model(name, num_classes=5, **spec.test_kwargs))
    graph = export_onnx(model, tmp_path / "model.onnx", (64, 64), spec.size_divisor, spec.dynamic_hw)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    for size in [(64, 96), (96, 64)]:
        images = torch.randn(1, 3, *size)
        with torch.no_grad():
            reference = model(images).numpy()
        (result,) = session.run(None, {"images": images.numpy()})
        assert result.shape == (1, 5, *size)
        assert np.abs(result - reference).max() <= 1e-5 * np.abs(reference).max(), size


def test_shared_float_constants_get_one_copy_per_reader():
    """DPT-Hybrid's GroupNorms export as InstanceNormalizations whose identical scales the exporter merges
    into one initializer, which ONNX Runtime's quantizer refuses to quantize for two readers; the INT8
    conversion gives each reader its own copy (integer shape constants stay shared)."""
    from onnx import TensorProto, helper, numpy_helper

    from export.compile.precision import unshare_initializers

    scale = numpy_helper.from_array(np.ones(4, np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "bias")
    shape = numpy_helper.from_array(np.array([1, 4, -1], np.int64), "shape")
    nodes = [helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["a"]),
             helper.make_node("InstanceNormalization", ["a", "scale", "bias"], ["b"]),
             helper.make_node("Reshape", ["a", "shape"], ["c"]), helper.make_node("Reshape", ["b", "shape"], ["d"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "cd"],
                              [scale, bias, shape])
    model = unshare_initializers(helper.make_model(graph))
    first, second = model.graph.node[:2]
    assert set(first.input[1:]).isdisjoint(second.input[1:])
    assert model.graph.node[2].input[1] == model.graph.node[3].input[1] == "shape"
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert all(np.array_equal(values[a], values[b]) for a, b in zip(first.input[1:], second.input[1:]))


def test_hybrid_reads_resnet_stages_for_the_two_finest_levels():
    spec = get_spec("dpt_hybrid_r50")
    model = create_model("dpt_hybrid_r50", num_classes=3, **spec.test_kwargs).eval()
    assert model.backbone.strides == [4, 8, 16, 16]
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 24), (8, 12), (4, 6), (4, 6)]
