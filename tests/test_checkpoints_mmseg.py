"""Checkpoints of mmsegmentation and CoinCheung/BiSeNet (the families' MMSEG_KEYS and COINCHEUNG_KEYS tables).

mmcv and mmseg cannot be installed here, so each test writes a checkpoint in the source's exact layout: the
writers below spell out the source's key names and shapes from its code and configs (cited at each writer), key
by key and independently of the tables, and fill them with the tensors of one of our randomly initialised
models. Imported into a fresh model, the checkpoint must give that model's outputs exactly, and the parameter
count summed over the written shapes (the source's deployed network) must be the imported model's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from export.compile.checkpoints import read_checkpoint
from export.compile.weights import import_weights
from export.errors import UserError
from helpers import cli
from models import count_parameters, create_model, get_spec, training_only_keys

CITYSCAPES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
PALETTE = [[i, 2 * i, 3 * i] for i in range(19)]
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class SourceState:
    """A state dict in a source's names filled from ``model``'s tensors: each call says which source tensor, of
    the shape the source's code gives it, holds which of ours."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.ours = model.state_dict()
        self.state: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()

    def take(self, ours: str) -> torch.Tensor:
        self.used.add(ours)
        return self.ours[ours]

    def put(self, key: str, shape: tuple[int, ...], value: torch.Tensor) -> None:
        assert key not in self.state, key
        assert tuple(value.shape) == tuple(shape), f"{key}: ours {tuple(value.shape)}, the source's {shape}"
        self.state[key] = value.clone()

    def conv(self, key: str, ours: str, cin: int, cout: int, k: int, groups: int = 1, bias: bool = False) -> None:
        """An nn.Conv2d."""
        self.put(f"{key}.weight", (cout, cin // groups, k, k), self.take(f"{ours}.weight"))
        if bias:
            self.put(f"{key}.bias", (cout,), self.take(f"{ours}.bias"))

    def bn(self, key: str, ours: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.put(f"{key}.{name}", (c,), self.take(f"{ours}.{name}"))
        self.put(f"{key}.num_batches_tracked", (), self.take(f"{ours}.num_batches_tracked"))

    def ln(self, key: str, ours: str, c: int) -> None:
        for name in ("weight", "bias"):
            self.put(f"{key}.{name}", (c,), self.take(f"{ours}.{name}"))

    def conv_module(self, key: str, ours: str, cin: int, cout: int, k: int, groups: int = 1) -> None:
        """mmcv's ConvModule with a norm (bias='auto': the conv has none) or CoinCheung's ConvBNReLU: conv, bn;
        ours a ConvNormAct (0, 1)."""
        self.conv(f"{key}.conv", f"{ours}.0", cin, cout, k, groups)
        self.bn(f"{key}.bn", f"{ours}.1", cout)

    def extra(self, key: str, shape: tuple[int, ...]) -> None:
        """A source tensor with no counterpart in ours (a training-only head of another structure)."""
        self.state[key] = torch.randn(shape) if shape else torch.tensor(0)

    def parameters(self, skip: tuple[str, ...]) -> int:
        """The source network's parameters: its BatchNorm statistics and the keys under ``skip`` left out."""
        return sum(v.numel() for k, v in self.state.items() if not k.endswith(BUFFERS) and not k.startswith(skip))


# ------------------------------------------------------------------------------------ the sources' layouts

def mmseg_bisenetv2(model, num_classes, detail=(64, 64, 128), semantic=(16, 32, 64, 128), expansion=6,
                    head=1024, aux=(16, 64, 256, 1024)) -> SourceState:
    """mmseg/models/backbones/bisenetv2.py (088894b) and configs/_base_/models/bisenetv2.py (8c68540): FCNHead
    decode head (128 -> 1024, num_convs=1, concat_input=False) and four FCNHead boosters (num_convs=2)."""
    s = SourceState(model)
    cin = 3
    for i, c in enumerate(detail):  # DetailBranch: detail_branch.{i}, a 3x3 s2 ConvModule then 1 (i = 0) or 2 more
        for k in range(2 if i == 0 else 3):
            s.conv_module(f"backbone.detail.detail_branch.{i}.{k}", f"backbone.detail.s{i + 1}.{k}",
                          cin if k == 0 else c, c, 3)
        cin = c
    c = semantic[0]  # StemBlock: conv_first (3x3 s2), convs (1x1 to c/2, 3x3 s2 back to c), pool, fuse_last (2c -> c)
    mm, ours = "backbone.semantic.stage1", "backbone.semantic.stem"
    s.conv_module(f"{mm}.conv_first", f"{ours}.conv_first", 3, c, 3)
    s.conv_module(f"{mm}.convs.0", f"{ours}.conv_branch.0", c, c // 2, 1)
    s.conv_module(f"{mm}.convs.1", f"{ours}.conv_branch.1", c // 2, c, 3)
    s.conv_module(f"{mm}.fuse_last", f"{ours}.fuse", 2 * c, c, 3)
    for i, stage in ((1, "s3"), (2, "s4"), (3, "s5")):  # stage2..4: GELayer stride 2, then 1, 1, 3 of stride 1
        for j in range(4 if i == 3 else 2):
            mm, ours = f"backbone.semantic.stage{i + 1}.{j}", f"backbone.semantic.{stage}.{j}"
            inp, out = semantic[i - 1] if j == 0 else semantic[i], semantic[i]
            mid = inp * expansion
            s.conv_module(f"{mm}.conv1", f"{ours}.conv", inp, inp, 3)
            if j == 0:
                s.conv_module(f"{mm}.dwconv.0", f"{ours}.dwconv.0", inp, mid, 3, groups=inp)
                s.conv_module(f"{mm}.dwconv.1", f"{ours}.dwconv.1", mid, mid, 3, groups=mid)
                # DepthwiseSeparableConvModule: depthwise_conv, pointwise_conv, each a ConvModule with BN
                s.conv_module(f"{mm}.shortcut.0.depthwise_conv", f"{ours}.shortcut.0", inp, inp, 3, groups=inp)
                s.conv_module(f"{mm}.shortcut.0.pointwise_conv", f"{ours}.shortcut.1", inp, out, 1)
            else:
                s.conv_module(f"{mm}.dwconv.0", f"{ours}.dwconv", inp, mid, 3, groups=inp)
            s.conv_module(f"{mm}.conv2.0", f"{ours}.project", mid, out, 1)
    c = semantic[-1]  # CEBlock: gap = (AdaptiveAvgPool2d, BN), conv_gap 1x1, conv_last 3x3
    s.bn("backbone.semantic.stage4_CEBlock.gap.1", "backbone.semantic.context.norm", c)
    s.conv_module("backbone.semantic.stage4_CEBlock.conv_gap", "backbone.semantic.context.conv_gap", c, c, 1)
    s.conv_module("backbone.semantic.stage4_CEBlock.conv_last", "backbone.semantic.context.conv_last", c, c, 3)
    c = detail[-1]  # BGALayer (bga_channels 128); its DepthwiseSeparableConvModules' pointwise convs have no norm
    for mm, ours in (("detail_dwconv", "detail_keep"), ("semantic_dwconv", "semantic_keep")):
        s.conv_module(f"backbone.bga.{mm}.0.depthwise_conv", f"backbone.aggregation.{ours}.0", c, c, 3, groups=c)
        s.conv(f"backbone.bga.{mm}.0.pointwise_conv.conv", f"backbone.aggregation.{ours}.1", c, c, 1, bias=True)
    s.conv_module("backbone.bga.detail_down.0", "backbone.aggregation.detail_down.0", c, c, 3)
    s.conv_module("backbone.bga.semantic_conv.0", "backbone.aggregation.semantic_up", c, c, 3)
    s.conv_module("backbone.bga.conv", "backbone.aggregation.fuse", c, c, 3)
    mmseg_fcn_head(s, "decode_head", "head.seg", num_classes, c, head)
    for k, (cin, ch) in enumerate(zip(semantic, aux)):  # on the stem and stages 2..4 (in_index 1..4)
        s.conv_module(f"auxiliary_head.{k}.convs.0", f"aux_heads.{k}.0", cin, ch, 3)
        s.conv_module(f"auxiliary_head.{k}.convs.1", f"aux_heads.{k}.1", ch, ch, 3)
        s.conv(f"auxiliary_head.{k}.conv_seg", f"aux_heads.{k}.3", ch, num_classes, 1, bias=True)
    return s


def coincheung_bisenetv2(model, num_classes) -> SourceState:
    """CoinCheung/BiSeNet lib/models/bisenetv2.py (6b4b67a; the parameters of c0422a1, which published
    model_final_v2_city.pth) with aux_mode='train', as tools/train_amp.py saves it: widths fixed in the code."""
    s = SourceState(model)
    for i, (cin, c, n) in enumerate(((3, 64, 2), (64, 64, 3), (64, 128, 3))):  # DetailBranch S1..S3, ConvBNReLU
        for k in range(n):
            s.conv_module(f"detail.S{i + 1}.{k}", f"backbone.detail.s{i + 1}.{k}", cin if k == 0 else c, c, 3)
    stem = "backbone.semantic.stem"  # StemBlock: conv, left = (1x1 16 -> 8, 3x3 s2 8 -> 16), right (pool), fuse
    s.conv_module("segment.S1S2.conv", f"{stem}.conv_first", 3, 16, 3)
    s.conv_module("segment.S1S2.left.0", f"{stem}.conv_branch.0", 16, 8, 1)
    s.conv_module("segment.S1S2.left.1", f"{stem}.conv_branch.1", 8, 16, 3)
    s.conv_module("segment.S1S2.fuse", f"{stem}.fuse", 32, 16, 3)
    for cc, stage, cin, c, n in (("S3", "s3", 16, 32, 2), ("S4", "s4", 32, 64, 2), ("S5_4", "s5", 64, 128, 4)):
        for j in range(n):
            key, ours = f"segment.{cc}.{j}", f"backbone.semantic.{stage}.{j}"
            inp = cin if j == 0 else c
            mid = 6 * inp
            s.conv_module(f"{key}.conv1", f"{ours}.conv", inp, inp, 3)
            if j == 0:  # GELayerS2: dwconv1 (conv s2, bn), dwconv2 (conv, bn, relu), shortcut (dw s2, bn, 1x1, bn)
                s.conv(f"{key}.dwconv1.0", f"{ours}.dwconv.0.0", inp, mid, 3, groups=inp)
                s.bn(f"{key}.dwconv1.1", f"{ours}.dwconv.0.1", mid)
                s.conv(f"{key}.dwconv2.0", f"{ours}.dwconv.1.0", mid, mid, 3, groups=mid)
                s.bn(f"{key}.dwconv2.1", f"{ours}.dwconv.1.1", mid)
                s.conv(f"{key}.shortcut.0", f"{ours}.shortcut.0.0", inp, inp, 3, groups=inp)
                s.bn(f"{key}.shortcut.1", f"{ours}.shortcut.0.1", inp)
                s.conv(f"{key}.shortcut.2", f"{ours}.shortcut.1.0", inp, c, 1)
                s.bn(f"{key}.shortcut.3", f"{ours}.shortcut.1.1", c)
            else:  # GELayerS1: dwconv (conv, bn, relu)
                s.conv(f"{key}.dwconv.0", f"{ours}.dwconv.0", inp, mid, 3, groups=inp)
                s.bn(f"{key}.dwconv.1", f"{ours}.dwconv.1", mid)
            s.conv(f"{key}.conv2.0", f"{ours}.project.0", mid, c, 1)
            s.bn(f"{key}.conv2.1", f"{ours}.project.1", c)
    s.bn("segment.S5_5.bn", "backbone.semantic.context.norm", 128)  # CEBlock
    s.conv_module("segment.S5_5.conv_gap", "backbone.semantic.context.conv_gap", 128, 128, 1)
    s.conv_module("segment.S5_5.conv_last", "backbone.semantic.context.conv_last", 128, 128, 3)
    bga = "backbone.aggregation"  # BGALayer: left1/right2 = (dw 3x3, bn, 1x1 without bias)
    for cc, ours in (("left1", "detail_keep"), ("right2", "semantic_keep")):
        s.conv(f"bga.{cc}.0", f"{bga}.{ours}.0.0", 128, 128, 3, groups=128)
        s.bn(f"bga.{cc}.1", f"{bga}.{ours}.0.1", 128)
        s.conv(f"bga.{cc}.2", f"{bga}.{ours}.1", 128, 128, 1)
    for cc, ours in (("left2", "detail_down.0"), ("right1", "semantic_up"), ("conv", "fuse")):  # (3x3, bn, ...)
        s.conv(f"bga.{cc}.0", f"{bga}.{ours}.0", 128, 128, 3)
        s.bn(f"bga.{cc}.1", f"{bga}.{ours}.1", 128)
    s.conv_module("head.conv", "head.seg.0", 128, 1024, 3)  # SegmentHead(128, 1024, n, aux=False)
    s.conv("head.conv_out.1", "head.seg.2", 1024, num_classes, 1, bias=True)
    for name, cin, up in (("aux2", 16, 4), ("aux3", 32, 8), ("aux4", 64, 16), ("aux5_4", 128, 32)):
        # SegmentHead(cin, 128, n, up_factor=up): conv (ConvBNReLU), conv_out.0 = (nearest x2, ConvBNReLU 128 ->
        # up^2), conv_out.1 (1x1 with bias)
        for key, ci, co in ((f"{name}.conv", cin, 128), (f"{name}.conv_out.0.1", 128, up * up)):
            s.extra(f"{key}.conv.weight", (co, ci, 3, 3))
            for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                s.extra(f"{key}.bn.{b}", () if b == "num_batches_tracked" else (co,))
        s.extra(f"{name}.conv_out.1.weight", (num_classes, up * up, 1, 1))
        s.extra(f"{name}.conv_out.1.bias", (num_classes,))
    return s


def mmseg_resnet_v1c(s: SourceState, layers, stem_channels: int, base: int, prefix: str = "backbone",
                     ours_prefix: str = "backbone", basic_block: bool = False, deep_stem: bool = True) -> int:
    """mmseg ResNetV1c (mmseg/models/backbones/resnet.py 03b0197, mmseg/models/utils/res_layer.py 230246f):
    deep_stem, avg_down=False, Bottleneck style 'pytorch' or, with ``basic_block`` (depth 18/34), BasicBlock
    (conv1, conv2 3x3, expansion 1), at ``prefix`` (ours at ``ours_prefix``); returns the last stage's width.
    ``deep_stem=False``: mmseg's plain ResNet, whose _make_stem_layer builds conv1 (7x7 s2, no bias) and bn1."""
    half = stem_channels // 2
    if not deep_stem:
        s.conv(f"{prefix}.conv1", f"{ours_prefix}.stem.0.0", 3, stem_channels, 7)
        s.bn(f"{prefix}.bn1", f"{ours_prefix}.stem.0.1", stem_channels)
    for i, (cin, c) in enumerate(((3, half), (half, half), (half, stem_channels)) if deep_stem else ()):
        # the deep stem: (conv, bn, relu) x 3
        s.conv(f"{prefix}.stem.{3 * i}", f"{ours_prefix}.stem.{i}.0", cin, c, 3)
        s.bn(f"{prefix}.stem.{3 * i + 1}", f"{ours_prefix}.stem.{i}.1", c)
    expansion = 1 if basic_block else 4
    inplanes = stem_channels
    for i, n in enumerate(layers):
        planes = base * 2**i
        out = expansion * planes
        for j in range(n):
            mm, ours = f"{prefix}.layer{i + 1}.{j}", f"{ours_prefix}.stages.{i}.{j}"
            cin = inplanes if j == 0 else out
            convs = (((cin, planes, 3), (planes, planes, 3)) if basic_block else
                     ((cin, planes, 1), (planes, planes, 3), (planes, out, 1)))
            for k, (ci, co, ks) in enumerate(convs, 1):
                s.conv(f"{mm}.conv{k}", f"{ours}.conv{k}.0", ci, co, ks)
                s.bn(f"{mm}.bn{k}", f"{ours}.conv{k}.1", co)
            # ResLayer: a downsample wherever stride != 1 or the width changes (a bottleneck stage's first block
            # always; a BasicBlock layer1 on the 64-wide stem never)
            if j == 0 and (i > 0 or inplanes != out):
                s.conv(f"{mm}.downsample.0", f"{ours}.downsample.0", inplanes, out, 1)
                s.bn(f"{mm}.downsample.1", f"{ours}.downsample.1", out)
        inplanes = out
    return inplanes


def mmseg_fcn_head(s: SourceState, key: str, ours: str, num_classes: int, cin: int, channels: int) -> None:
    """An FCNHead(num_convs=1, concat_input=False) (mmseg fcn_head.py 0b5f81f) at ``key``: one 3x3 ConvModule
    and conv_seg, our ``ours.0`` and ``ours.2`` (a conv-BN-ReLU, dropout, classifier Sequential)."""
    s.conv_module(f"{key}.convs.0", f"{ours}.0", cin, channels, 3)
    s.conv(f"{key}.conv_seg", f"{ours}.2", channels, num_classes, 1, bias=True)


def mmseg_fcn_aux(s: SourceState, num_classes: int, cin: int, channels: int) -> None:
    """auxiliary_head: FCNHead(in_index=2, num_convs=1, concat_input=False)."""
    mmseg_fcn_head(s, "auxiliary_head", "aux_heads.0", num_classes, cin, channels)


def mmseg_ccnet(model, num_classes, layers, stem_channels=64, base=64, channels=512, aux=256) -> SourceState:
    """configs/_base_/models/ccnet_r50-d8.py (2fc821e): ResNetV1c, CCHead(channels=512, recurrence=2)
    (cc_head.py 1cd613f: FCNHead num_convs=2, concat_input; mmcv CrissCrossAttention query/key/value_conv and a
    Scale gamma, 0-dim), auxiliary FCNHead 1024 -> 256."""
    s = SourceState(model)
    c = mmseg_resnet_v1c(s, layers, stem_channels, base)
    s.conv_module("decode_head.convs.0", "head.reduce", c, channels, 3)
    s.conv("decode_head.cca.query_conv", "head.attention.query", channels, channels // 8, 1, bias=True)
    s.conv("decode_head.cca.key_conv", "head.attention.key", channels, channels // 8, 1, bias=True)
    s.conv("decode_head.cca.value_conv", "head.attention.value", channels, channels, 1, bias=True)
    s.put("decode_head.cca.gamma.scale", (), s.take("head.attention.gamma").reshape(()))
    s.conv_module("decode_head.convs.1", "head.project", channels, channels, 3)
    s.conv_module("decode_head.conv_cat", "head.fuse", c + channels, channels, 3)
    s.conv("decode_head.conv_seg", "head.classifier", channels, num_classes, 1, bias=True)
    mmseg_fcn_aux(s, num_classes, c // 2, aux)
    return s


def mmseg_pspnet(model, num_classes, layers, stem_channels=64, base=64, channels=512, aux=256,
                 basic_block=False) -> SourceState:
    """configs/_base_/models/pspnet_r50-d8.py (3f8d34e): ResNetV1c, PSPHead(channels=512, pool_scales 1, 2, 3, 6)
    (psp_head.py 5563185: psp_modules.{i} = (AdaptiveAvgPool2d, ConvModule 1x1), bottleneck 3x3), auxiliary
    FCNHead 1024 -> 256. R-18 (configs/pspnet/pspnet_r18-d8_512x1024_80k_cityscapes.py, b4d3bf4): depth=18,
    decode_head 512 -> 128, auxiliary_head 256 -> 64."""
    s = SourceState(model)
    c = mmseg_resnet_v1c(s, layers, stem_channels, base, basic_block=basic_block)
    for i in range(4):
        s.conv_module(f"decode_head.psp_modules.{i}.1", f"head.ppm.stages.{i}", c, channels, 1)
    s.conv_module("decode_head.bottleneck", "head.bottleneck", c + 4 * channels, channels, 3)
    s.conv("decode_head.conv_seg", "head.classifier", channels, num_classes, 1, bias=True)
    mmseg_fcn_aux(s, num_classes, c // 2, aux)
    return s


def mmseg_segformer(model, num_classes, embed_dims=32, num_heads=(1, 2, 5, 8), num_layers=(2, 2, 2, 2),
                    sr_ratios=(8, 4, 2, 1), mlp_ratio=4, channels=256) -> SourceState:
    """configs/_base_/models/segformer_mit-b0.py (3f8d34e; B1-B5 change embed_dims and num_layers only, channels
    stays 256). mmseg/models/backbones/mit.py (027eca0): layers.{i} = (PatchEmbed: projection, norm; the
    TransformerEncoderLayers; LayerNorm); a layer's attn is EfficientMultiheadAttention: attn (nn.MultiheadAttention,
    in_proj packing query, key, value), sr and norm where sr_ratio > 1; ffn.layers = (fc1 1x1 conv, pe_conv 3x3
    depth-wise, GELU, dropout, fc2 1x1 conv, dropout). decode_heads/segformer_head.py (0554aec): convs.{i} and
    fusion_conv ConvModules (1x1, BN, ReLU), which concatenates the stages shallowest first; conv_seg."""
    s = SourceState(model)
    cin = 3
    for i, (heads, n, sr) in enumerate(zip(num_heads, num_layers, sr_ratios)):
        c, h = embed_dims * heads, mlp_ratio * embed_dims * heads
        mm, ours = f"backbone.layers.{i}", f"backbone.stages.{i}"
        s.conv(f"{mm}.0.projection", f"{ours}.patch_embed.proj", cin, c, 7 if i == 0 else 3, bias=True)
        s.ln(f"{mm}.0.norm", f"{ours}.patch_embed.norm", c)
        for j in range(n):
            b, o = f"{mm}.1.{j}", f"{ours}.blocks.{j}"
            s.ln(f"{b}.norm1", f"{o}.norm1", c)
            for p in ("weight", "bias"):  # ours: q, and kv = [key; value]
                packed = torch.cat([s.take(f"{o}.attn.q.{p}"), s.take(f"{o}.attn.kv.{p}")])
                s.put(f"{b}.attn.attn.in_proj_{p}", (3 * c, c) if p == "weight" else (3 * c,), packed)
            s.put(f"{b}.attn.attn.out_proj.weight", (c, c), s.take(f"{o}.attn.proj.weight"))
            s.put(f"{b}.attn.attn.out_proj.bias", (c,), s.take(f"{o}.attn.proj.bias"))
            if sr > 1:
                s.conv(f"{b}.attn.sr", f"{o}.attn.sr", c, c, sr, bias=True)
                s.ln(f"{b}.attn.norm", f"{o}.attn.norm", c)
            s.ln(f"{b}.norm2", f"{o}.norm2", c)
            s.put(f"{b}.ffn.layers.0.weight", (h, c, 1, 1), s.take(f"{o}.mlp.fc1.weight").reshape(h, c, 1, 1))
            s.put(f"{b}.ffn.layers.0.bias", (h,), s.take(f"{o}.mlp.fc1.bias"))
            s.conv(f"{b}.ffn.layers.1", f"{o}.mlp.dwconv", h, h, 3, groups=h, bias=True)
            s.put(f"{b}.ffn.layers.4.weight", (c, h, 1, 1), s.take(f"{o}.mlp.fc2.weight").reshape(c, h, 1, 1))
            s.put(f"{b}.ffn.layers.4.bias", (c,), s.take(f"{o}.mlp.fc2.bias"))
        s.ln(f"{mm}.2", f"{ours}.norm", c)
        cin = c
    for i, heads in enumerate(num_heads):
        s.conv_module(f"decode_head.convs.{i}", f"head.linear_c.{i}", embed_dims * heads, channels, 1)
    deepest_first = s.take("head.linear_fuse.0.weight").chunk(4, dim=1)  # (E, E, 1, 1) per stage, stage 3 first
    s.put("decode_head.fusion_conv.conv.weight", (channels, 4 * channels, 1, 1), torch.cat(deepest_first[::-1], 1))
    s.bn("decode_head.fusion_conv.bn", "head.linear_fuse.1", channels)
    s.conv("decode_head.conv_seg", "head.linear_pred", channels, num_classes, 1, bias=True)
    return s


R18, R50, R101 = (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 23, 3)
MIT_LAYERS = {"b0": (2, 2, 2, 2), "b1": (2, 2, 2, 2), "b2": (3, 4, 6, 3), "b3": (3, 4, 18, 3), "b4": (3, 8, 27, 3),
              "b5": (3, 6, 40, 3)}
# name -> (writer, the source config at full size, the same at the registry's test_kwargs widths, what the source
# file adds beside the deployed network)
CASES = {
    "bisenetv2": (mmseg_bisenetv2, {}, {}, ("auxiliary_head.",)),
    "bisenetv2_coincheung": (coincheung_bisenetv2, {}, {}, ("aux2.", "aux3.", "aux4.", "aux5_4.")),
    "ccnet_r50_v1c": (mmseg_ccnet, dict(layers=R50), dict(layers=R50, stem_channels=16, base=16, channels=128, aux=64),
                      ("auxiliary_head.",)),
    "ccnet_r101_v1c": (mmseg_ccnet, dict(layers=R101),
                       dict(layers=R101, stem_channels=16, base=16, channels=128, aux=64), ("auxiliary_head.",)),
    "pspnet_r18_v1c": (mmseg_pspnet, dict(layers=R18, channels=128, aux=64, basic_block=True),
                       dict(layers=R18, stem_channels=16, base=16, channels=32, aux=16, basic_block=True),
                       ("auxiliary_head.",)),
    "pspnet_r50_v1c": (mmseg_pspnet, dict(layers=R50),
                       dict(layers=R50, stem_channels=16, base=16, channels=128, aux=64), ("auxiliary_head.",)),
    "pspnet_r101_v1c": (mmseg_pspnet, dict(layers=R101),
                        dict(layers=R101, stem_channels=16, base=16, channels=128, aux=64), ("auxiliary_head.",)),
    **{f"segformer_{b}_mmseg": (mmseg_segformer, dict(embed_dims=32 if b == "b0" else 64, num_layers=layers),
                                dict(embed_dims=32 if b == "b0" else 64, num_layers=(2, 2, 2, 2)), ())
       for b, layers in MIT_LAYERS.items()},
}
# Parameters of the source's deployed network at 19 classes, summed over the shapes the writers give (none of
# the sources publishes a count for these models).
SOURCE_PARAMS = {"bisenetv2": 3_358_883, "bisenetv2_coincheung": 3_358_627, "ccnet_r50_v1c": 47_461_364,
                 "ccnet_r101_v1c": 66_453_492, "pspnet_r18_v1c": 12_641_267, "pspnet_r50_v1c": 46_610_803,
                 "pspnet_r101_v1c": 65_602_931,
                 "segformer_b0_mmseg": 3_720_051, "segformer_b1_mmseg": 13_683_155, "segformer_b2_mmseg": 24_728_019,
                 "segformer_b3_mmseg": 44_603_859, "segformer_b4_mmseg": 61_374_419, "segformer_b5_mmseg": 81_974_739}


def randomised(name: str, seed: int, **kwargs) -> torch.nn.Module:
    """A variant with every tensor away from its initial value (fresh BatchNorms are the identity, biases and
    CCNet's gamma 0), so that a tensor landing in the wrong place changes the output."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=19, **kwargs)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.1)
    return model.eval()


def save(tmp_path, name: str, s: SourceState, meta: str):
    path = tmp_path / f"{name}.pth"
    if meta == "mmseg 0.x":  # mmcv runner (tools/train.py 0.x): CLASSES, PALETTE, version, config text
        torch.save({"meta": {"CLASSES": CITYSCAPES, "PALETTE": PALETTE, "mmseg_version": "0.20.2",
                             "config": "model = dict(...)"}, "state_dict": s.state}, path)
    elif meta == "mmseg 1.x":  # mmengine Runner.save_checkpoint: dataset_meta, epoch/iter, cfg text
        torch.save({"meta": {"dataset_meta": {"classes": CITYSCAPES, "palette": PALETTE}, "epoch": 0, "iter": 160000,
                             "cfg": "model = dict(...)", "mmengine_version": "0.10.4"}, "state_dict": s.state}, path)
    else:  # CoinCheung: torch.save(net.module.state_dict(), ...) (tools/train_amp.py)
        torch.save(s.state, path)
    return path


def small_source(cases: dict, name: str):
    """The case's writer run on a randomised ``name`` at the registry's test widths: (source model, written
    state, those widths, the key prefix the source holds that we leave out). Every one of our tensors must
    have been written somewhere."""
    writer, _, small, extra = cases[name]
    kwargs = get_spec(name).test_kwargs
    source_model = randomised(name, 0, **kwargs)
    s = writer(source_model, 19, **small)
    assert s.used == set(s.ours)
    return source_model, s, kwargs, extra


def assert_source_count(cases: dict, name: str, num_classes: int, expected: int) -> None:
    """At full width (shapes only), the source network the writer lays out from the config has the parameters
    of the registered variant, and every one of our tensors has its source tensor."""
    writer, full, _, extra = cases[name]
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    s = writer(model, num_classes, **full)
    assert s.used == set(s.ours)
    assert s.parameters(skip=extra) == count_parameters(model) == expected


def round_trip(tmp_path, name: str, s: SourceState, source_model: torch.nn.Module, meta: str, **kwargs):
    """Save ``s`` in the ``meta`` layout, read it, import it into a freshly randomised ``name`` (``kwargs``: its
    widths) and require the source model's outputs exactly; returns the imported model, the report and the
    images they were compared on."""
    checkpoint = read_checkpoint(save(tmp_path, name, s, meta))
    if meta != "plain":
        assert (checkpoint.layout, checkpoint.classes, checkpoint.palette) == ("mmseg", list(CITYSCAPES), PALETTE)
    imported = randomised(name, 1, **kwargs)
    report = import_weights(imported, name, checkpoint)
    torch.manual_seed(2)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, result = source_model(images), imported(images)
    assert torch.isfinite(expected).all() and torch.equal(result, expected)
    return imported, report, images


@pytest.mark.parametrize("name, meta", [("bisenetv2", "mmseg 0.x"), ("bisenetv2", "mmseg 1.x"),
                                        ("bisenetv2_coincheung", "plain"), ("ccnet_r50_v1c", "mmseg 0.x"),
                                        ("ccnet_r101_v1c", "mmseg 0.x"), ("pspnet_r18_v1c", "mmseg 1.x"),
                                        ("pspnet_r50_v1c", "mmseg 0.x"),
                                        ("pspnet_r101_v1c", "mmseg 0.x"), ("segformer_b0_mmseg", "mmseg 1.x"),
                                        ("segformer_b2_mmseg", "mmseg 0.x")])
def test_source_checkpoint_imports_with_the_same_outputs(name, meta, tmp_path):
    writer, _, small, extra = CASES[name]
    kwargs = get_spec(name).test_kwargs
    source_model = randomised(name, 0, **kwargs)
    s = writer(source_model, 19, **small)
    dropped = training_only_keys(source_model) if name == "bisenetv2_coincheung" else set()
    assert s.used == set(s.ours) - dropped  # the writer put every one of our tensors somewhere

    imported, report, _ = round_trip(tmp_path, name, s, source_model, meta, **kwargs)
    assert report.names == ("coincheung" if meta == "plain" else "mmseg")
    assert report.loaded == len(s.used)
    assert sorted(report.left_out) == sorted(k for k in s.state if k.startswith(extra) and name.endswith("coincheung"))
    squeezed = [k for k in s.ours if k.endswith(("mlp.fc1.weight", "mlp.fc2.weight"))]  # mmseg's MixFFN 1x1 convs
    assert sorted(report.reshaped) == (["head.attention.gamma"] if name.startswith("ccnet") else
                                       sorted(squeezed) if name.startswith("segformer") else [])
    assert report.not_loaded == sorted(dropped)
    assert count_parameters(imported) == s.parameters(skip=extra)


@pytest.mark.parametrize("name", sorted(CASES))
def test_parameter_count_is_the_source_configs(name):
    """At full width (shapes only), the source network the writer lays out from the config has the parameters
    of the registered variant, and every one of our tensors has its source tensor."""
    writer, full, _, extra = CASES[name]
    with torch.device("meta"):
        model = create_model(name, num_classes=19)
    s = writer(model, 19, **full)
    dropped = training_only_keys(model) if name == "bisenetv2_coincheung" else set()
    assert s.used == set(s.ours) - dropped
    assert s.parameters(skip=extra) == count_parameters(model) == SOURCE_PARAMS[name]


def test_a_zoo_file_on_the_64_wide_stem_names_the_shapes(tmp_path):
    """mmseg's ResNetV1c stem is 32-32-64; ccnet's is 64-64-128: the table maps the names and the shapes say why
    the file does not fit, in one line."""
    s = mmseg_ccnet(randomised("ccnet_r50_v1c", 0, **get_spec("ccnet_r50_v1c").test_kwargs), 19,
                    **CASES["ccnet_r50_v1c"][2])
    checkpoint = read_checkpoint(save(tmp_path, "ccnet", s, "mmseg 0.x"))
    with pytest.raises(UserError) as error:
        import_weights(create_model("ccnet", num_classes=19, **get_spec("ccnet").test_kwargs), "ccnet", checkpoint)
    message = str(error.value)
    assert "\n" not in message and "mmseg key names" in message
    assert "shape mismatch: backbone.stem.0.0.weight (8, 3, 3, 3) vs (16, 3, 3, 3)" in message


def test_another_architectures_mmseg_file_is_one_line_naming_keys(tmp_path):
    s = mmseg_bisenetv2(randomised("bisenetv2", 0), 19)
    checkpoint = read_checkpoint(save(tmp_path, "bisenetv2", s, "mmseg 0.x"))
    with pytest.raises(UserError) as error:
        import_weights(create_model("pspnet_r50_v1c", num_classes=19), "pspnet_r50_v1c", checkpoint)
    message = str(error.value)
    assert "\n" not in message and "do not fit pspnet_r50_v1c: missing keys: backbone.stem.0.0.weight" in message
    assert "unexpected keys: backbone.detail.detail_branch.0.0.conv.weight" in message


def test_coincheung_aggregation_upsamples_by_nearest_x4():
    """CoinCheung's BGALayer.forward (lib/models/bisenetv2.py): right1 and the gated low branch go through
    nn.Upsample(scale_factor=4), whose mode is nearest; written here in its own names on the variant's layers."""
    torch.manual_seed(0)
    bga = randomised("bisenetv2_coincheung", 0).backbone.aggregation
    left1, left2, right1, right2 = bga.detail_keep, bga.detail_down, bga.semantic_up, bga.semantic_keep
    up = torch.nn.Upsample(scale_factor=4)
    x_d, x_s = torch.randn(1, 128, 16, 24), torch.randn(1, 128, 4, 6)
    with torch.no_grad():
        left = left1(x_d) * torch.sigmoid(up(right1(x_s)))
        right = up(left2(x_d) * torch.sigmoid(right2(x_s)))
        assert torch.equal(bga(x_d, x_s), bga.fuse(left + right))
        bga.upsample = "bilinear"  # bisenetv2's, which a CoinCheung file would be run with otherwise
        assert not torch.allclose(bga(x_d, x_s), bga.fuse(left + right), atol=1e-3)


def test_export_import_reports_an_mmseg_file(tmp_path):
    s = mmseg_bisenetv2(randomised("bisenetv2", 0), 19)
    path = save(tmp_path, "bisenetv2", s, "mmseg 0.x")
    result = cli("import", str(path), "--model", "bisenetv2", "--out", str(tmp_path / "w.pt"))
    assert result.returncode == 0, result.stderr
    assert "bisenetv2, 19 classes (road, sidewalk, building, wall, ...)" in result.stdout
    assert "detected: mmseg checkpoint, mmseg key names" in result.stdout
    assert f"mapped: {len(s.state)} tensors" in result.stdout
    assert read_checkpoint(tmp_path / "w.pt").palette == PALETTE


# ------------------------------------------------------------- SegFormer: what the table's two mechanisms mean

def test_a_tuple_replacement_splits_and_reversed_blocks_reorder():
    """models/keymaps.py: a tuple of replacements splits the source tensor along dim 0 in equal parts (here
    into q and kv's two parts, which concatenate again); reversed_blocks reverses a dim's blocks."""
    from models.keymaps import KeyMap, apply_key_map

    packed, fuse = torch.arange(6.0).reshape(6, 1), torch.arange(8.0).reshape(1, 8)
    table = KeyMap("test", ((r"in_proj", ("q", "kv#0", "kv#1")), (r"fuse", "fuse")),
                   reversed_blocks=((r"fuse", 1, 4),))
    mapped = apply_key_map({"in_proj": packed, "fuse": fuse}, table)
    assert mapped.state["q"].flatten().tolist() == [0, 1] and mapped.state["kv"].flatten().tolist() == [2, 3, 4, 5]
    assert mapped.state["fuse"].flatten().tolist() == [6, 7, 4, 5, 2, 3, 0, 1]
    assert mapped.renamed == 2 and mapped.fused == ["kv"] and mapped.reordered == ["fuse"]


@pytest.fixture(scope="module")
def mmseg_segformer_b0(tmp_path_factory):
    """segformer_b0_mmseg imported from an mmseg-layout file, and that file's tensors."""
    s = mmseg_segformer(randomised("segformer_b0_mmseg", 0), 19)
    checkpoint = read_checkpoint(save(tmp_path_factory.mktemp("segformer"), "segformer", s, "mmseg 1.x"))
    imported = randomised("segformer_b0_mmseg", 1)
    import_weights(imported, "segformer_b0_mmseg", checkpoint)
    return imported, s.state


def test_mmseg_attention_is_torch_multihead_attention_on_the_same_tensors(mmseg_segformer_b0):
    """mmseg's EfficientMultiheadAttention runs nn.MultiheadAttention(query=x, key=x_kv, value=x_kv) with its
    packed in_proj; ours, loaded through the table, computes the same (stage 1: two heads, reduction 4)."""
    imported, state = mmseg_segformer_b0
    attn = imported.backbone.stages[1].blocks[0].attn
    mha = torch.nn.MultiheadAttention(64, 2, batch_first=True).eval()
    prefix = "backbone.layers.1.1.0.attn.attn."
    mha.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    torch.manual_seed(3)
    x, h, w = torch.randn(2, 16 * 12, 64), 16, 12
    with torch.no_grad():
        x_kv = attn.norm(attn.sr(x.transpose(1, 2).reshape(2, 64, h, w)).flatten(2).transpose(1, 2))
        assert torch.allclose(attn(x, h, w), mha(x, x_kv, x_kv, need_weights=False)[0], atol=1e-5)


def test_mmseg_head_concatenates_shallowest_first_on_the_same_tensors(mmseg_segformer_b0):
    """SegformerHead.forward in the file's own tensors: each stage through its ConvModule, resized to stride 4,
    torch.cat(outs) in stage order, fusion_conv, conv_seg; ours (fuse columns reversed on import) agrees."""
    imported, state = mmseg_segformer_b0

    def conv_module(x, key):  # conv (no bias), BN (eval), ReLU
        x = F.conv2d(x, state[f"{key}.conv.weight"])
        return F.relu(F.batch_norm(x, state[f"{key}.bn.running_mean"], state[f"{key}.bn.running_var"],
                                   state[f"{key}.bn.weight"], state[f"{key}.bn.bias"], False, 0.0, 1e-5))

    torch.manual_seed(4)
    with torch.no_grad():
        features = imported.backbone(torch.randn(1, 3, 64, 96))
        outs = [F.interpolate(conv_module(x, f"decode_head.convs.{i}"), size=features[0].shape[2:], mode="bilinear",
                              align_corners=False) for i, x in enumerate(features)]
        theirs = F.conv2d(conv_module(torch.cat(outs, dim=1), "decode_head.fusion_conv"),
                          state["decode_head.conv_seg.weight"], state["decode_head.conv_seg.bias"])
        assert torch.allclose(imported.head(features), theirs, atol=1e-5)


def test_mmseg_variants_use_mmseg_layernorm_eps():
    """mmseg's MixVisionTransformer: norm_cfg=dict(type='LN', eps=1e-6) on every LayerNorm."""
    model = create_model("segformer_b0_mmseg", num_classes=19)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and {m.eps for m in norms} == {1e-6}
    assert {m.eps for m in create_model("segformer_b0").modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
