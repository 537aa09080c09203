"""The shared backbones keep one protocol: ``forward`` returns one map per entry of ``out_channels`` and
``strides``, with those channels at those strides; parameter counts where a source publishes them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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


def mmseg_basic_block_forward(block, x: torch.Tensor) -> torch.Tensor:
    """mmseg's BasicBlock.forward (mmseg/models/backbones/resnet.py 03b0197) on ``block``'s tensors: conv1 3x3
    with the stride, padding = dilation = the block's dilation; conv2 3x3 with padding 1 and no dilation."""
    def bn(module, y):
        return F.batch_norm(y, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0,
                            module.eps)

    conv1, conv2 = block.conv1[0], block.conv2[0]
    out = F.relu(bn(block.conv1[1], F.conv2d(x, conv1.weight, None, conv1.stride, conv1.dilation, conv1.dilation)))
    out = bn(block.conv2[1], F.conv2d(out, conv2.weight, None, 1, 1, 1))
    identity = x if block.downsample is None else block.downsample(x)
    return F.relu(out + identity)


def test_resnet18_dilate_conv2_false_is_mmsegs_basic_block():
    """dilate_conv2=False: the dilated stages' BasicBlocks compute mmseg's (conv2 undilated), block by block on
    randomised tensors; the default still dilates both convs."""
    torch.manual_seed(0)
    backbone = resnet(18, output_stride=8, stem_width=8, base_width=8, dilate_conv2=False).eval()
    with torch.no_grad():
        for t in backbone.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.5)  # running_var stays positive
        x = backbone.stem(torch.randn(1, 3, SIZE, SIZE))
        for stage in backbone.stages:
            for block in stage:
                expected, x = mmseg_basic_block_forward(block, x), block(x)
                torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    check_protocol(backbone)
    assert [b.conv1[0].dilation[0] for s in backbone.stages for b in s] == [1, 1, 1, 1, 1, 2, 2, 4]
    assert {b.conv2[0].dilation[0] for s in backbone.stages for b in s} == {1}
    default = resnet(18, output_stride=8, stem_width=8, base_width=8)
    assert [b.conv2[0].dilation[0] for s in default.stages for b in s] == [1, 1, 1, 1, 1, 2, 2, 4]


def test_resnet_bottleneck_refuses_dilate_conv2_false():
    with pytest.raises(ValueError, match="dilate_conv2=False applies to BasicBlock only"):
        resnet(50, dilate_conv2=False)


def test_resnet_refuses_an_unknown_output_stride():
    with pytest.raises(ValueError, match="output_stride=4"):
        resnet(50, output_stride=4)


def test_mit_protocol():
    check_protocol(MixTransformer(embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8), depths=(1, 1, 1, 1)))
