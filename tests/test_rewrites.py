"""Graph surgery: each rewrite computes what the PyTorch reference computes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from export.compat import check_tensorrt_compat
from export.rewrites import apply_rewrites, keep_float_nodes
from models.ops import criss_cross_attention, criss_cross_attention_reference


def cca_graph(c_qk: int, c_v: int) -> onnx.ModelProto:
    """One seg::CrissCrossAttention node with dynamic H and W, as the exporter emits it."""
    def t(name, c):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", c, "H", "W"])

    node = helper.make_node("CrissCrossAttention", ["q", "k", "v"], ["out"], name="cca", domain="seg")
    graph = helper.make_graph([node], "cca", [t("q", c_qk), t("k", c_qk), t("v", c_v)], [t("out", c_v)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("seg", 1)],
                             ir_version=10)


def brute_force(q, k, v):
    """Criss-cross attention position by position, straight from the paper's definition."""
    b, _, h, w = q.shape
    out = np.zeros_like(v)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                keys = [(i2, j) for i2 in range(h) if i2 != i] + [(i, j2) for j2 in range(w)]
                e = np.array([q[n, :, i, j] @ k[n, :, a, c] for a, c in keys])
                a_ = np.exp(e - e.max())
                a_ /= a_.sum()
                out[n, :, i, j] = sum(wt * v[n, :, a, c] for wt, (a, c) in zip(a_, keys))
    return out


def test_reference_matches_the_definition():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in [(2, 4, 5, 7), (2, 4, 5, 7), (2, 6, 5, 7)])
    ref = criss_cross_attention_reference(*map(torch.from_numpy, (q, k, v))).numpy()
    np.testing.assert_allclose(ref, brute_force(q, k, v), atol=1e-5)


def test_custom_op_trains_like_the_reference():
    q, k, v = (torch.randn(s, requires_grad=True) for s in [(1, 2, 4, 3), (1, 2, 4, 3), (1, 3, 4, 3)])
    criss_cross_attention(q, k, v).square().sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    criss_cross_attention_reference(q, k, v).square().sum().backward()
    for g, x in zip(grads, (q, k, v)):
        torch.testing.assert_close(g, x.grad)


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
@pytest.mark.parametrize("shape", [(1, 5, 7), (2, 8, 8), (1, 16, 3)])
def test_lower_criss_cross_attention_equals_pytorch(target, shape):
    n, h, w = shape
    lowered, counts = apply_rewrites(cca_graph(4, 6), target)
    assert counts == {"lower_criss_cross_attention": 1}
    assert all(node.domain in ("", "ai.onnx") for node in lowered.graph.node)
    assert all(o.domain != "seg" for o in lowered.opset_import)
    onnx.checker.check_model(lowered)
    session = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(h * w)
    q, k = (rng.standard_normal((n, 4, h, w)).astype(np.float32) * 2 for _ in range(2))
    v = rng.standard_normal((n, 6, h, w)).astype(np.float32)
    (out,) = session.run(None, {"q": q, "k": k, "v": v})
    ref = criss_cross_attention_reference(*map(torch.from_numpy, (q, k, v))).numpy()
    assert np.abs(out - ref).max() < 1e-5


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
