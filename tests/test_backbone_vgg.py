"""VGG16 (models/backbones/vgg.py): the backbone protocol at every output stride and norm setting, the published
parameter counts, SegNet's pool sources (max-unpooling from them puts every maximum back where it was), and the plain
network's export: one dynamic-H/W ONNX graph that ONNX Runtime runs like PyTorch at two sizes and that passes the
TensorRT parser check.

Where the parameter counts are published:

- torchvision, torchvision/models/vgg.py (weight metadata ``num_params``, also on the model docs pages): vgg16
  138,357,544 and vgg16_bn 138,365,992. Its classifier (same file) is Linear(512 * 7 * 7, 4096), Linear(4096,
  4096), Linear(4096, 1000): 102,764,544 + 16,781,312 + 4,097,000 = 123,642,856, leaving 14,714,688 for
  ``features`` (the figure Keras' VGG16(include_top=False) reports as well) and 14,723,136 with BatchNorm, of
  which 4,224 are conv biases before BatchNorm that this backbone drops as redundant (its module docstring):
  14,718,912 here.
  fc6 and fc7 as convolutions hold exactly the linears' weights (fc6's 7x7x512 kernel per output is one
  25,088-wide row), so FCN's VGG16 without the 1000-way fc8 is 134,260,544.
- The papers give rounded counts for whole networks, whose classifier (21 classes, PASCAL VOC) is added here:
  FCN (CVPR 2015) Table 1, FCN-VGG16 134M; SegNet (TPAMI 2017) Sec. 3, the encoder 14.7M ("from 134M to 14.7M"
  without the fully connected layers); DeepLab v1 (ICLR 2015, arXiv 1412.7062) Table 2, DeepLab-CRF-7x7 (7x7 fc6,
  input stride 4) 134.3M, DeepLab-CRF (4x4 fc6, input stride 4) 65.1M, DeepLab-CRF-LargeFOV (3x3 fc6, input
  stride 12, fc6/fc7 1024 channels) 20.5M. None of them publishes an exact count, so none is asserted.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engines.onnxruntime import OnnxRuntimeRunner
from export.compile.compat import check_tensorrt_compat
from export.compile.onnx_export import export_onnx
from helpers import make_deterministic
from models.backbones.vgg import VGG, vgg16, vgg16_fcn, vgg16_largefov, vgg16_segnet
from models.ops.max_unpool import max_unpool
from test_backbones import check_protocol

NARROW = (8, 8, 16, 16, 16)  # every stage and layer kept, 8x narrower
FC = 16
VOC_CLASSES = 21
TORCHVISION_VGG16, TORCHVISION_VGG16_BN = 138_357_544, 138_365_992
FC8 = 4096 * 1000 + 1000
CLASSIFIER = (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096) + FC8
BIASES_BEFORE_BN = sum(c * d for c, d in zip((64, 128, 256, 512, 512), (2, 2, 3, 3, 3)))


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("output_stride, strides", [(8, [2, 4, 8, 8, 8]), (16, [2, 4, 8, 16, 16]),
                                                    (32, [2, 4, 8, 16, 32])])
@pytest.mark.parametrize("norm_layer", [None, nn.BatchNorm2d])
@pytest.mark.parametrize("fc_channels", [None, FC])
def test_protocol_at_every_output_stride(output_stride, strides, norm_layer, fc_channels):
    backbone = vgg16(channels=NARROW, output_stride=output_stride, norm_layer=norm_layer, fc_channels=fc_channels)
    assert backbone.strides == strides + ([strides[-1]] if fc_channels else [])
    assert backbone.out_channels == list(NARROW) + ([FC] if fc_channels else [])
    check_protocol(backbone)
    # The convs after a stride-1 pool dilate by the stride given up (conv5 at 8); fc6 by default by 32 / stride.
    dilations = {m.dilation[0] for stage in backbone.stages for m in stage.modules() if isinstance(m, nn.Conv2d)}
    assert dilations == {8: {1, 2}, 16: {1}, 32: {1}}[output_stride]
    if fc_channels:
        assert backbone.fc[0][0].dilation[0] == {8: 4, 16: 2, 32: 1}[output_stride]
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 13 + (2 if fc_channels else 0)
    # FCN and DeepLab: convs with bias and no norm; SegNet: BatchNorm after every conv, no bias.
    assert len(norms) == (len(convs) if norm_layer else 0)
    assert all((c.bias is None) == (norm_layer is not None) for c in convs)


def test_variant_builders():
    largefov = vgg16_largefov(channels=NARROW, fc_channels=FC)
    assert largefov.strides == [2, 4, 8, 8, 8, 8]
    fc6 = largefov.fc[0][0]
    assert (fc6.kernel_size, fc6.dilation) == ((3, 3), (12, 12))
    check_protocol(largefov)
    fcn = vgg16_fcn(channels=NARROW, fc_channels=FC)
    assert fcn.strides == [2, 4, 8, 16, 32, 32] and fcn.fc[0][0].kernel_size == (7, 7)
    check_protocol(fcn)
    segnet = vgg16_segnet(channels=NARROW)
    assert segnet.return_sources and segnet.fc is None
    assert sum(isinstance(m, nn.BatchNorm2d) for m in segnet.modules()) == 13


@pytest.mark.parametrize("build, kwargs, expected", [
    (vgg16, {}, TORCHVISION_VGG16 - CLASSIFIER),  # 14,714,688
    (vgg16, {"norm_layer": nn.BatchNorm2d}, TORCHVISION_VGG16_BN - CLASSIFIER - BIASES_BEFORE_BN),  # 14,718,912
    (vgg16_fcn, {}, TORCHVISION_VGG16 - FC8),  # 134,260,544
])
def test_parameters_match_torchvision(build, kwargs, expected):
    """torchvision's VGG16 / VGG16-BN counts less the layers this backbone leaves to the heads (module docstring)."""
    with torch.device("meta"):
        backbone = build(**kwargs)
    assert count(backbone) == expected


@pytest.mark.parametrize("build, kwargs, millions, digits", [
    (vgg16_fcn, {}, 134, 0),  # FCN Table 1, FCN-VGG16
    (vgg16_segnet, {}, 14.7, 1),  # SegNet Sec. 3, the encoder (no classifier)
    (vgg16, {"output_stride": 8, "fc_channels": 4096, "fc_kernel_size": 7}, 134.3, 1),  # DeepLab-CRF-7x7
    (vgg16, {"output_stride": 8, "fc_channels": 4096, "fc_kernel_size": 4}, 65.1, 1),  # DeepLab-CRF (4x4)
    (vgg16_largefov, {}, 20.5, 1),  # DeepLab-CRF-LargeFOV
])
def test_parameters_match_the_papers(build, kwargs, millions, digits):
    """The papers' rounded counts, with their 21-class 1x1 classifier on fc7 where the network has one (module
    docstring). Dilation adds no parameters; the default fc6 dilation at stride 8 is DeepLab's input stride 4."""
    with torch.device("meta"):
        backbone = build(**kwargs)
    total = count(backbone)
    if backbone.fc is not None:
        total += backbone.out_channels[-1] * VOC_CLASSES + VOC_CLASSES
    assert round(total / 1e6, digits) == millions


def test_unpooling_puts_every_maximum_back():
    """SegNet's decoder contract at an odd input size (36x52: pool3 sees 9x13, pool5 sees 2x3, both floor):
    unpooling a pooled map with its source writes each maximum back where it was, zeros elsewhere. Ties and
    the op's lowering are tested with the op (tests/test_custom_ops.py)."""
    torch.manual_seed(0)
    backbone = make_deterministic(vgg16_segnet(channels=NARROW))
    images = torch.randn(1, 3, 36, 52)
    with torch.no_grad():
        features, sources = backbone(images)
        x = images
        for stage, pooled, source in zip(backbone.stages, features, sources):
            assert torch.equal(source, stage(x))  # the map this pool reduced
            assert torch.equal(pooled, F.max_pool2d(source, 2, 2))
            unpooled = max_unpool(pooled, source)  # (B, C, H_i, W_i)
            _, where = F.max_pool2d(source, 2, 2, return_indices=True)
            placed = torch.zeros_like(source, dtype=torch.bool).flatten(2).scatter_(2, where.flatten(2), True)
            placed = placed.view_as(source)
            assert torch.equal(unpooled[placed], source[placed])
            assert not unpooled[~placed].any()
            x = pooled
    assert [tuple(s.shape[-2:]) for s in sources] == [(36, 52), (18, 26), (9, 13), (4, 6), (2, 3)]
    assert [tuple(f.shape[-2:]) for f in features] == [(18, 26), (9, 13), (4, 6), (2, 3), (1, 1)]


def test_sources_path_computes_the_plain_features():
    segnet = make_deterministic(vgg16_segnet(channels=NARROW, fc_channels=FC))
    plain = vgg16(channels=NARROW, norm_layer=nn.BatchNorm2d, fc_channels=FC)
    plain.load_state_dict(segnet.state_dict())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features, sources = segnet(images)
        expected = plain.eval()(images)
    assert len(sources) == 5 and len(features) == len(expected) == len(segnet.strides)
    assert all(torch.equal(a, b) for a, b in zip(features, expected))


class LastMap(nn.Module):
    """A backbone as an exportable model: images in, its last feature map out (named ``logits`` on export)."""

    def __init__(self, backbone: VGG) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)[-1]


@pytest.mark.parametrize("build, kwargs, sizes", [
    (vgg16_fcn, {}, [(64, 64), (96, 128)]),  # five 2x2 pools, fc6 7x7
    (vgg16_largefov, {}, [(64, 64), (72, 104)]),  # stride-1 pools, dilated conv5 and fc6
])
def test_plain_network_exports_for_any_size(build, kwargs, sizes, tmp_path):
    backbone = build(channels=NARROW, fc_channels=FC, **kwargs)
    divisor = max(backbone.strides)
    model = make_deterministic(LastMap(backbone))
    proto = export_onnx(model, tmp_path / "vgg.onnx", sizes[0], divisor, dynamic_hw=True)
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 5 and all(len(n.output) == 1 for n in pools)  # no Indices output anywhere
    assert check_tensorrt_compat(proto) == []
    with OnnxRuntimeRunner(proto.SerializeToString()) as runner:
        for h, w in sizes:
            images = torch.randn(1, 3, h, w)
            with torch.no_grad():
                expected = model(images).numpy()
            got = runner.infer({"images": images.numpy()})["logits"]
            assert got.shape == expected.shape == (1, FC, h // divisor, w // divisor)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_refuses_settings_it_cannot_honour():
    with pytest.raises(ValueError, match="output_stride=4"):
        vgg16(output_stride=4)
    with pytest.raises(ValueError, match="return_sources with output_stride=8"):
        vgg16_segnet(output_stride=8)
    with pytest.raises(ValueError, match="kernel 4 at dilation 1"):
        vgg16(fc_channels=FC, fc_kernel_size=4)
