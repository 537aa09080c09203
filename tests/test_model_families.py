"""Family-specific checks; forward shape, export and ONNX Runtime parity of every model are in the conformance test."""
from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from helpers import make_deterministic
from models import MODELS, count_parameters, create_model, get_spec, training_only_keys

# SegFormer paper, Table 1: encoder + decoder parameters (millions) on ADE20K (150 classes).
SEGFORMER_PAPER_PARAMS_M = {
    "segformer_b0": 3.8,
    "segformer_b1": 13.7,
    "segformer_b2": 27.5,
    "segformer_b3": 47.3,
    "segformer_b4": 64.1,
    "segformer_b5": 84.7,
}


@pytest.mark.parametrize("name", sorted(SEGFORMER_PAPER_PARAMS_M))
def test_segformer_parameter_count_matches_paper(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory or time spent on weights
        model = create_model(name, num_classes=150)
    measured = count_parameters(model) / 1e6
    paper = SEGFORMER_PAPER_PARAMS_M[name]
    assert abs(measured - paper) / paper < 0.02, f"{name}: {measured:.2f}M parameters, paper says {paper}M"


def test_segformer_layernorm_exports_as_native_node(tmp_path) -> None:
    # TensorRT builds one normalization layer from a LayerNormalization node; a LayerNorm decomposed into
    # ReduceMean/Sub/Pow/... runs slower and can overflow in FP16 (TensorRT warns so and asks for opset >= 17).
    model = create_model("segformer_b0", num_classes=19).eval()
    path = tmp_path / "segformer_b0.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=True, opset_version=18)
    op_types = [node.op_type for node in onnx.load(str(path)).graph.node]
    num_layernorms = sum(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert op_types.count("LayerNormalization") == num_layernorms
    assert "ReduceMean" not in op_types


def test_segformer_drop_path_is_identity_in_eval() -> None:
    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=4, drop_path_rate=0.5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_bisenetv2_aux_heads_only_on_request() -> None:
    model = create_model("bisenetv2", num_classes=5).train()
    x = torch.randn(2, 3, 64, 96)  # batch 2: the context block's BN sees a 1x1 map and needs > 1 value to train

    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5, 64, 96)

    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, 5, 64, 96)
    assert len(aux) == 4  # booster heads on the stem, S3, S4 and S5
    assert all(a.shape == (2, 5, 64, 96) for a in aux)


def test_bisenetv2_parameter_count_excludes_aux_heads() -> None:
    model = create_model("bisenetv2", num_classes=19)
    total = sum(p.numel() for p in model.parameters())
    aux = sum(p.numel() for p in model.aux_heads.parameters())
    assert aux > 0
    assert count_parameters(model) == total - aux
    assert count_parameters(model) == sum(p.numel() for m in (model.backbone, model.head) for p in m.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_test_kwargs_keep_every_kind_of_block(name: str) -> None:
    """The configuration numerical tests build (``test_kwargs``) is no larger than the variant and has every
    module type the variant has: the conformance set tests the same blocks, only fewer or narrower."""
    spec = get_spec(name)
    with torch.device("meta"):
        full, small = create_model(name, num_classes=19), create_model(name, num_classes=19, **spec.test_kwargs)
    assert count_parameters(small) <= count_parameters(full)
    assert {type(m) for m in small.modules()} == {type(m) for m in full.modules()}


# Strides are measured on maps: not on valid-conv or window-by-window networks (the original U-Net, the naive
# sliding window), whose registry entries say so and whose family tests check their size arithmetic.
ALIGNED = sorted(n for n, spec in MODELS.items() if spec.maps_follow_input)


@pytest.mark.parametrize("name", ALIGNED)
def test_size_divisor_is_the_networks_largest_downsampling(name: str) -> None:
    """The registry's ``size_divisor`` (what export requires H and W to be multiples of) is the largest
    factor any layer of the network downsamples by, measured with hooks on every layer's output (global
    pooling's 1x1 maps aside: at an input of 2x3 divisors the deepest strided map is 2x3)."""
    spec = get_spec(name)
    d = spec.size_divisor
    model = make_deterministic(create_model(name, num_classes=3, **spec.test_kwargs))
    h, w = 2 * d, 3 * d
    smallest: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: smallest.append(min(o.shape[-2:])) if isinstance(o, torch.Tensor)
                                     and o.ndim == 4 and tuple(o.shape[-2:]) != (1, 1) else None)
             for m in model.modules()]
    with torch.no_grad():
        model(torch.randn(1, 3, h, w))
    for hook in hooks:
        hook.remove()
    assert h // min(smallest) == d, f"{name}: smallest map {min(smallest)} at input {h}x{w}"


def test_training_only_keys_are_the_aux_heads() -> None:
    model = create_model("bisenetv2", num_classes=5)
    keys = training_only_keys(model)
    assert keys and keys == {k for k in model.state_dict() if k.startswith("aux_heads.")}
    assert training_only_keys(create_model("segformer_b0", num_classes=5)) == set()


@pytest.mark.parametrize("name", ALIGNED)
def test_output_stride_is_the_heads(name: str) -> None:
    """The registry's ``output_stride`` is the stride of the head's logits, measured on the network."""
    spec = get_spec(name)
    model = make_deterministic(create_model(name, num_classes=3, **spec.test_kwargs))
    shapes = []
    hook = model.head.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    h = 2 * spec.size_divisor
    with torch.no_grad():
        model(torch.randn(1, 3, h, h))
    hook.remove()
    assert spec.output_stride is not None and h // shapes[0][-2] == spec.output_stride
