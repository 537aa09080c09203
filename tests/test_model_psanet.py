"""PSANet's own cases; forward, export, parity and the op tables of the model are in test_conformance.py, the op's
generic checks (opcheck, gradient, definition, lowerings at the harness sizes) in test_custom_ops.py.

Here: the PSA mask op against a brute-force loop at odd, non-square and even windows, smaller and larger than
the map, in both modes and through both lowerings; the transpose relation of collect and distribute; the
model's auxiliary head; the lowered graph of the model."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from export.compile.compat import check_tensorrt_compat
from export.compile.onnx_export import export_onnx
from export.compile.rewrites import TARGETS, apply_rewrites
from export.ops import DOMAIN, VERSION
from helpers import make_deterministic
from models import create_model, get_spec
from models.ops.psa_mask import psa_mask, psa_mask_reference

# odd, square, even (half = (m - 1) // 2), even square (ADE20K's 66 x 66 in small: 2 before, 3 after), 1x1, large
MASKS = [(5, 7), (3, 3), (4, 6), (6, 6), (1, 1), (9, 5), (33, 31)]
SIZES = [(1, 5, 7), (2, 8, 8), (1, 16, 3), (1, 1, 1), (1, 2, 9)]  # (batch, h, w)


def brute_force(x: np.ndarray, mask_h: int, mask_w: int, distribute: int) -> np.ndarray:
    """Every (target, source) pair of positions, written the other way round from mmcv's kernel: look up the
    window cell that links them and keep it if it is inside the window."""
    n, _, h, w = x.shape
    out = np.zeros((n, h * w, h * w), np.float32)
    for ph in range(h):
        for pw in range(w):
            for qh in range(h):
                for qw in range(w):
                    i, j = qh - ph + (mask_h - 1) // 2, qw - pw + (mask_w - 1) // 2
                    if 0 <= i < mask_h and 0 <= j < mask_w:
                        p, q = ph * w + pw, qh * w + qw
                        if distribute:
                            out[:, p, q] = x[:, i * mask_w + j, ph, pw]
                        else:
                            out[:, q, p] = x[:, i * mask_w + j, ph, pw]
    return out.reshape(n, h * w, h, w)


def single_node(mask_h: int, mask_w: int, distribute: int) -> onnx.ModelProto:
    node = helper.make_node("PSAMask", ["x"], ["output"], name="psa", domain=DOMAIN, mask_h=mask_h, mask_w=mask_w,
                            distribute=distribute)
    graph = helper.make_graph(
        [node], "psa", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", mask_h * mask_w, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", "HW", "H", "W"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, VERSION)],
                             ir_version=10)


@pytest.mark.parametrize("distribute", [0, 1])
@pytest.mark.parametrize("mask", MASKS)
def test_reference_equals_brute_force(mask, distribute):
    for batch, h, w in SIZES:
        x = np.random.default_rng(h * w).standard_normal((batch, mask[0] * mask[1], h, w)).astype(np.float32)
        out = psa_mask(torch.from_numpy(x), *mask, distribute).numpy()
        np.testing.assert_array_equal(out, brute_force(x, *mask, distribute), err_msg=f"{mask} at {h}x{w}")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("distribute", [0, 1])
@pytest.mark.parametrize("mask", MASKS)
def test_lowering_equals_reference_in_both_modes(mask, distribute, target):
    """One lowered graph per window, dynamic N, H, W, exact at every size (a gather: no arithmetic on values)."""
    lowered, counts = apply_rewrites(single_node(*mask, distribute), target)
    assert counts == {"lower_psa_mask": 1}
    assert all(node.domain in ("", "ai.onnx") for node in lowered.graph.node)
    for version in ("10.3", "11.1"):
        assert check_tensorrt_compat(lowered, version) == []
    session = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, h, w in SIZES:
        x = np.random.default_rng(h * w).standard_normal((batch, mask[0] * mask[1], h, w)).astype(np.float32)
        (out,) = session.run(None, {"x": x})
        np.testing.assert_array_equal(out, psa_mask_reference(torch.from_numpy(x), *mask, distribute).numpy())


def test_lowering_uses_no_scatter_and_no_loop():
    lowered, _ = apply_rewrites(single_node(97, 97, 0), "tensorrt")
    ops = {node.op_type for node in lowered.graph.node}
    assert not ops & {"ScatterND", "ScatterElements", "Loop", "Scan", "If"}
    assert "Gather" in ops


@pytest.mark.parametrize("mask", [(5, 7), (9, 9), (2, 3)])
def test_distribute_is_collect_transposed(mask):
    x = torch.randn(2, mask[0] * mask[1], 4, 6)
    collect = psa_mask(x, *mask, 0).view(2, 24, 24)
    distribute = psa_mask(x, *mask, 1).view(2, 24, 24)
    torch.testing.assert_close(distribute, collect.transpose(1, 2), rtol=0, atol=0)


def test_over_complete_window_keeps_every_weight_and_a_small_one_is_local():
    """A (2H-1) x (2W-1) window reaches every position from every position, so collect keeps each position's
    H*W weights (one per target); a 3 x 3 window keeps at most 9, zero beyond a distance of 1."""
    h, w = 4, 5
    x = torch.rand(1, (2 * h - 1) * (2 * w - 1), h, w) + 1  # no zeros of its own
    assert (psa_mask(x, 2 * h - 1, 2 * w - 1, 0) != 0).all()
    local = psa_mask(torch.rand(1, 9, h, w) + 1, 3, 3, 0).view(h, w, h, w)
    nonzero = local.nonzero()
    assert ((nonzero[:, 0] - nonzero[:, 2]).abs().max() <= 1) and ((nonzero[:, 1] - nonzero[:, 3]).abs().max() <= 1)
    assert len(nonzero) == sum(min(r + 2, h) - max(r - 1, 0) for r in range(h)) * sum(
        min(c + 2, w) - max(c - 1, 0) for c in range(w))


@pytest.mark.parametrize("name, window", [("psanet_r50", 97), ("psanet_r101_v1c", 97), ("psanet_r50_v1c_ade20k", 66),
                                          ("psanet_r101_v1c_ade20k", 66)])
def test_attention_conv_predicts_one_weight_per_window_cell(name, window):
    """mmseg's Cityscapes / VOC window (97, 97) and its ADE20K one (66, 66)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=19)
    assert model.head.collect.mask_size == model.head.distribute.mask_size == (window, window)
    assert model.head.collect.attention[-1].out_channels == window * window
    assert model.head.distribute.attention[-1].out_channels == window * window
    assert (model.head.collect.distribute, model.head.distribute.distribute) == (0, 1)


def test_aux_heads_only_on_request():
    spec = get_spec("psanet_r50")
    model = create_model("psanet_r50", num_classes=5, **spec.test_kwargs).train()
    x = torch.randn(2, 3, 64, 96)
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5, 64, 96)
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, 5, 64, 96)
    assert len(aux) == 1 and aux[0].shape == (2, 5, 64, 96)  # FCN head on stage 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    spec = get_spec("psanet_r50")
    model = make_deterministic(create_model("psanet_r50", num_classes=5, **spec.test_kwargs))
    return model, export_onnx(model, tmp_path_factory.mktemp("psanet") / "model.onnx", (64, 64), spec.size_divisor,
                              spec.dynamic_hw)


def test_model_graph_holds_two_psa_masks_and_none_after_lowering(exported):
    _, graph = exported
    masks = [n for n in graph.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in masks] == ["PSAMask", "PSAMask"]
    assert sorted(a.i for n in masks for a in n.attribute if a.name == "distribute") == [0, 1]
    for target in TARGETS:
        lowered, counts = apply_rewrites(graph, target)
        # The onnxruntime target's fusions (export/compile/fusions.py) also take the logits' resize.
        assert {k: v for k, v in counts.items() if k != "resize_by_constant_scales"} == {"lower_psa_mask": 2}
        assert not [n for n in lowered.graph.node if n.domain not in ("", "ai.onnx")]
    lowered, _ = apply_rewrites(graph, "tensorrt")
    assert check_tensorrt_compat(lowered, "10.3") == []
    assert check_tensorrt_compat(lowered, "11.1") == []


def test_one_graph_serves_odd_and_clipped_sizes(exported):
    """Attention maps of 4x4 (the 7x7 window over-complete), 4x5 from a 9x11 feature (odd, mmseg's
    floor rule), 8x8 (the window local): one lowered graph equals PyTorch at each."""
    model, graph = exported
    lowered, _ = apply_rewrites(graph, "onnxruntime")
    session = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
    for size in ((64, 64), (72, 88), (128, 128)):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = model(x).numpy()
        (out,) = session.run(None, {"images": x.numpy()})
        assert np.abs(out - expected).max() < 1e-4 * np.abs(expected).max(), size
