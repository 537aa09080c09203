"""The ONNX Runtime target's fusions (export/compile/fusions.py): each computes what the graph computed before,
each is applied where the profile found its cost (SegFormer's decoder), and neither reaches the TensorRT-bound
graph. A fusion that stops matching fails here, not silently in a slower engine."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from engines.onnxruntime import OnnxRuntimeRunner
from export.compile.onnx_export import export_onnx
from export.compile.rewrites import apply_rewrites
from export.measure.metrics import compare
from helpers import make_deterministic
from models import create_model, get_spec

FUSIONS = {"drop_identity_resize", "pointwise_conv_before_upsampling", "fold_channel_linear_into_pointwise_conv",
           "resize_by_constant_scales"}


def run(graph: onnx.ModelProto, feed: dict) -> np.ndarray:
    with OnnxRuntimeRunner(graph.SerializeToString(), threads=1) as runner:
        return next(iter(runner.infer(feed).values()))


def conv_over_concat(graph: onnx.ModelProto) -> int:
    made_by = {o: n for n in graph.graph.node for o in n.output}
    return sum(1 for n in graph.graph.node if n.op_type == "Conv" and made_by.get(n.input[0]) is not None
               and made_by[n.input[0]].op_type == "Concat")


@pytest.fixture(scope="module")
def segformer(tmp_path_factory):
    spec = get_spec("segformer_b0")
    torch.manual_seed(0)
    model = make_deterministic(create_model("segformer_b0", num_classes=5, **spec.test_kwargs))
    graph = export_onnx(model, tmp_path_factory.mktemp("segformer") / "model.onnx", (64, 64), spec.size_divisor,
                        spec.dynamic_hw)
    return model, graph


def test_segformer_decoder_is_fused_for_onnxruntime_only(segformer):
    model, graph = segformer
    fused, counts = apply_rewrites(graph, "onnxruntime")
    # One identity Resize, one fuse convolution, and each of the four stages' projection folded into its block.
    assert {k: v for k, v in counts.items() if k in FUSIONS} == {
        "drop_identity_resize": 1, "pointwise_conv_before_upsampling": 1, "fold_channel_linear_into_pointwise_conv": 4,
        "resize_by_constant_scales": 4}  # the three stages' x2/x4/x8 and the final x4
    assert conv_over_concat(fused) == 0  # the fuse convolution no longer reads the 4-stage concatenation
    plain, counts = apply_rewrites(graph, "tensorrt")
    assert not FUSIONS & set(counts) and conv_over_concat(plain) == 1
    count = {op: [sum(n.op_type == op for n in g.graph.node) for g in (fused, plain)] for op in ("Resize", "Transpose")}
    assert count["Resize"][0] == count["Resize"][1] - 1
    assert count["Transpose"][0] == count["Transpose"][1] - 8  # each stage's NCHW -> NHWC -> NCHW pair
    x = np.random.RandomState(0).randn(2, 3, 64, 96).astype(np.float32)  # another size than the export's
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    result = compare([run(fused, {"images": x})], [reference])
    assert result["rel_l2_error"] < 1e-5 and result["pixel_agreement"] > 0.999


def _upsampled_concat() -> onnx.ModelProto:
    """Conv1x1 (with bias, 3 output channels) over Concat of: a nearest Resize by sizes, a linear Resize by
    scales, a part at full size, an align_corners Resize with ``axes`` (left as it is), an identity Resize."""
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("a", f, ["N", 2, "h", "w"]),
              helper.make_tensor_value_info("b", f, ["N", 4, "h", "w"]),
              helper.make_tensor_value_info("c", f, ["N", 1, "H", "W"]),
              helper.make_tensor_value_info("d", f, ["N", 2, "h", "w"]),
              helper.make_tensor_value_info("e", f, ["N", 3, "H", "W"])]
    rng = np.random.RandomState(1)
    inits = [numpy_helper.from_array(rng.randn(3, 12, 1, 1).astype(np.float32), "weight"),
             numpy_helper.from_array(rng.randn(3).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array([2], np.int64), "two")]
    nodes = [
        helper.make_node("Shape", ["c"], ["c_shape"]),
        helper.make_node("Shape", ["a"], ["a_shape"]),
        helper.make_node("Slice", ["c_shape", "two", "four"], ["hw"]),
        helper.make_node("Constant", [], ["four"], value=numpy_helper.from_array(np.array([4], np.int64))),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Slice", ["a_shape", "zero", "two"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["a", "", "", "sizes"], ["a_up"], mode="nearest"),
        helper.make_node("Resize", ["b", "", "scales"], ["b_up"], mode="linear"),
        helper.make_node("Resize", ["d", "", "", "hw"], ["d_up"], mode="linear", axes=[2, 3],
                         coordinate_transformation_mode="align_corners"),
        helper.make_node("Resize", ["e", "", "scales_one"], ["e_same"], mode="linear"),
        helper.make_node("Constant", [], ["scales_one"], value=numpy_helper.from_array(np.ones(4, np.float32))),
        helper.make_node("Concat", ["a_up", "b_up", "c", "d_up", "e_same"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "weight", "bias"], ["out"], kernel_shape=[1, 1]),
    ]
    out = helper.make_tensor_value_info("out", f, ["N", 3, "H", "W"])
    graph = helper.make_graph(nodes, "upsampled_concat", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    # The Resize outputs' symbolic shapes, as the exporter writes them (shape inference cannot know them).
    model.graph.value_info.extend(helper.make_tensor_value_info(name, f, ["N", c, "H", "W"])
                                  for name, c in (("a_up", 2), ("b_up", 4), ("d_up", 2), ("e_same", 3)))
    return model


def test_each_part_keeps_its_block_of_the_convolution():
    graph = _upsampled_concat()
    fused, counts = apply_rewrites(graph, "onnxruntime")
    assert counts == {"drop_identity_resize": 1, "pointwise_conv_before_upsampling": 1}
    assert conv_over_concat(fused) == 0 and not any(n.op_type == "Concat" and n.attribute[0].i == 1
                                                    for n in fused.graph.node)
    rng = np.random.RandomState(2)
    feed = {"a": rng.randn(2, 2, 3, 5), "b": rng.randn(2, 4, 3, 5), "c": rng.randn(2, 1, 6, 10),
            "d": rng.randn(2, 2, 3, 5), "e": rng.randn(2, 3, 6, 10)}
    feed = {k: v.astype(np.float32) for k, v in feed.items()}
    np.testing.assert_allclose(run(fused, feed), run(graph, feed), rtol=1e-5, atol=1e-5)
    # The TensorRT-bound graph is left alone.
    _, counts = apply_rewrites(graph, "tensorrt")
    assert not FUSIONS & set(counts)


def test_segformer_upsamplings_run_in_the_blocked_layout(segformer, tmp_path):
    """After the rewrite ONNX Runtime's NCHWc transformer takes every upsampling of SegFormer's decoder (it
    needs constant integer scales): no plain Resize is left in the session's graph on an x86 CPU."""
    import onnxruntime as ort

    from engines.onnxruntime import session_options

    fused, _ = apply_rewrites(segformer[1], "onnxruntime")
    assert all(len(n.input) == 3 for n in fused.graph.node if n.op_type == "Resize")  # scales, no sizes
    options = session_options(1, "all")
    options.optimized_model_filepath = str(tmp_path / "session.onnx")
    ort.InferenceSession(fused.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [(n.domain, n.op_type) for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ("com.microsoft.nchwc", "Upsample") in ops and ("", "Resize") not in ops


def _dynamic_upsampling(mode: str) -> onnx.ModelProto:
    """x upsampled x2 to sizes computed from its own shape (provably twice it), and y resized to x's size
    (no provable ratio: left as it is)."""
    f = TensorProto.FLOAT
    const = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("zero", [0]), ("two", [2]), ("four", [4]), ("twice", [2, 2]))]
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Slice", ["x_shape", "zero", "two"], ["nc"]),
        helper.make_node("Slice", ["x_shape", "two", "four"], ["hw"]),
        helper.make_node("Mul", ["hw", "twice"], ["hw2"]),
        helper.make_node("Concat", ["nc", "hw2"], ["sizes2"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes2"], ["x_up"], mode="linear", coordinate_transformation_mode=mode),
        helper.make_node("Concat", ["nc", "hw"], ["sizes_x"], axis=0),
        helper.make_node("Resize", ["y", "", "", "sizes_x"], ["y_to_x"], mode="linear",
                         coordinate_transformation_mode=mode),
    ]
    graph = helper.make_graph(nodes, "dynamic_upsampling",
                              [helper.make_tensor_value_info("x", f, ["N", 2, "h", "w"]),
                               helper.make_tensor_value_info("y", f, ["N", 2, "H", "W"])],
                              [helper.make_tensor_value_info("x_up", f, None),
                               helper.make_tensor_value_info("y_to_x", f, None)], const)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("mode", ["half_pixel", "pytorch_half_pixel", "align_corners"])
def test_integer_upsampling_by_constant_scales_computes_the_same(mode):
    graph = _dynamic_upsampling(mode)
    fused, counts = apply_rewrites(graph, "onnxruntime")
    assert counts == {"resize_by_constant_scales": 1}
    rewritten = [n for n in fused.graph.node if n.op_type == "Resize" and len(n.input) == 3]
    assert len(rewritten) == 1 and rewritten[0].output[0] == "x_up"
    assert {a.s.decode() for a in rewritten[0].attribute if a.name == "coordinate_transformation_mode"} == \
        {"align_corners" if mode == "align_corners" else "half_pixel"}
    rng = np.random.RandomState(3)
    for hw, other in (((3, 5), (7, 4)), ((1, 6), (4, 9))):  # a length-1 axis too
        feed = {"x": rng.randn(2, 2, *hw).astype(np.float32), "y": rng.randn(2, 2, *other).astype(np.float32)}
        for got, want in zip(run_all(fused, feed), run_all(graph, feed)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    _, counts = apply_rewrites(graph, "tensorrt")
    assert not FUSIONS & set(counts)


def run_all(graph: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    with OnnxRuntimeRunner(graph.SerializeToString(), threads=1) as runner:
        outputs = runner.infer(feed)
        return [outputs[o.name] for o in graph.graph.output]
