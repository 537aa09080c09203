"""mmsegmentation checkpoints of the dilated-ResNet context families (Non-local, GCNet, DANet, ANN, PSANet, EncNet)
and of its FCN, into their ``_v1c`` variants (each family's MMSEG_KEYS table).

As in tests/test_checkpoints_mmseg.py, whose helpers these tests use: each writer spells out mmseg's key names and
shapes from its code and configs (cited at each writer), key by key and independently of the tables, filled with
the tensors of one of our randomly initialised models; imported into a fresh model the file must give that
model's outputs exactly, and the parameters summed over the written shapes (mmseg's deployed network) must be the
imported model's. No parameter count for these models is published (mmseg's model zoo lists memory, speed and
mIoU only): the counts below are the writers' sums at full size, recorded."""
from __future__ import annotations

import pytest
import torch
from test_checkpoints_mmseg import (
    R18,
    R50,
    R101,
    SourceState,
    mmseg_fcn_aux,
    mmseg_resnet_v1c,
    randomised,
    round_trip,
)

from models import count_parameters, create_model, get_spec


def fcn_head_convs(s: SourceState, cin: int, channels: int) -> None:
    """FCNHead(num_convs=2, concat_input=True) (mmseg fcn_head.py 0b5f81f), the frame of NLHead and GCHead:
    convs.0 (3x3, cin -> channels), convs.1 (3x3), conv_cat (3x3 on cat([x, output])); ours ContextHead."""
    s.conv_module("decode_head.convs.0", "head.reduce", cin, channels, 3)
    s.conv_module("decode_head.convs.1", "head.project", channels, channels, 3)
    s.conv_module("decode_head.conv_cat", "head.fuse", cin + channels, channels, 3)


def conv_seg(s: SourceState, num_classes: int, channels: int) -> None:
    """BaseDecodeHead.conv_seg: the 1x1 classifier (with bias) after dropout."""
    s.conv("decode_head.conv_seg", "head.classifier", channels, num_classes, 1, bias=True)


def mmseg_fcn(model, num_classes, layers, stem_channels=64, base=64, channels=512, aux=256,
              basic_block=False) -> SourceState:
    """configs/_base_/models/fcn_r50-d8.py (2fc821e): ResNetV1c, FCNHead(in_channels=2048, channels=512,
    num_convs=2, concat_input=True), auxiliary FCNHead 1024 -> 256. R-18 (configs/fcn/fcn_r18-d8_512x1024_80k_
    cityscapes.py, 57ac1a0): depth=18 (BasicBlock), decode_head 512 -> 128, auxiliary_head 256 -> 64."""
    s = SourceState(model)
    c = mmseg_resnet_v1c(s, layers, stem_channels, base, basic_block=basic_block)
    fcn_head_convs(s, c, channels)
    conv_seg(s, num_classes, channels)
    mmseg_fcn_aux(s, num_classes, c // 2, aux)
    return s


def mmseg_nonlocal(model, num_classes, layers, stem_channels=64, base=64, channels=512, aux=256) -> SourceState:
    """configs/_base_/models/nonlocal_r50-d8.py (3f8d34e): NLHead(channels=512, reduction=2, use_scale,
    embedded_gaussian) (nl_head.py 1cd613f: FCNHead num_convs=2 around nl_block), mmcv NonLocal2d
    (cnn/bricks/non_local.py 0198abf): g, theta, phi ConvModules without norm (conv with bias), conv_out a
    ConvModule with BN (conv without bias)."""
    s = SourceState(model)
    c = mmseg_resnet_v1c(s, layers, stem_channels, base)
    fcn_head_convs(s, c, channels)
    for name in ("g", "theta", "phi"):
        s.conv(f"decode_head.nl_block.{name}.conv", f"head.attention.{name}", channels, channels // 2, 1, bias=True)
    s.conv_module("decode_head.nl_block.conv_out", "head.attention.conv_out", channels // 2, channels, 1)
    conv_seg(s, num_classes, channels)
    mmseg_fcn_aux(s, num_classes, c // 2, aux)
    return s


def mmseg_gcnet(model, num_classes, layers, stem_channels=64, base=64, channels=512, aux=256) -> SourceState:
    """configs/_base_/models/gcnet_r50-d8.py (3f8d34e): GCHead(channels=512, ratio=1/4, pooling 'att',
    fusion ('channel_add',)) (gc_head.py 1cd613f: FCNHead num_convs=2 around gc_block), mmcv ContextBlock
    (cnn/bricks/context_block.py 1d7b818): conv_mask (C -> 1), channel_add_conv = (conv C -> C/4,
    LayerNorm([C/4, 1, 1]), ReLU, conv C/4 -> C), every conv with bias."""
    s = SourceState(model)
    c = mmseg_resnet_v1c(s, layers, stem_channels, base)
    fcn_head_convs(s, c, channels)
    planes = channels // 4
    s.conv("decode_head.gc_block.conv_mask", "head.attention.mask", channels, 1, 1, bias=True)
    s.conv("decode_head.gc_block.channel_add_conv.0", "head.attention.transform.0", channels, planes, 1, bias=True)
    for p in ("weight", "bias"):
        s.put(f"decode_head.gc_block.channel_add_conv.1.{p}", (planes, 1, 1), s.take(f"head.attention.transform.1.{p}"))
    s.conv("decode_head.gc_block.channel_add_conv.3", "head.attention.transform.3", planes, channels, 1, bias=True)
    conv_seg(s, num_classes, channels)
    mmseg_fcn_aux(s, num_classes, c // 2, aux)
    return s


def mmseg_danet(model, num_classes, layers, stem_channels=64, base=64, channels=512, pam_channels=64,
                aux=256) -> SourceState:
    """configs/_base_/models/danet_r50-d8.py (3f8d34e): DAHead(channels=512, pam_channels=64) (da_head.py 1cd613f):
    pam_in_conv / cam_in_conv, pam_out_conv / cam_out_conv ConvModules 3x3; PAM a SelfAttentionBlock
    (utils/self_attention_block.py 50546da) with plain convs key_project, query_project (C -> 64) and
    value_project (C -> C), no out_project; PAM and CAM gamma = mmcv Scale(0), 0-dim; pam_conv_seg and
    cam_conv_seg, the branches' training-only classifiers."""
    s = SourceState(model)
    c = mmseg_resnet_v1c(s, layers, stem_channels, base)
    for branch in ("pam", "cam"):
        s.conv_module(f"decode_head.{branch}_in_conv", f"head.{branch}_in", c, channels, 3)
        s.conv_module(f"decode_head.{branch}_out_conv", f"head.{branch}_out", channels, channels, 3)
        s.put(f"decode_head.{branch}.gamma.scale", (), s.take(f"head.{branch}.gamma").reshape(()))
        s.extra(f"decode_head.{branch}_conv_seg.weight", (num_classes, channels, 1, 1))
        s.extra(f"decode_head.{branch}_conv_seg.bias", (num_classes,))
    for name, out in (("query", pam_channels), ("key", pam_channels), ("value", channels)):
        s.conv(f"decode_head.pam.{name}_project", f"head.pam.{name}", channels, out, 1, bias=True)
    conv_seg(s, num_classes, channels)
    mmseg_fcn_aux(s, num_classes, c // 2, aux)
    return s


def mmseg_ann(model, num_classes, layers, stem_channels=64, base=64, channels=512, project=256,
              aux=256) -> SourceState:
    """configs/_base_/models/ann_r50-d8.py (3f8d34e): ANNHead(in_channels=[1024, 2048], channels=512,
    project_channels=256, query_scales=(1,), key_pool_scales=(1, 3, 6, 8)) (ann_head.py 034a5c8): fusion (AFNB:
    stages.0 with query_project from 2048 and key_project from 1024, ConvModules 1x1; value_project 1024 -> 256
    and out_project 256 -> 2048, plain convs; bottleneck 1x1 ConvModule 4096 -> 2048 without activation),
    bottleneck (3x3 ConvModule 2048 -> 512), context (APNB: stages.0 with one key_project that is also
    query_project, value_project, out_project; bottleneck 1024 -> 512)."""
    s = SourceState(model)
    high = mmseg_resnet_v1c(s, layers, stem_channels, base)
    low = high // 2
    for block, query_in, key_in, out in (("fusion", high, low, high), ("context", channels, channels, channels)):
        mm, ours = f"decode_head.{block}.stages.0", f"head.{block}.attention"
        s.conv_module(f"{mm}.query_project", f"{ours}.query", query_in, project, 1)
        s.conv_module(f"{mm}.key_project", f"{ours}.key", key_in, project, 1)
        s.conv(f"{mm}.value_project", f"{ours}.value", key_in, project, 1, bias=True)
        s.conv(f"{mm}.out_project", f"{ours}.out", project, out, 1, bias=True)
        s.conv_module(f"decode_head.{block}.bottleneck", f"head.{block}.fuse", out + query_in, out, 1)
    s.conv_module("decode_head.bottleneck", "head.reduce", high, channels, 3)
    conv_seg(s, num_classes, channels)
    mmseg_fcn_aux(s, num_classes, low, aux)
    return s


def mmseg_psanet(model, num_classes, layers, stem_channels=64, base=64, channels=512, mask_size=97,
                 aux=256) -> SourceState:
    """configs/_base_/models/psanet_r50-d8.py (3f8d34e): PSAHead(channels=512, mask_size=(97, 97),
    bi-direction, compact=False, shrink_factor=2) (psa_head.py 3f8d34e): reduce / reduce_p ConvModules 1x1,
    attention / attention_p = (ConvModule 1x1, conv to mask_h * mask_w without bias), proj (ConvModule 1x1
    1024 -> 2048), bottleneck (ConvModule 3x3 4096 -> 512)."""
    s = SourceState(model)
    c = mmseg_resnet_v1c(s, layers, stem_channels, base)
    for suffix, ours in (("", "head.collect"), ("_p", "head.distribute")):
        s.conv_module(f"decode_head.reduce{suffix}", f"{ours}.reduce", c, channels, 1)
        s.conv_module(f"decode_head.attention{suffix}.0", f"{ours}.attention.0", channels, channels, 1)
        s.conv(f"decode_head.attention{suffix}.1", f"{ours}.attention.1", channels, mask_size * mask_size, 1)
    s.conv("decode_head.proj.conv", "head.project.0", 2 * channels, c, 1)
    s.bn("decode_head.proj.bn", "head.project.1", c)
    s.conv_module("decode_head.bottleneck", "head.bottleneck", 2 * c, channels, 3)
    conv_seg(s, num_classes, channels)
    mmseg_fcn_aux(s, num_classes, c // 2, aux)
    return s


def mmseg_encnet(model, num_classes, layers, stem_channels=64, base=64, channels=512, num_codes=32,
                 aux=256) -> SourceState:
    """configs/_base_/models/encnet_r50-d8.py (3f8d34e): EncHead(channels=512, num_codes=32, use_se_loss,
    add_lateral=False) (enc_head.py 28a8873): bottleneck (3x3 ConvModule on stage 4), enc_module: encoding_project
    (1x1 ConvModule), encoding = (Encoding: codewords (K, C), scale (K,), utils/encoding.py 3f8d34e; BN1d(K);
    ReLU), fc = (Linear C -> C, Sigmoid); se_layer (Linear C -> classes, training only)."""
    s = SourceState(model)
    c = mmseg_resnet_v1c(s, layers, stem_channels, base)
    s.conv_module("decode_head.bottleneck", "head.bottleneck", c, channels, 3)
    enc, ours = "decode_head.enc_module", "head.context_encoding"
    s.conv_module(f"{enc}.encoding_project", f"{ours}.project", channels, channels, 1)
    s.put(f"{enc}.encoding.0.codewords", (num_codes, channels), s.take(f"{ours}.encoding.0.codewords"))
    s.put(f"{enc}.encoding.0.scale", (num_codes,), s.take(f"{ours}.encoding.0.scale"))
    s.bn(f"{enc}.encoding.1", f"{ours}.encoding.1", num_codes)
    s.put(f"{enc}.fc.0.weight", (channels, channels), s.take(f"{ours}.fc.0.weight"))
    s.put(f"{enc}.fc.0.bias", (channels,), s.take(f"{ours}.fc.0.bias"))
    conv_seg(s, num_classes, channels)
    s.put("decode_head.se_layer.weight", (num_classes, channels), s.take("aux_heads.1.weight"))
    s.put("decode_head.se_layer.bias", (num_classes,), s.take("aux_heads.1.bias"))
    mmseg_fcn_aux(s, num_classes, c // 2, aux)
    return s


# The registry's test_kwargs in mmseg's terms: base width 16, stem 16-16-32 (stem_channels 32), head 128 wide.
SMALL = {"stem_channels": 32, "base": 16, "channels": 128, "aux": 64}
WRITERS = {"fcn": (mmseg_fcn, {}), "nonlocal": (mmseg_nonlocal, {}), "gcnet": (mmseg_gcnet, {}),
           "danet": (mmseg_danet, {"pam_channels": 16}), "ann": (mmseg_ann, {"project": 64}),
           "psanet": (mmseg_psanet, {"mask_size": 7}), "encnet": (mmseg_encnet, {})}
# What the files hold beside the deployed network: the auxiliary FCN head (loaded into aux_heads), DANet's
# per-branch classifiers (left out), EncNet's SE layer (loaded into aux_heads); and ANN's second name for its
# shared APNB projection, whose parameters are counted once.
TRAINING_ONLY = ("auxiliary_head.", "decode_head.pam_conv_seg.", "decode_head.cam_conv_seg.", "decode_head.se_layer.")
SHARED = ("decode_head.context.stages.0.query_project.",)
LEFT_OUT = ("decode_head.pam_conv_seg.", "decode_head.cam_conv_seg.")
# Variants for one dataset's configs: what the config changes in the writer's full-size arguments (the small ones
# come from test_kwargs, as for every name). psanet_r50-d8_4xb4-160k_ade20k-512x512.py (e663aca) and its r101 file
# (152f43b): decode_head mask_size=(66, 66); their 150 classes come with the file, the counts below are at 19.
DATASET_VARIANTS = {"psanet_r50_v1c_ade20k": {"mask_size": 66}, "psanet_r101_v1c_ade20k": {"mask_size": 66}}
# The R-18 files (fcn_r18-d8_*: configs/fcn/fcn_r18-d8_512x1024_80k_cityscapes.py, 57ac1a0): BasicBlocks, heads
# 128 and 64 wide at full size; the small ones a quarter of that, as fcn.py's _NARROW_R18 (stem 8-8-16).
R18_VARIANTS = {"fcn_r18_v1c": ({"channels": 128, "aux": 64},
                                {"stem_channels": 16, "base": 16, "channels": 32, "aux": 16})}
NAMES = ([f"{family}_{depth}_v1c" for family in WRITERS for depth in ("r50", "r101")] + list(DATASET_VARIANTS)
         + list(R18_VARIANTS))
# Parameters of mmseg's deployed network at 19 classes, summed over the shapes the writers give.
SOURCE_PARAMS = {
    "fcn_r18_v1c": 12_673_523, "fcn_r50_v1c": 47_133_043, "fcn_r101_v1c": 66_125_171,
    "nonlocal_r50_v1c": 47_659_123, "nonlocal_r101_v1c": 66_651_251,
    "gcnet_r50_v1c": 47_265_524, "gcnet_r101_v1c": 66_257_652,
    "danet_r50_v1c": 47_462_389, "danet_r101_v1c": 66_454_517,
    "ann_r50_v1c": 43_863_923, "ann_r101_v1c": 62_856_051,
    "psanet_r50_v1c": 56_774_003, "psanet_r101_v1c": 75_766_131,
    "psanet_r50_v1c_ade20k": 51_599_731, "psanet_r101_v1c_ade20k": 70_591_859,  # 2 x 512 x (97^2 - 66^2) fewer
    "encnet_r50_v1c": 33_517_523, "encnet_r101_v1c": 52_509_651,
}


def write(name: str, model: torch.nn.Module, full: bool) -> SourceState:
    family, depth = name.split("_")[:2]
    writer, small = WRITERS[family]
    if name in R18_VARIANTS:
        return writer(model, 19, layers=R18, basic_block=True, **R18_VARIANTS[name][0 if full else 1])
    kwargs = DATASET_VARIANTS.get(name, {}) if full else {**SMALL, **small}
    return writer(model, 19, layers=R50 if depth == "r50" else R101, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_mmseg_checkpoint_imports_with_the_same_outputs(name, tmp_path):
    kwargs = get_spec(name).test_kwargs
    source_model = randomised(name, 0, **kwargs)
    s = write(name, source_model, full=False)
    assert s.used == set(s.ours)  # the writer put every one of our tensors somewhere, the aux heads' too

    meta = "mmseg 0.x" if name.split("_")[1] in ("r18", "r50") else "mmseg 1.x"
    imported, report, images = round_trip(tmp_path, name, s, source_model, meta, **kwargs)
    assert report.names == "mmseg" and report.loaded == len(s.used)
    assert sorted(report.left_out) == sorted(k for k in s.state if k.startswith(LEFT_OUT))
    assert sorted(report.reshaped) == (["head.cam.gamma", "head.pam.gamma"] if name.startswith("danet") else [])
    assert report.not_loaded == []
    with torch.no_grad():
        _, aux_expected = source_model(images, return_aux=True)
        _, aux_result = imported(images, return_aux=True)
    assert all(torch.equal(a, b) for a, b in zip(aux_result, aux_expected))  # FCN (and EncNet's SE) heads too
    assert count_parameters(imported) == s.parameters(skip=TRAINING_ONLY + SHARED)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_the_mmseg_configs(name):
    """At full width (shapes only), the network the writer lays out from mmseg's config has the parameters of
    the registered variant, and every one of our tensors has its source tensor."""
    with torch.device("meta"):
        model = create_model(name, num_classes=19)
    s = write(name, model, full=True)
    assert s.used == set(s.ours)
    assert s.parameters(skip=TRAINING_ONLY + SHARED) == count_parameters(model) == SOURCE_PARAMS[name]


def test_ann_file_holds_the_shared_projection_under_both_names():
    """mmseg's APNB assigns query_project = key_project: a state dict holds the module under both names, ours
    too (AsymmetricAttention.query is .key), so both load and stay one module."""
    s = write("ann_r50_v1c", randomised("ann_r50_v1c", 0, **get_spec("ann_r50_v1c").test_kwargs), full=False)
    prefix = "decode_head.context.stages.0"
    assert torch.equal(s.state[f"{prefix}.query_project.conv.weight"], s.state[f"{prefix}.key_project.conv.weight"])
    model = create_model("ann_r50_v1c", num_classes=19)
    assert model.head.context.attention.query is model.head.context.attention.key
