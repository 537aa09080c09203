"""PSPNet's pyramid pooling head (models/heads/psp.py): shapes at odd and non-square feature sizes, adaptive
pooling against its per-bin definition, every level routed through ``adaptive_avg_pool``, and what the dynamo
ONNX exporter makes of adaptive pooling with a dynamic H/W (it specialises it to the traced size)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import models.heads.psp as psp
from engines.onnxruntime import OnnxRuntimeRunner
from export.compile.compat import check_tensorrt_compat
from export.compile.onnx_export import export_onnx
from export.compile.rewrites import TARGETS, apply_rewrites
from helpers import make_deterministic
from models.heads.psp import BINS, PSPHead, adaptive_avg_pool

FEATURE_SIZES = [(7, 11), (6, 6), (13, 5), (1, 1), (2, 3)]


@pytest.mark.parametrize("size", FEATURE_SIZES)
def test_logits_at_the_feature_size(size):
    head = PSPHead(32, num_classes=5).eval()
    x = torch.randn(2, 32, *size)
    with torch.no_grad():
        assert tuple(head(x).shape) == (2, 5, *size)
        assert torch.equal(head([torch.randn(2, 8, 3, 3), x]), head(x))  # a feature list: reads the last map


def test_default_widths_are_the_papers():
    head = PSPHead(2048, num_classes=19)
    assert [s[0].out_channels for s in head.ppm.stages] == [512] * 4
    assert head.bottleneck[0].in_channels == 2048 + 4 * 512 and head.bottleneck[0].out_channels == 512


def _bin_average(x: torch.Tensor, bins: int) -> torch.Tensor:
    """The definition, one window at a time: along a side of n, bin i averages floor(i*n/b) .. ceil((i+1)*n/b)."""
    n_h, n_w = x.shape[-2:]
    out = torch.empty(*x.shape[:2], bins, bins, dtype=torch.float64)
    for i in range(bins):
        for j in range(bins):
            rows = slice(i * n_h // bins, math.ceil((i + 1) * n_h / bins))
            cols = slice(j * n_w // bins, math.ceil((j + 1) * n_w / bins))
            out[:, :, i, j] = x[:, :, rows, cols].double().mean(dim=(-2, -1))
    return out


@pytest.mark.parametrize("size", FEATURE_SIZES)
@pytest.mark.parametrize("bins", BINS)
def test_adaptive_avg_pool_is_the_per_bin_average(size, bins):
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(adaptive_avg_pool(x, bins).double(), _bin_average(x, bins), rtol=1e-6, atol=1e-6)


def test_every_pyramid_level_pools_through_adaptive_avg_pool(monkeypatch):
    """The one function a custom op will replace: the head must not pool any other way."""
    calls = []

    def counting(x, bins):
        calls.append(bins)
        return _bin_average(x, bins).float()

    monkeypatch.setattr(psp, "adaptive_avg_pool", counting)
    head = PSPHead(16, num_classes=3).eval()
    with torch.no_grad():
        head(torch.randn(1, 16, 7, 11))
    assert calls == list(BINS)


# ---------------------------------------------------------------------------------------------------------
# Export with a dynamic H/W. The head reads a stride-8 map; a strided conv stands in for the backbone.

EXPORT_SIZE = (64, 64)  # feature 8x8: 2 divides it, 3 and 6 do not (like 64x128 features of a 512x1024 input)


class _StrideEight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 8, 8)
        self.head = PSPHead(16, num_classes=3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(images))  # (B, 3, H/8, W/8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The head behind a stride-8 stem, exported once with dynamic H/W, and its graph lowered per target."""
    model = make_deterministic(_StrideEight())
    graph = export_onnx(model, tmp_path_factory.mktemp("psp") / "model.onnx", EXPORT_SIZE, 8, dynamic_hw=True)
    return model, graph, {target: apply_rewrites(graph, target)[0] for target in TARGETS}


def _max_error(model, graph, image_size) -> float:
    x = torch.randn(1, 3, *image_size)
    with torch.no_grad():
        reference = model(x).numpy()
    with OnnxRuntimeRunner(graph.SerializeToString()) as runner:
        out = runner.infer({"images": x.numpy()})["logits"]
    return float(np.abs(out - reference).max())


def test_every_pyramid_level_exports_as_one_adaptive_pool_node(exported):
    _, graph, _ = exported
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in dims[2:])
    bins = [a.i for n in graph.graph.node if n.op_type == "AdaptiveAvgPool" for a in n.attribute if a.name == "bins"]
    assert sorted(bins) == sorted(BINS)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("feature_size", [(8, 8), (7, 11), (6, 6), (9, 5), (2, 3)])
def test_one_graph_follows_the_feature_size(exported, target, feature_size):
    """Plain torch.onnx specialises adaptive_avg_pool2d to the traced size while declaring H and W dynamic
    (a baked AveragePool, or index tables that read out of bounds elsewhere: mmdeploy's rewrite bakes
    kernel = in // out in the same way); the seg::AdaptiveAvgPool lowering computes PyTorch's bin edges from
    the input's shape, so sizes the bins do not divide (7x11 with bins 3 and 6) and sizes below the bin count
    (2x3 with 6) match too."""
    model, _, lowered = exported
    assert _max_error(model, lowered[target], (8 * feature_size[0], 8 * feature_size[1])) < 1e-5


def test_exported_graph_passes_the_tensorrt_op_table(exported):
    _, _, lowered = exported
    for version in ("10.3", "11.1"):
        assert check_tensorrt_compat(lowered["tensorrt"], version) == []
