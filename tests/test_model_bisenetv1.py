"""BiSeNet V1 (models/bisenetv1.py) and its context-path backbones: ResNet-18/34 of basic blocks
(models/backbones/resnet.py) and Xception39 (models/backbones/xception39.py). Forward shape, export and ONNX
Runtime parity of both variants are in the conformance test; here the family's special cases.

Published numbers, and where they were found:

- Parameters, BiSeNet (Xception39): the paper reports 5.8M, as quoted in yu-changqian/TorchSeg issue #30
  ("The number of paramters", https://github.com/yu-changqian/TorchSeg/issues/30), whose author counted
  ``sum(p.numel() for p in model.parameters())`` on the authors' own code with 19 classes and got 1.54M; a
  commenter there suggests the paper's figure is the model's size on disk. No implementation found has 5.8M
  parameters, so 1.54M is the figure asserted.
- Parameters, BiSeNet (ResNet-18): not published in any text found (a summary of the paper found, stored as
  notes, has the paper's parameter/FLOPs table only as an image).
- FLOPs: not found in text for either variant (that summary says the paper counts them at a 640x360 input),
  so none is asserted.
- The authors' code itself (ycszen/TorchSeg at 62eeb159, instantiated outside this suite with 19 classes):
  the networks of ``model/bisenet/cityscapes.bisenet.{X39,R18}.speed`` built for evaluation (main head only)
  have 1,541,963 and 12,894,163 parameters, and with the auxiliary heads of the accuracy configurations
  ``cityscapes.bisenet.{X39,R18}`` 1,842,289 and 13,494,777. Loaded into these networks, their weights give
  the same logits (to 5e-7) once their ``align_corners=True`` upsampling is set to False.
- ResNet-18 / -34: torchvision's model docs (torchvision.models.resnet18 / resnet34, ``num_params``) give
  11,689,512 / 21,797,672 parameters, of which the 1000-class fc layer has 512 * 1000 + 1000.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from export.compile.onnx_export import export_onnx
from helpers import make_deterministic
from models import count_parameters, create_model, get_spec
from models.backbones.resnet import BasicBlock, Bottleneck, resnet
from models.backbones.xception39 import Xception39, XceptionBlock
from test_backbones import check_protocol

NAMES = ["bisenetv1_r18", "bisenetv1_xception39"]


@pytest.mark.parametrize("name", NAMES)
def test_bisenetv1_aux_heads_only_on_request(name: str) -> None:
    model = create_model(name, num_classes=5).train()
    x = torch.randn(2, 3, 64, 96)  # batch 2: the global context's BN sees a 1x1 map and needs > 1 value to train

    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5, 64, 96)

    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, 5, 64, 96)
    assert len(aux) == 2  # the paper's two auxiliary losses, on the Context Path at strides 8 and 16
    assert all(a.shape == (2, 5, 64, 96) for a in aux)


@pytest.mark.parametrize("name", NAMES)
def test_bisenetv1_parameter_count_excludes_aux_heads(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=19)
    total = sum(p.numel() for p in model.parameters())
    aux = sum(p.numel() for p in model.aux_heads.parameters())
    assert aux > 0
    assert count_parameters(model) == total - aux
    assert count_parameters(model) == sum(p.numel() for m in (model.backbone, model.head) for p in m.parameters())


# The authors' TorchSeg networks, 19 classes (module docstring): (deployed, with auxiliary heads).
AUTHORS_CODE_PARAMS = {"bisenetv1_xception39": (1_541_963, 1_842_289), "bisenetv1_r18": (12_894_163, 13_494_777)}


@pytest.mark.parametrize("name", NAMES)
def test_bisenetv1_parameters_match_the_authors_code(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=19)
    deployed, with_aux = AUTHORS_CODE_PARAMS[name]
    assert count_parameters(model) == deployed
    assert sum(p.numel() for p in model.parameters()) == with_aux


def test_bisenetv1_xception39_parameters_match_the_count_published_for_the_authors_code() -> None:
    """1.54M (TorchSeg issue #30, module docstring); the paper's 5.8M is not a parameter count any
    implementation found reproduces."""
    with torch.device("meta"):
        model = create_model("bisenetv1_xception39", num_classes=19)
    assert round(count_parameters(model) / 1e6, 2) == 1.54


@pytest.mark.parametrize("depth, published", [(18, 11_689_512), (34, 21_797_672)])
def test_resnet_basic_block_parameters_match_torchvision(depth: int, published: int) -> None:
    with torch.device("meta"):
        backbone = resnet(depth, output_stride=32, deep_stem=False)
    assert {type(m) for stage in backbone.stages for m in stage} == {BasicBlock}
    assert backbone.out_channels == [64, 128, 256, 512]
    assert sum(p.numel() for p in backbone.parameters()) == published - (512 * 1000 + 1000)


@pytest.mark.parametrize("output_stride, strides", [(8, [4, 8, 8, 8]), (16, [4, 8, 16, 16]), (32, [4, 8, 16, 32])])
def test_resnet18_output_stride_by_dilation(output_stride: int, strides: list[int]) -> None:
    backbone = resnet(18, output_stride=output_stride, deep_stem=False, stem_width=16, base_width=8)
    assert backbone.strides == strides
    check_protocol(backbone)
    dilations = [b.conv2[0].dilation[0] for stage in backbone.stages for b in stage]
    assert max(dilations) == {8: 4, 16: 2, 32: 1}[output_stride]


def test_resnet_block_follows_the_depth() -> None:
    """ResNet-34 and -50 have the same stage depths; the block type tells them apart."""
    with torch.device("meta"):
        r34, r50 = resnet(34), resnet(50)
    assert [len(s) for s in r34.stages] == [len(s) for s in r50.stages] == [3, 4, 6, 3]
    assert type(r34.stages[0][0]) is BasicBlock and type(r50.stages[0][0]) is Bottleneck


def test_xception39_is_the_authors_layout() -> None:
    """TorchSeg's ``xception39``: blocks (4, 8, 4), outputs 64, 128, 256 at strides 8, 16, 32, a separable
    projection shortcut on the first block of each stage only."""
    backbone = Xception39()
    assert [len(stage) for stage in backbone.stages] == [4, 8, 4]
    assert backbone.out_channels == [64, 128, 256] and backbone.strides == [8, 16, 32]
    for stage in backbone.stages:
        assert all(isinstance(b, XceptionBlock) for b in stage)
        assert [isinstance(b.shortcut, nn.Identity) for b in stage] == [False] + [True] * (len(stage) - 1)
    check_protocol(Xception39(depths=(1, 2, 1), widths=(4, 8, 16), stem_width=4))


@pytest.mark.parametrize("name", NAMES)
def test_bisenetv1_global_pooling_exports_as_reduce_mean(name: str, tmp_path) -> None:
    """The global context, both ARMs and the FFM pool globally: each is one ReduceMean over H and W (keeping
    them), never a pooling whose window is the traced size."""
    spec = get_spec(name)
    model = make_deterministic(create_model(name, num_classes=3, **spec.test_kwargs))
    graph = export_onnx(model, tmp_path / "model.onnx", (64, 64), spec.size_divisor, spec.dynamic_hw)
    op_types = [n.op_type for n in graph.graph.node]
    assert op_types.count("ReduceMean") == 4
    assert not {"AveragePool", "GlobalAveragePool"} & set(op_types)


@pytest.mark.parametrize("name", NAMES)
def test_bisenetv1_upsamples_to_the_maps_it_adds_to(name: str) -> None:
    """Every upsampling takes its size from the map it meets, not a scale factor: sizes that are not multiples
    of 32 (whose stride-16 and stride-8 maps are not twice the next) still line up."""
    spec = get_spec(name)
    model = make_deterministic(create_model(name, num_classes=3, **spec.test_kwargs))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 72, 104)).shape == (1, 3, 72, 104)
