"""The shared backbones keep one protocol: ``forward`` returns one map per entry of ``out_channels`` and
``strides``, with those channels at those strides; parameter counts where a source publishes them."""
from __future__ import annotations

import pytest
import torch

from models.backbones import MixTransformer, resnet

SIZE = 64


def check_protocol(backbone: torch.nn.Module) -> None:
    with torch.no_grad():
        features = backbone.eval()(torch.randn(1, 3, SIZE, SIZE))
    assert len(features) == len(backbone.out_channels) == len(backbone.strides)
    for f, c, s in zip(features, backbone.out_channels, backbone.strides):
        assert tuple(f.shape) == (1, c, SIZE // s, SIZE // s)


@pytest.mark.parametrize("output_stride, strides", [(8, [4, 8, 8, 8]), (16, [4, 8, 16, 16]), (32, [4, 8, 16, 32])])
@pytest.mark.parametrize("deep_stem", [True, False])
def test_resnet_output_stride_by_dilation(output_stride, strides, deep_stem):
    backbone = resnet(50, output_stride=output_stride, deep_stem=deep_stem, stem_width=16, base_width=8)
    assert backbone.strides == strides
    check_protocol(backbone)
    dilations = [b.conv2[0].dilation[0] for stage in backbone.stages for b in stage]
    assert max(dilations) == {8: 4, 16: 2, 32: 1}[output_stride]


@pytest.mark.parametrize("depth, published", [(50, 25_557_032), (101, 44_549_160)])
def test_resnet_parameters_match_torchvision(depth, published):
    """torchvision's model docs give ResNet-50 / -101 (v1.5, 7x7 stem) 25,557,032 / 44,549,160 parameters,
    of which its 1000-class fc layer has 2048 * 1000 + 1000; dilation adds none."""
    with torch.device("meta"):
        backbone = resnet(depth, output_stride=8, deep_stem=False)
    assert sum(p.numel() for p in backbone.parameters()) == published - (2048 * 1000 + 1000)


def test_resnet_refuses_an_unknown_output_stride():
    with pytest.raises(ValueError, match="output_stride=4"):
        resnet(50, output_stride=4)


def test_mit_protocol():
    check_protocol(MixTransformer(embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8), depths=(1, 1, 1, 1)))
