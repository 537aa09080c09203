"""Context-attention heads on the dilated ResNet-50: Non-local, DANet, GCNet, ANN.

Each block is checked against its paper's position-by-position formula on a tiny map, and each model against
a copy whose attention is silenced (the way the papers or mmsegmentation initialise it), so an attention that
does nothing in ``forward`` fails. Parameter counts: none was found published for these segmentation models
(mmsegmentation's model zoo lists memory, speed and mIoU only), so none is asserted; the mmsegmentation
config widths that define them are.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import make_deterministic
from models import create_model, get_spec
from models.ann import APNB, AsymmetricAttention, BINS
from models.danet import ChannelAttention, PositionAttention
from models.gcnet import GlobalContextBlock
from models.nonlocal_net import NonLocalBlock

NAMES = ["nonlocal_r50", "danet_r50", "gcnet_r50", "ann_r50"]


def conv1x1(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv at one position: (C_in,) -> (C_out,)."""
    w = conv.weight[:, :, 0, 0]
    return w @ x + (conv.bias if conv.bias is not None else 0)


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Eval mode with non-trivial BatchNorm statistics and affine parameters, and gamma = 0.7."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    for name, p in module.named_parameters():
        if name.endswith("gamma"):
            p.data.fill_(0.7)
    return module.eval()


def test_nonlocal_block_is_the_embedded_gaussian() -> None:
    block = randomized(NonLocalBlock(8, reduction=2))
    x = torch.randn(1, 8, 3, 5)
    with torch.no_grad():
        out = block(x)
        xs = x[0].flatten(1).T  # (HW, C)
        theta = [conv1x1(block.theta, v) for v in xs]
        phi = [conv1x1(block.phi, v) for v in xs]
        g = [conv1x1(block.g, v) for v in xs]
        for i in range(len(xs)):
            logits = torch.stack([theta[i] @ phi[j] for j in range(len(xs))]) / math.sqrt(4)
            y = (torch.softmax(logits, 0)[:, None] * torch.stack(g)).sum(0)  # (C',)
            z = block.conv_out(y[None, :, None, None])[0, :, 0, 0] + xs[i]
            assert torch.allclose(out[0].flatten(1)[:, i], z, atol=1e-5)


def test_position_attention_is_the_papers() -> None:
    pam = randomized(PositionAttention(16))  # query/key C/8 = 2
    assert pam.query.out_channels == pam.key.out_channels == 2
    x = torch.randn(1, 16, 3, 4)
    with torch.no_grad():
        out = pam(x)
        xs = x[0].flatten(1).T  # (HW, C)
        q = [conv1x1(pam.query, v) for v in xs]
        k = [conv1x1(pam.key, v) for v in xs]
        v = torch.stack([conv1x1(pam.value, p) for p in xs])  # (HW, C)
        for i in range(len(xs)):
            s = torch.softmax(torch.stack([q[i] @ k[j] for j in range(len(xs))]), 0)  # s_ji of the paper
            expected = 0.7 * (s[:, None] * v).sum(0) + xs[i]
            assert torch.allclose(out[0].flatten(1)[:, i], expected, atol=1e-5)


def test_channel_attention_is_the_papers_max_minus_energy() -> None:
    """The official code's ``softmax(max_k energy - energy)``, channel by channel, equals the module's."""
    cam = randomized(ChannelAttention())
    x = torch.rand(1, 6, 3, 4) * 3  # non-negative, as after the ReLU before it: large energies
    with torch.no_grad():
        out = cam(x)
        a = x[0].flatten(1)  # (C, HW)
        energy = a @ a.T
        for i in range(6):
            w = torch.softmax(energy[i].max() - energy[i], 0)  # (C,)
            expected = 0.7 * (w[:, None] * a).sum(0) + a[i]
            assert torch.allclose(out[0, i].flatten(), expected, atol=1e-5)


def test_global_context_block_is_attention_pooling_then_transform() -> None:
    block = randomized(GlobalContextBlock(8, ratio=1 / 4))
    torch.nn.init.normal_(block.transform[1].weight, 1.0, 0.2)
    assert block.transform[0].out_channels == 2 and isinstance(block.transform[1], torch.nn.LayerNorm)
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        out = block(x)
        for b in range(2):
            xs = x[b].flatten(1)  # (C, HW)
            weights = torch.softmax(torch.stack([conv1x1(block.mask, xs[:, j])[0] for j in range(xs.shape[1])]), 0)
            context = (xs * weights).sum(1)  # (C,)
            add = block.transform(context[None, :, None, None])[0, :, 0, 0]
            assert torch.allclose(out[b], x[b] + add[:, None, None], atol=1e-5)
            # one context for every position: the block adds the same vector everywhere
            assert torch.allclose((out[b] - x[b]).flatten(1).std(1), torch.zeros(8), atol=1e-5)


def test_asymmetric_attention_samples_110_keys_by_pyramid_pooling() -> None:
    att = randomized(AsymmetricAttention(6, 4, 8, 6))
    query, key = torch.randn(1, 6, 9, 10), torch.randn(1, 4, 9, 10)
    with torch.no_grad():
        out = att(query, key)
        sampled = att.sample(torch.randn(1, 3, 9, 10))
        assert sampled.shape == (1, 3, sum(b * b for b in BINS)) == (1, 3, 110)

        def pyramid(t: torch.Tensor) -> torch.Tensor:  # (1, C, H, W) -> (C, S), PyTorch's adaptive pooling
            return torch.cat([F.adaptive_avg_pool2d(t, b).flatten(2) for b in BINS], 2)[0]

        k, v = pyramid(att.key(key)), pyramid(att.value(key))  # (C', S)
        q = att.query(query)[0].flatten(1)  # (C', HW)
        for i in (0, 17, 89):
            w = torch.softmax(q[:, i] @ k / math.sqrt(8), 0)  # (S,)
            expected = conv1x1(att.out, (v * w).sum(1))
            assert torch.allclose(out[0].flatten(1)[:, i], expected, atol=1e-5)


def test_apnb_shares_the_query_and_key_projection() -> None:
    apnb = APNB(8, 4)
    assert apnb.attention.query is apnb.attention.key
    assert apnb.attention.value is not apnb.attention.key


def silence_attention(model: torch.nn.Module) -> None:
    """Zero what the papers zero at initialisation, so that each attention contributes nothing."""
    head = model.head
    with torch.no_grad():
        if hasattr(head, "pam"):  # DANet: gamma = 0
            head.pam.gamma.zero_()
            head.cam.gamma.zero_()
        elif isinstance(getattr(head, "attention", None), NonLocalBlock):  # W_z's BatchNorm scale and shift
            head.attention.conv_out[1].weight.zero_()
            head.attention.conv_out[1].bias.zero_()
        elif isinstance(getattr(head, "attention", None), GlobalContextBlock):  # last transform conv
            head.attention.transform[-1].weight.zero_()
            head.attention.transform[-1].bias.zero_()
        else:  # ANN: both output projections
            for att in (head.fusion.attention, head.context.attention):
                att.out.weight.zero_()
                att.out.bias.zero_()


@pytest.mark.parametrize("name", NAMES)
def test_attention_is_in_the_forward(name: str) -> None:
    model = make_deterministic(create_model(name, num_classes=5, **get_spec(name).test_kwargs))
    silent = copy.deepcopy(model)
    silence_attention(silent)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out, out_silent = model(x), silent(x)
    assert (out - out_silent).norm() > 1e-3 * out.norm(), f"{name}: the attention does not change the logits"


@pytest.mark.parametrize("name", NAMES)
def test_aux_head_only_on_request(name: str) -> None:
    model = create_model(name, num_classes=5, **get_spec(name).test_kwargs).train()
    x = torch.randn(2, 3, 64, 96)
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5, 64, 96)
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, 5, 64, 96)
    assert len(aux) == 1 and aux[0].shape == (2, 5, 64, 96)  # the FCN head on stage 3
    assert model.aux_indices == [2]


def test_full_widths_are_the_published_configurations() -> None:
    """mmsegmentation's configs (configs/_base_/models/*_r50-d8.py): 512-channel heads on 2048, the FCN
    auxiliary head with 256 on stage 3's 1024; NL reduction 2; DANet pam_channels 64; GC ratio 1/4; ANN
    project_channels 256."""
    with torch.device("meta"):
        nl, da, gc, ann = (create_model(n, num_classes=19) for n in NAMES)
    for model in (nl, da, gc, ann):
        assert model.backbone.out_channels == [256, 512, 1024, 2048]
        assert model.aux_heads[0][0][0].in_channels == 1024 and model.aux_heads[0][0][0].out_channels == 256
    assert nl.head.attention.theta.out_channels == 256 and nl.head.reduce[0].out_channels == 512
    assert da.head.pam.query.out_channels == 64 and da.head.pam.value.out_channels == 512
    assert gc.head.attention.transform[0].out_channels == 128
    assert ann.head.fusion.attention.key[0].in_channels == 1024  # keys from stage 3
    assert ann.head.fusion.attention.query[0].in_channels == 2048  # queries from stage 4
    assert ann.head.fusion.attention.key[0].out_channels == 256 and ann.head.reduce[0].out_channels == 512
    assert ann.head.context.attention.key[0].out_channels == 256
