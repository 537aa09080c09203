"""export/compile/compat.py: planted TensorRT violations are caught, clean graphs pass, on the oldest and newest tables."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.compile.compat import (
    Violation,
    check_tensorrt_compat,
    known_tensorrt_versions,
    tensorrt_table,
)

OLDEST = "10.3"
NEWEST = known_tensorrt_versions()[-1]
F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=18, extra_domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_domains]
    return helper.make_model(graph, opset_imports=opsets)


def _vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, values, dtype=None):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _rules(violations: list[Violation], node: str) -> list[str]:
    return [v.rule for v in violations if v.node == node]


def test_known_versions_cover_oldest_and_newest_target():
    versions = known_tensorrt_versions()
    assert versions[0] == OLDEST and len(versions) >= 2
    for version in versions:
        table = tensorrt_table(version)
        assert len(table.operators) > 150 and table.source["repo"] == "onnx/onnx-tensorrt"
    assert tensorrt_table("10.3.0.26").version == "10.3"


def test_unknown_version_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown TensorRT version '9.9'; known: 10\.3"):
        check_tensorrt_compat(_model([], [_vi("x", [1])], [_vi("x", [1])]), "9.9")


def test_max_unpool_is_unsupported_with_the_documented_message():
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "idx"], "x/MaxPool_2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxUnpool", ["p", "idx"], ["y"], "x/MaxUnpool_3", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    model = _model(nodes, [_vi("x", [1, 1, 4, 4])], [_vi("y", [1, 1, 4, 4])])
    violations = check_tensorrt_compat(model, OLDEST)
    unpool = [v for v in violations if v.op_type == "MaxUnpool"]
    assert [str(v) for v in unpool] == [
        "node 'x/MaxUnpool_3' (MaxUnpool): not supported by TensorRT 10.3 (onnx-tensorrt docs/operators.md)"]


def test_maxpool_indices_output_flagged_only_when_used():
    used = [helper.make_node("MaxPool", ["x"], ["p", "idx"], "pool", kernel_shape=[2, 2])]
    model = _model(used, [_vi("x", [1, 1, 4, 4])],
                   [_vi("p", [1, 1, 3, 3]), _vi("idx", [1, 1, 3, 3], TensorProto.INT64)])
    for version in (OLDEST, NEWEST):
        assert any("Indices output 'idx'" in r for r in _rules(check_tensorrt_compat(model, version), "pool"))

    unused = [helper.make_node("MaxPool", ["x"], ["p", "idx"], "pool", kernel_shape=[2, 2])]
    model = _model(unused, [_vi("x", [1, 1, 4, 4])], [_vi("p", [1, 1, 3, 3])])
    assert check_tensorrt_compat(model, OLDEST) == []


def test_custom_domain_op_without_lowering():
    node = helper.make_node("CrissCrossAttention", ["q", "k", "v"], ["y"], "head/cca", domain="seg")
    model = _model([node], [_vi(n, [1, 4, 8, 8]) for n in "qkv"], [_vi("y", [1, 4, 8, 8])],
                   extra_domains=["seg"])
    for version in (OLDEST, NEWEST):
        (violation,) = check_tensorrt_compat(model, version)
        assert violation.node == "head/cca" and violation.domain == "seg"
        assert "custom op with no lowering: add a rewrite in export/ or a TensorRT plugin" in violation.rule
        assert str(violation).startswith("node 'head/cca' (seg::CrissCrossAttention): custom op")


def test_plugin_nodes_pass_in_any_domain_if_the_release_ships_that_version():
    inputs = ["value", "shapes", "start", "loc", "attn"]
    node = helper.make_node("MultiscaleDeformableAttnPlugin_TRT", inputs, ["y"], "msda", domain="trt",
                            plugin_version="2")
    types = [F, TensorProto.INT32, TensorProto.INT32, F, F]  # the plugin's input types (plugin_inputs rule)
    model = _model([node], [_vi(n, [1], t) for n, t in zip(inputs, types)], [_vi("y", [1])], extra_domains=["trt"])
    assert check_tensorrt_compat(model, NEWEST) == []
    # TensorRT 10.3 ships only version 1 of this plugin (NVIDIA/TensorRT release/10.3 plugin/README.md).
    (violation,) = check_tensorrt_compat(model, OLDEST)
    assert "plugin version '2' is not shipped with TensorRT 10.3" in violation.rule

    node_v1 = helper.make_node("MultiscaleDeformableAttnPlugin_TRT", inputs, ["y"], "msda")
    model = _model([node_v1], [_vi(n, [1], t) for n, t in zip(inputs, types)], [_vi("y", [1])])
    assert check_tensorrt_compat(model, OLDEST) == []


def test_topk_large_constant_k_and_unsorted():
    nodes = [helper.make_node("TopK", ["x", "k"], ["values", "indices"], "topk", axis=-1, sorted=0)]
    model = _model(nodes, [_vi("x", [1, 8000])],
                   [_vi("values", [1, 5000]), _vi("indices", [1, 5000], TensorProto.INT64)],
                   [_const("k", [5000], np.int64)])
    rules = _rules(check_tensorrt_compat(model, OLDEST), "topk")
    assert any("K=5000" in r and "K < 3840" in r for r in rules)
    assert any("sorted=0" in r for r in rules)


def test_topk_computed_k_cannot_be_checked_statically():
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], "shape", start=-1),
        helper.make_node("TopK", ["x", "shape"], ["values", "indices"], "topk"),
    ]
    model = _model(nodes, [_vi("x", [1, 8])], [_vi("values", [1, 8]), _vi("indices", [1, 8], TensorProto.INT64)])
    (rule,) = _rules(check_tensorrt_compat(model, OLDEST), "topk")
    assert "cannot be checked statically" in rule


def _qdq_model(zero_point: np.ndarray) -> onnx.ModelProto:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], "quant"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], "dequant"),
    ]
    return _model(nodes, [_vi("x", [1, 4])], [_vi("y", [1, 4])],
                  [_const("s", 0.05, np.float32), numpy_helper.from_array(zero_point, "zp")])


def test_qdq_non_zero_zero_point():
    violations = check_tensorrt_compat(_qdq_model(np.array(3, np.int8)), OLDEST)
    assert {v.node for v in violations} == {"quant", "dequant"}
    assert all("zero point 'zp' is non-zero" in v.rule for v in violations)


def test_qdq_uint8_is_not_a_tensorrt_quantized_type():
    violations = check_tensorrt_compat(_qdq_model(np.array(0, np.uint8)), NEWEST)
    assert violations and all("UINT8 zero point" in v.rule for v in violations)


def test_einsum_flagged_before_10_12_only():
    nodes = [helper.make_node("Einsum", ["a", "b"], ["y"], "attn/einsum", equation="bij,bjk->bik")]
    model = _model(nodes, [_vi("a", [2, 3, 4]), _vi("b", [2, 4, 5])], [_vi("y", [2, 3, 5])])
    (violation,) = check_tensorrt_compat(model, OLDEST)
    assert violation.node == "attn/einsum" and "lower it to MatMul" in violation.rule
    assert check_tensorrt_compat(model, NEWEST) == []


def test_scatternd_reduction_attribute():
    nodes = [helper.make_node("ScatterND", ["x", "i", "u"], ["y"], "scatter", reduction="none")]
    model = _model(nodes, [_vi("x", [4]), _vi("u", [1])], [_vi("y", [4])], [_const("i", [[1]], np.int64)])
    assert "even 'none'" in _rules(check_tensorrt_compat(model, OLDEST), "scatter")[0]
    assert check_tensorrt_compat(model, NEWEST) == []


def test_resize_cubic_and_antialias():
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], "up", mode="cubic", antialias=1)]
    model = _model(nodes, [_vi("x", [1, 1, 4, 4])], [_vi("y", [1, 1, 8, 8])],
                   [_const("scales", [1, 1, 2, 2], np.float32)])
    rules = _rules(check_tensorrt_compat(model, NEWEST), "up")
    assert any("mode='cubic'" in r for r in rules) and any("antialias=1" in r for r in rules)


def test_computed_reduce_axes_and_3d_gridsample():
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], "shape", start=0, end=1),
        helper.make_node("ReduceMean", ["x", "shape"], ["m"], "mean"),
        helper.make_node("GridSample", ["v", "grid"], ["s"], "sample"),
    ]
    model = _model(nodes, [_vi("x", [1, 2, 3]), _vi("v", [1, 1, 2, 4, 4]), _vi("grid", [1, 2, 4, 4, 3])],
                   [_vi("m", None), _vi("s", None)])
    violations = check_tensorrt_compat(model, OLDEST)
    assert any("'axes' comes from the computed tensor 'shape'" in r for r in _rules(violations, "mean"))
    assert any("input rank 5" in r for r in _rules(violations, "sample"))


def test_nodes_inside_if_branches_are_checked():
    branch = helper.make_graph(
        [helper.make_node("MaxUnpool", ["p", "idx"], ["y"], "unpool", kernel_shape=[2, 2])],
        "then", [], [_vi("y", [1, 1, 4, 4])])
    other = helper.make_graph([helper.make_node("Identity", ["p"], ["z"], "id")], "else", [],
                              [_vi("z", [1, 1, 2, 2])])
    node = helper.make_node("If", ["cond"], ["out"], "branch", then_branch=branch, else_branch=other)
    model = _model([node], [_vi("cond", [], TensorProto.BOOL), _vi("p", [1, 1, 2, 2]),
                            _vi("idx", [1, 1, 2, 2], TensorProto.INT64)], [_vi("out", None)])
    (violation,) = check_tensorrt_compat(model, OLDEST)
    assert violation.node == "branch/then_branch/unpool" and violation.op_type == "MaxUnpool"


def test_local_functions_are_checked_through_their_bodies():
    def model_calling(body_op):
        fn = helper.make_function("seg", "Block", ["a"], ["b"],
                                  [helper.make_node(body_op, ["a"], ["b"], "inner", kernel_shape=[2, 2])],
                                  [helper.make_opsetid("", 18)])
        node = helper.make_node("Block", ["x"], ["y"], "block", domain="seg")
        model = _model([node], [_vi("x", [1, 1, 4, 4])], [_vi("y", None)], extra_domains=["seg"])
        model.functions.append(fn)
        return model

    assert check_tensorrt_compat(model_calling("MaxPool"), OLDEST) == []
    (violation,) = check_tensorrt_compat(model_calling("MaxUnpool"), OLDEST)
    assert violation.node == "block/Block/inner" and violation.op_type == "MaxUnpool"


def _clean_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights_q = rng.integers(-127, 128, size=(4, 3, 3, 3), dtype=np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], "in/quant"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], "in/dequant"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], "conv/w_dequant", axis=0),
        helper.make_node("Conv", ["x_dq", "w", "b"], ["c"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], "relu"),
        helper.make_node("Resize", ["r", "", "scales"], ["u"], "up", mode="linear"),
        helper.make_node("MatMul", ["u", "m"], ["mm"], "matmul"),
        helper.make_node("Softmax", ["mm"], ["sm"], "softmax", axis=-1),
        helper.make_node("LayerNormalization", ["sm", "gamma", "beta"], ["y"], "norm", axis=-1),
    ]
    initializers = [
        _const("x_scale", 0.02, np.float32), _const("x_zp", 0, np.int8),
        numpy_helper.from_array(weights_q, "w_q"), _const("w_scale", [0.01] * 4, np.float32),
        _const("w_zp", [0] * 4, np.int8), _const("b", [0.0] * 4, np.float32),
        _const("scales", [1, 1, 2, 2], np.float32),
        _const("m", rng.standard_normal((16, 16)), np.float32),
        _const("gamma", [1.0] * 16, np.float32), _const("beta", [0.0] * 16, np.float32),
    ]
    return _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 16, 16])], initializers)


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_clean_graph_passes(version):
    model = _clean_model()
    onnx.checker.check_model(model, full_check=True)
    assert check_tensorrt_compat(model, version) == []


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_gridsample_mode_spelling_per_opset(version):
    """TensorRT's importer reads GridSample's opset 16-19 spellings (nearest, bilinear, bicubic) and samples
    with nearest on any other: opset 20's linear/cubic (linear is its default) must be flagged."""
    def sample(opset, **attrs):
        node = helper.make_node("GridSample", ["v", "grid"], ["s"], "sample", **attrs)
        return _model([node], [_vi("v", [1, 1, 4, 4]), _vi("grid", [1, 2, 2, 2])], [_vi("s", [1, 1, 2, 2])],
                      opset=opset)

    assert check_tensorrt_compat(sample(18, mode="bilinear"), version) == []
    assert check_tensorrt_compat(sample(18), version) == []  # default bilinear before opset 20
    assert check_tensorrt_compat(sample(20, mode="nearest"), version) == []
    (rule,) = _rules(check_tensorrt_compat(sample(20, mode="linear"), version), "sample")
    assert "mode='linear'" in rule and "spelling of 'bilinear'" in rule and "nearest" in rule
    (rule,) = _rules(check_tensorrt_compat(sample(20), version), "sample")
    assert "mode='linear' (the default at opset 20)" in rule
    (rule,) = _rules(check_tensorrt_compat(sample(20, mode="cubic"), version), "sample")
    assert "spelling of 'bicubic'" in rule


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("source, target, allowed", [
    (TensorProto.INT64, TensorProto.UINT8, False),  # an argmax's indices straight to a uint8 class map
    (TensorProto.INT32, TensorProto.UINT8, False),
    (TensorProto.UINT8, TensorProto.INT32, False),
    (TensorProto.UINT8, TensorProto.BOOL, False),
    (TensorProto.FLOAT, TensorProto.UINT8, True),
    (TensorProto.FLOAT16, TensorProto.UINT8, True),
    (TensorProto.UINT8, TensorProto.FLOAT, True),
    (TensorProto.INT64, TensorProto.FLOAT, True),  # no UINT8 involved: not this rule's business
])
def test_uint8_casts_only_from_and_to_float_and_half(version, source, target, allowed):
    nodes = [helper.make_node("Cast", ["x"], ["y"], "io/cast", to=target)]
    violations = check_tensorrt_compat(_model(nodes, [_vi("x", [1, 4], source)], [_vi("y", [1, 4], target)]), version)
    rules = _rules(violations, "io/cast")
    if allowed:
        assert rules == []
    else:
        assert len(rules) == 1 and "converts UINT8 only from and to FP32 and FP16" in rules[0]
        assert "cast through FLOAT" in rules[0] and "NvInferRuntimeBase.h" in rules[0]


def test_uint8_castlike_is_checked_with_its_second_input_type():
    nodes = [helper.make_node("CastLike", ["x", "like"], ["y"], "io/castlike")]
    model = _model(nodes, [_vi("x", [1, 4], TensorProto.INT64), _vi("like", [1], TensorProto.UINT8)],
                   [_vi("y", [1, 4], TensorProto.UINT8)])
    assert any("INT64 -> UINT8" in r for r in _rules(check_tensorrt_compat(model, OLDEST), "io/castlike"))
