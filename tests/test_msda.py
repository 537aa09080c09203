"""Multi-scale deformable attention (models/ops/msda.py, export/ops/msda.py): the cases the generic op tests
(test_custom_ops.py) do not cover: the TensorRT plugin node checked statically (name, version per release,
input order and types), the checker's plugin rules, and the plugin graph measured through its decomposition."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from export.compile.compat import check_tensorrt_compat
from export.compile.plugins import runnable_on_onnxruntime
from export.compile.rewrites import apply_rewrites
from export.ops import DOMAIN, VERSION
from export.ops.msda import INPUTS, ONNX_NAME, PLUGIN
from models.ops.msda import SYMBOLIC_DIMS, multiscale_deformable_attention_reference, sample_inputs

F, I64, I32, F16 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT16


def seg_node_graph(opset: int = 18) -> onnx.ModelProto:
    types = [F, I64, I64, F, F]
    graph = helper.make_graph(
        [helper.make_node(ONNX_NAME, INPUTS, ["output"], "msda", domain=DOMAIN)], "g",
        [helper.make_tensor_value_info(n, t, d) for n, t, d in zip(INPUTS, types, SYMBOLIC_DIMS)],
        [helper.make_tensor_value_info("output", F, SYMBOLIC_DIMS[-1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, VERSION)],
                             ir_version=10)


def plugin_graph(types=(F, I32, I32, F, F), inputs=INPUTS, **attrs) -> onnx.ModelProto:
    node = helper.make_node(PLUGIN, list(inputs), ["y"], "plugin", domain="trt", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, None) for n, t in zip(inputs, types)],
                              [helper.make_tensor_value_info("y", types[0], None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("trt", 1)])


def test_tensorrt_lowering_is_the_plugin_version_1_with_int32_sizes():
    lowered, _ = apply_rewrites(seg_node_graph(), "tensorrt")
    (plugin,) = [n for n in lowered.graph.node if n.op_type == PLUGIN]
    assert {a.name: helper.get_attribute_value(a) for a in plugin.attribute} == {"plugin_version": b"1"}
    types = {t.name: t.type.tensor_type.elem_type for t in [*lowered.graph.input, *lowered.graph.value_info]}
    assert [types[i] for i in plugin.input] == [F, I32, I32, F, F]
    assert plugin.input[0] == "value" and plugin.input[3:] == ["sampling_locations", "attention_weights"]
    for version in ("10.3", "10.16", "11.1"):  # version 1 ships in every release the tables cover
        assert check_tensorrt_compat(lowered, version) == []


def test_onnxruntime_lowering_has_no_plugin_and_spells_bilinear_per_opset():
    for opset, mode in ((18, b"bilinear"), (20, b"linear")):
        lowered, _ = apply_rewrites(seg_node_graph(opset), "onnxruntime")
        samples = [n for n in lowered.graph.node if n.op_type == "GridSample"]
        assert len(samples) == SYMBOLIC_DIMS[1][0]  # one per level
        assert all(helper.get_attribute_value(next(a for a in n.attribute if a.name == "mode")) == mode for n in samples)
        assert not any(n.op_type == PLUGIN for n in lowered.graph.node)


def test_checker_flags_plugin_version_and_input_types():
    assert check_tensorrt_compat(plugin_graph(plugin_version="1"), "10.3") == []
    (v,) = check_tensorrt_compat(plugin_graph(plugin_version="2"), "10.3")
    assert "plugin version '2' is not shipped with TensorRT 10.3" in v.rule
    assert check_tensorrt_compat(plugin_graph(plugin_version="2"), "11.1") == []
    (v,) = check_tensorrt_compat(plugin_graph((F, I64, I32, F, F)), "10.3")
    assert "input 1 'spatial_shapes' is INT64, but the plugin takes INT32" in v.rule
    (v,) = check_tensorrt_compat(plugin_graph((F16, I32, I32, F, F)), "11.1")
    assert "float inputs of different types (FP16, FP32, FP32)" in v.rule
    bf16 = TensorProto.BFLOAT16
    rules = [v.rule for v in check_tensorrt_compat(plugin_graph((bf16, I32, I32, bf16, bf16)), "11.1")]
    assert len(rules) == 3 and "input 0 'value' is BF16, but the plugin takes FP32 or FP16" in rules[0]
    assert check_tensorrt_compat(plugin_graph((F16, I32, I32, F16, F16)), "10.3") == []
    (v,) = check_tensorrt_compat(plugin_graph(inputs=INPUTS[:4]), "10.3")
    assert "4 inputs, but the plugin takes 5, in this order: value, spatial_shapes" in v.rule


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_both_lowerings_equal_pytorch_at_several_sizes(target):
    """The TensorRT graph runs here with the plugin replaced by the decomposition (its kernel is not run)."""
    lowered, _ = apply_rewrites(seg_node_graph(), target)
    runnable = runnable_on_onnxruntime(lowered)
    assert (runnable is lowered) == (target == "onnxruntime")
    session = ort.InferenceSession(runnable.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, h, w in ((1, 5, 7), (2, 16, 16), (1, 32, 9), (3, 2, 1), (1, 40, 56)):
        inputs = sample_inputs(batch, h, w, np.random.default_rng(h + w))
        (out,) = session.run(None, dict(zip(INPUTS, inputs)))
        reference = multiscale_deformable_attention_reference(*map(torch.from_numpy, inputs)).numpy()
        assert np.abs(out - reference).max() < 1e-5, f"{target} at {batch}x{h}x{w}"


def test_runnable_keeps_graphs_without_plugins():
    model = seg_node_graph()
    assert runnable_on_onnxruntime(model) is model


def test_a_plugin_graph_builds_in_int8_and_is_checked(tmp_path):
    """End to end, as a user builds it: Mask2Former's TensorRT-bound int8 graph (calibrated around the plugin
    nodes, on their decomposition, with the plugin's int32 size inputs kept through the quantizer's
    optimisations) holds every plugin node, passes both op tables, and `check` runs it."""
    import onnx

    from export.compile.compat import check_tensorrt_compat
    from helpers import cli, tiny_pipeline

    models = [{"name": "mask2former_r50", "num_classes": 4, "precisions": ["int8"],
               "input": {"size": [64, 64], "min": [64, 64], "max": [128, 128]}}]
    config = tiny_pipeline(tmp_path, backends=["tensorrt"], models=models)
    done = cli("build", "--config", config)
    assert done.returncode == 0, done.stderr[-2000:]
    graph = onnx.load(str(tmp_path / "out" / "mask2former_r50" / "tensorrt" / "int8.onnx"))
    assert sum(n.op_type == "MultiscaleDeformableAttnPlugin_TRT" for n in graph.graph.node) == 6
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    for version in ("10.3", "11.1"):
        assert check_tensorrt_compat(graph, version) == []
    done = cli("check", "--config", config)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mask2former_r50" in done.stdout
