"""Graph surgery beyond what tests/test_custom_ops.py checks for every op: criss-cross attention's
keep-float marks, and the targets."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from export.compile.compat import check_tensorrt_compat
from export.compile.rewrites import apply_rewrites, keep_float_nodes


def cca_graph(c_qk: int, c_v: int) -> onnx.ModelProto:
    """One seg::CrissCrossAttention node with dynamic H and W, as the exporter emits it."""
    def t(name, c):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", c, "H", "W"])

    node = helper.make_node("CrissCrossAttention", ["q", "k", "v"], ["out"], name="cca", domain="seg")
    graph = helper.make_graph([node], "cca", [t("q", c_qk), t("k", c_qk), t("v", c_v)], [t("out", c_v)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("seg", 1)],
                             ir_version=10)


def test_lowered_graph_passes_tensorrt_10_3_and_marks_its_mask_path():
    graph = cca_graph(4, 6)
    assert any(v.domain == "seg" for v in check_tensorrt_compat(graph, "10.3"))
    lowered, _ = apply_rewrites(graph, "tensorrt")
    assert check_tensorrt_compat(lowered, "10.3") == []
    assert not any(n.op_type == "Einsum" for n in lowered.graph.node)
    kept = {n.op_type for n in lowered.graph.node if n.name in keep_float_nodes(lowered)}
    assert {"Where", "Softmax"} <= kept


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="known: onnxruntime, tensorrt"):
        apply_rewrites(cca_graph(2, 2), "openvino")
