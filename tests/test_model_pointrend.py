"""PointRend (models/pointrend.py) and its point selection (models/ops/uncertain_points.py,
export/ops/uncertain_points.py): the selection is torch.topk's set at point counts below, at and above
TensorRT's TopK limit and above H*W, in PyTorch and in the lowered graph; the subdivision equals a plain
PyTorch loop; the full-size model keeps mmseg's 8196 points, and its TensorRT graph passes both op tables."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from export.compile.compat import check_tensorrt_compat
from export.compile.onnx_export import export_onnx
from export.compile.rewrites import apply_rewrites
from export.ops import DOMAIN, VERSION
from export.ops.uncertain_points import TOPK_MAX
from helpers import make_deterministic
from models import count_parameters, create_model, get_spec
from models.ops.uncertain_points import (most_uncertain_points, uncertain_point_scatter_reference)

MMSEG_NUM_POINTS = 8196  # mmseg configs/_base_/models/pointrend_r50.py, test_cfg.subdivision_num_points


def _uncertainty(logits: torch.Tensor) -> torch.Tensor:
    top2 = logits.topk(2, dim=1).values
    return (top2[:, 1] - top2[:, 0]).flatten(1)  # mmseg's calculate_uncertainty, flattened


def _selection_graph(num_points: int) -> onnx.ModelProto:
    """One seg::UncertainPointScatter node, lowered for TensorRT: written with values of 1e6 (far from any
    logit), its output marks the selected set."""
    node = helper.make_node("UncertainPointScatter", ["logits", "values"], ["out"], "scatter", domain=DOMAIN,
                            num_points=num_points)
    graph = helper.make_graph([node], "selection",
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "C", "H", "W"]),
                               helper.make_tensor_value_info("values", TensorProto.FLOAT, ["N", "C", 1, "P"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "C", "H", "W"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, VERSION)],
                              ir_version=10)
    return apply_rewrites(model, "tensorrt")[0]


# (num_points, H, W): below the TopK limit, at it, just above it, mmseg's 8196 on a 128 x 128 map (three
# rounds of TopK), and more points than positions.
CASES = [(1000, 64, 64), (TOPK_MAX, 64, 80), (TOPK_MAX + 1, 64, 80), (MMSEG_NUM_POINTS, 128, 128),
         (MMSEG_NUM_POINTS, 64, 96), (MMSEG_NUM_POINTS, 90, 91)]


def test_topk_max_is_below_every_tables_limit():
    assert TOPK_MAX == 3839 and MMSEG_NUM_POINTS > TOPK_MAX


@pytest.mark.parametrize("num_points,h,w", CASES)
def test_selection_is_torch_topks_set(num_points, h, w):
    logits = torch.randn(2, 5, h, w, generator=torch.Generator().manual_seed(h * w))
    n = min(num_points, h * w)
    expected = [set(row.tolist()) for row in _uncertainty(logits).topk(n, dim=1).indices]
    reference = most_uncertain_points(logits, num_points)
    assert reference.shape == (2, n)
    assert [set(row.tolist()) for row in reference] == expected
    assert torch.equal(reference, reference.sort(dim=1).values)  # ascending

    session = ort.InferenceSession(_selection_graph(num_points).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    values = np.full((2, 5, 1, n), 1e6, np.float32)
    (out,) = session.run(None, {"logits": logits.numpy(), "values": values})
    lowered = [set(np.flatnonzero(plane[0].reshape(-1) == 1e6).tolist()) for plane in out]
    assert lowered == expected
    np.testing.assert_array_equal(out, uncertain_point_scatter_reference(logits, torch.from_numpy(values),
                                                                         num_points).numpy())


def test_ties_go_to_the_lower_index_in_the_reference_and_the_lowering():
    """Logits of three levels: most uncertainties tie, and the N-th largest value is shared by many."""
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, (1, 3, 96, 96)).astype(np.float32)
    num_points = MMSEG_NUM_POINTS
    u = _uncertainty(torch.from_numpy(logits))[0].numpy()
    ranked = sorted(range(u.size), key=lambda i: (-u[i], i))
    expected = sorted(ranked[:num_points])
    assert u[ranked[num_points - 1]] == u[ranked[num_points]], "the case should tie at the N-th value"
    assert most_uncertain_points(torch.from_numpy(logits), num_points)[0].tolist() == expected

    session = ort.InferenceSession(_selection_graph(num_points).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"logits": logits, "values": np.full((1, 3, 1, num_points), 1e6, np.float32)})
    assert np.flatnonzero(out[0, 0].reshape(-1) == 1e6).tolist() == expected


def test_lowered_selection_uses_only_topk_within_the_limit():
    graph = _selection_graph(MMSEG_NUM_POINTS)
    ks = [int(onnx.numpy_helper.to_array(t)[0]) for n in graph.graph.node if n.op_type == "TopK"
          for t in graph.graph.initializer if t.name == n.input[1]]
    assert ks == [2] + [TOPK_MAX] * 3  # the top-2 logits, then three rounds
    for version in ("10.3", "11.1"):
        assert check_tensorrt_compat(graph, version) == []


def _subdivision_loop(head, pyramid_features: list[torch.Tensor], coarse: torch.Tensor) -> torch.Tensor:
    """mmseg's PointHead.forward_test written plainly: topk, point coordinates, grid_sample, scatter."""
    refined = coarse
    for _ in range(head.subdivision_steps):
        refined = F.interpolate(refined, scale_factor=head.scale_factor, mode="bilinear", align_corners=False)
        b, c, h, w = refined.shape
        n = min(head.subdivision_num_points, h * w)
        indices = _uncertainty(refined).topk(n, dim=1).indices  # (B, N)
        coords = torch.stack([((indices % w).float() + 0.5) / w, ((indices // w).float() + 0.5) / h], dim=-1)
        grid = coords.unsqueeze(1) * 2 - 1  # mmcv point_sample: (B, 1, N, 2) in [-1, 1]
        fine = F.grid_sample(pyramid_features[0], grid, align_corners=False).squeeze(2)  # (B, F, N)
        coarse_at = F.grid_sample(coarse, grid, align_corners=False).squeeze(2)  # (B, K, N)
        point_logits = head.point_head(fine, coarse_at)
        refined = refined.reshape(b, c, h * w).scatter(2, indices.unsqueeze(1).expand(-1, c, -1), point_logits)
        refined = refined.view(b, c, h, w)
    return refined


@pytest.mark.parametrize("num_points", [1000, MMSEG_NUM_POINTS])
def test_subdivision_equals_a_plain_loop(num_points):
    """At 96 x 128 the steps run at 48 x 64 (3072 positions) and 96 x 128 (12288): 1000 points select at both
    steps, 8196 takes every position at the first and selects (three TopK rounds) at the second."""
    spec = get_spec("pointrend_r50")
    model = make_deterministic(create_model("pointrend_r50", num_classes=5,
                                            **{**spec.test_kwargs, "subdivision_num_points": num_points}))
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        head = model.head
        pyramid = head.neck(model.backbone(x))
        coarse = head.coarse_head(pyramid)
        expected = _subdivision_loop(head, pyramid, coarse)
        out = model(x)
    assert out.shape == (1, 5, 96, 128) and coarse.shape[-2:] == (24, 32)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_full_size_keeps_mmsegs_configuration():
    with torch.device("meta"):
        model = create_model("pointrend_r50", num_classes=19)
    head = model.head
    assert (head.subdivision_steps, head.subdivision_num_points, head.scale_factor) == (2, MMSEG_NUM_POINTS, 2)
    assert get_spec("pointrend_r50").test_kwargs.get("subdivision_num_points", MMSEG_NUM_POINTS) == MMSEG_NUM_POINTS
    assert len(head.point_head.fcs) == 3 and head.point_head.fcs[0][0].out_channels == 256
    assert head.neck.out_channels == [256] * 4
    assert count_parameters(model) == 28_819_663  # measured here; mmseg's README publishes no count


def test_tensorrt_graph_with_mmsegs_point_count_passes_the_op_tables(tmp_path):
    """The narrow network with the full-size point count, exported at 256 x 256: P2 is 64 x 64, the steps
    run at 128 x 128 and 256 x 256, where 8196 < H*W, so the limited-K selection is the one that runs.
    The lowered graph passes both op tables and computes PyTorch's logits."""
    spec = get_spec("pointrend_r50")
    model = make_deterministic(create_model("pointrend_r50", num_classes=5, **spec.test_kwargs))
    assert model.head.subdivision_num_points == MMSEG_NUM_POINTS
    graph = export_onnx(model, tmp_path / "pointrend.onnx", (256, 256), spec.size_divisor, True)
    lowered, counts = apply_rewrites(graph, "tensorrt")
    assert counts == {"lower_uncertain_point_sample": 2, "lower_uncertain_point_scatter": 2}
    for version in ("10.3", "11.1"):
        assert check_tensorrt_compat(lowered, version) == []
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": x.numpy()})
    assert np.linalg.norm(out - expected) / np.linalg.norm(expected) < 1e-5
