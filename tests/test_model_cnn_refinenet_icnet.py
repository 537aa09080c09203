"""RefineNet and ICNet special cases; forward shape, export and ONNX Runtime parity of their small variants are in
the conformance test. Neither paper nor the official releases publish a parameter count, so the full-size
models are only built and run once each."""
from __future__ import annotations

import pytest
import torch

from helpers import make_deterministic
from models import count_parameters, create_model, get_spec
from models.icnet import ICNetBackbone
from models.refinenet import ChainedResidualPooling, ResidualConvUnit

# Not a published figure: measured by building rf101(num_classes=21) of DrSleep/refinenet-pytorch
# (commit 8f25c07), the PyTorch port of the authors' ResNet-101 PASCAL VOC model linked from guosheng/refinenet.
# Equal counts say the decoder has the same layers at the same widths (4 CRP blocks, 3 RCUs between blocks).
REFINENET_R101_PORT_PARAMS_VOC = 118_052_437


@pytest.mark.parametrize("name", ["refinenet_r101", "refinenet_r50", "icnet_r50"])
def test_full_size_model_builds_and_runs(name: str) -> None:
    model = make_deterministic(create_model(name, num_classes=19))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 19, 64, 64)
    assert torch.isfinite(out).all()


def test_refinenet_r101_matches_the_official_port() -> None:
    with torch.device("meta"):
        model = create_model("refinenet_r101", num_classes=21)
    assert count_parameters(model) == REFINENET_R101_PORT_PARAMS_VOC


def test_refinenet_blocks_as_the_official_code() -> None:
    with torch.device("meta"):
        model = create_model("refinenet_r101", num_classes=19)
    # Two adaptive RCUs per backbone path and three between blocks and before the classifier: 4 * 2 + 4 * 3.
    assert sum(isinstance(m, ResidualConvUnit) for m in model.modules()) == 20
    pools = [m for m in model.modules() if isinstance(m, ChainedResidualPooling)]
    assert len(pools) == 4 and all(len(p.convs) == 4 for p in pools)
    assert [b.output[0].conv1.in_channels for b in (model.head.refine4, model.head.refine1)] == [512, 256]


def test_icnet_backbone_describes_its_maps() -> None:
    spec = get_spec("icnet_r50")
    backbone = make_deterministic(ICNetBackbone(**spec.test_kwargs))
    h, w = 64, 96
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, h, w))
    assert [f.shape[1] for f in features] == backbone.out_channels
    assert [(h // f.shape[-2], w // f.shape[-1]) for f in features] == [(s, s) for s in backbone.strides]


def test_icnet_label_guidance_only_on_request() -> None:
    spec = get_spec("icnet_r50")
    model = create_model("icnet_r50", num_classes=5, **spec.test_kwargs).train()
    x = torch.randn(2, 3, 64, 96)  # batch 2: BatchNorm at 1/32 sees 2x3 maps
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5, 64, 96)
    logits, aux = model(x, return_aux=True)
    assert len(aux) == 2  # the two CFFs' upsampled low-resolution inputs, at 1/16 and 1/8
    assert all(a.shape == (2, 5, 64, 96) for a in aux)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total - sum(p.numel() for p in model.aux_heads.parameters())
