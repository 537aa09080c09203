"""Every custom op in models/ops/, through the pattern export/ops/ declares: a schema, a translation and a
lowering for every target; each lowering computes the reference (and the paper's definition, where the op
has one) at several sizes, non-square and odd ones included, and passes TensorRT's op tables; the torch op
passes torch.library.opcheck. A new op is picked up here with no test written for it."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import sys

from export.compile.compat import check_tensorrt_compat
from export.compile.plugins import PLUGIN_DECOMPOSITIONS, runnable_on_onnxruntime
from export.ops import DOMAIN, EXPORT_OPS, VERSION
from export.compile.rewrites import REWRITES, TARGETS, apply_rewrites
from models.ops import CUSTOM_OPS

OPS = sorted(CUSTOM_OPS)
SIZES = [(1, 5, 7), (2, 8, 8), (1, 16, 3), (1, 1, 1)]  # (batch, h, w): odd, square, tall, degenerate


def call(fn, name: str, inputs):
    """``fn`` (the op, its reference or definition) on ``inputs`` and the op's sample attributes."""
    return fn(*inputs, *CUSTOM_OPS[name].attributes.values())


def single_node_graph(name: str, inputs: list[np.ndarray]) -> onnx.ModelProto:
    """The op's one seg-domain node, with dynamic batch, H and W, as the exporter emits it. An op whose
    tensors are not (N, C, H, W) float maps names their dims in its module (``SYMBOLIC_DIMS``: per input, then
    the output, a string for a dim that follows the sizes, an int for a fixed one)."""
    op = EXPORT_OPS[name]
    names = [p.name for p in op.schema.inputs]
    out_name = op.schema.outputs[0].name

    def value(n, c, sizes):  # each input its own symbolic H, W: an op's inputs may differ in size
        return helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", c, *sizes])

    reference = call(CUSTOM_OPS[name].reference, name, map(torch.from_numpy, inputs))
    node = helper.make_node(op.onnx_name, names, [out_name], name=name, domain=DOMAIN, **CUSTOM_OPS[name].attributes)
    dims = getattr(sys.modules[CUSTOM_OPS[name].reference.__module__], "SYMBOLIC_DIMS", None)
    if dims is None:
        graph_inputs = [value(n, x.shape[1], (f"H{k}", f"W{k}")) for k, (n, x) in enumerate(zip(names, inputs))]
        graph_output = value(out_name, reference.shape[1], ("H", "W"))
    else:
        graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), d)
                        for n, x, d in zip(names, inputs, dims)]
        graph_output = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, dims[len(names)])
    graph = helper.make_graph([node], name, graph_inputs, [graph_output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, VERSION)],
                             ir_version=10)


def test_every_op_has_an_export_side_and_the_reverse():
    assert set(CUSTOM_OPS) == set(EXPORT_OPS)


@pytest.mark.parametrize("name", OPS)
def test_op_has_a_schema_a_translation_and_a_lowering_for_every_target(name):
    op = EXPORT_OPS[name]
    assert onnx.defs.has(op.onnx_name, DOMAIN)
    assert callable(op.translation)
    assert set(op.lowerings) == set(TARGETS), f"{name}: lowerings for {sorted(op.lowerings)}, targets {TARGETS}"
    for target, rewrite in op.lowerings.items():
        assert target in REWRITES[rewrite].targets


@pytest.mark.parametrize("name", OPS)
def test_opcheck(name):
    """Schema, fake kernel (shapes and strides), autograd registration and AOT dispatch, as torch.compile
    and torch.export need them."""
    inputs = [torch.from_numpy(x) for x in CUSTOM_OPS[name].sample_inputs(2, 5, 7, np.random.default_rng(0))]
    constants = list(CUSTOM_OPS[name].attributes.values())
    torch.library.opcheck(CUSTOM_OPS[name].op, [*inputs, *constants])
    torch.library.opcheck(CUSTOM_OPS[name].op,
                          [*(x.clone().requires_grad_(x.is_floating_point()) for x in inputs), *constants])


@pytest.mark.parametrize("name", OPS)
def test_op_trains_like_its_reference(name):
    op = CUSTOM_OPS[name]
    inputs = [torch.from_numpy(x) for x in op.sample_inputs(1, 4, 3, np.random.default_rng(1))]
    inputs = [x.requires_grad_(x.is_floating_point()) for x in inputs]  # integer inputs (sizes) have no gradient
    floats = [x for x in inputs if x.is_floating_point()]
    call(op.op, name, inputs).square().sum().backward()
    grads = [x.grad.clone() for x in floats]
    for x in floats:
        x.grad = None
    call(op.reference, name, inputs).square().sum().backward()
    for g, x in zip(grads, floats):  # an input the reference's value does not flow from gets no gradient
        torch.testing.assert_close(g, torch.zeros_like(x) if x.grad is None else x.grad)


@pytest.mark.parametrize("name", [n for n in OPS if CUSTOM_OPS[n].definition is not None])
def test_reference_matches_the_papers_definition(name):
    op = CUSTOM_OPS[name]
    for batch, h, w in SIZES[:3]:
        inputs = op.sample_inputs(batch, h, w, np.random.default_rng(h * w))
        reference = call(op.reference, name, map(torch.from_numpy, inputs)).numpy()
        np.testing.assert_allclose(reference, call(op.definition, name, inputs), atol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", OPS)
def test_lowering_equals_the_reference(name, target):
    """One lowered graph (dynamic N, H, W) run at every size, and checked against TensorRT's op tables."""
    op = CUSTOM_OPS[name]
    graph = single_node_graph(name, op.sample_inputs(*SIZES[0], np.random.default_rng(0)))
    assert any(v.domain == DOMAIN for v in check_tensorrt_compat(graph, "10.3")), "an unlowered op must fail"
    lowered, counts = apply_rewrites(graph, target)
    assert counts == {EXPORT_OPS[name].lowerings[target]: 1}
    # Standard ops only, or TensorRT plugins (which the op tables check, and which run here as their
    # decomposition: export/compile/plugins.py).
    assert all(node.domain in ("", "ai.onnx") or node.op_type in PLUGIN_DECOMPOSITIONS for node in lowered.graph.node)
    onnx.checker.check_model(lowered)
    for version in ("10.3", "11.1"):
        assert check_tensorrt_compat(lowered, version) == []
    session = ort.InferenceSession(runnable_on_onnxruntime(lowered).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for batch, h, w in SIZES:
        inputs = op.sample_inputs(batch, h, w, np.random.default_rng(h * w))
        (out,) = session.run(None, dict(zip(names, inputs)))
        reference = call(op.reference, name, map(torch.from_numpy, inputs)).numpy()
        assert out.shape == reference.shape
        assert np.abs(out - reference).max() < 1e-5, f"{name} on {target} at {batch}x{h}x{w}"


def test_max_unpool_exports_inside_a_network_and_follows_the_input_size(tmp_path):
    """SegNet's pattern (pool, decode, unpool with the encoder's map) exports as one seg node whose lowering,
    in one dynamic graph, equals PyTorch at even, odd and non-square sizes."""
    import torch.nn.functional as F

    from engines.onnxruntime import OnnxRuntimeRunner
    from export.compile.onnx_export import export_onnx
    from models.ops.max_unpool import max_unpool

    class EncoderDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encode, self.decode = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, images):
            x = self.encode(images)
            return max_unpool(self.decode(F.max_pool2d(x, 2)), x)

    model = EncoderDecoder().eval()
    graph = export_onnx(model, tmp_path / "m.onnx", (32, 32), 2, dynamic_hw=True)
    assert [n.op_type for n in graph.graph.node if n.domain == DOMAIN] == ["MaxUnpool"]
    for target in TARGETS:
        lowered, _ = apply_rewrites(graph, target)
        with OnnxRuntimeRunner(lowered.SerializeToString()) as runner:
            for size in ((32, 32), (18, 26), (40, 64)):
                x = torch.randn(1, 3, *size)
                with torch.no_grad():
                    expected = model(x).numpy()
                assert np.abs(runner.infer({"images": x.numpy()})["logits"] - expected).max() < 1e-5
