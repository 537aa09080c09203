"""More mmsegmentation model-zoo layouts (the families' MMSEG_KEYS tables): OCRNet on HRNetV2, BiSeNetV1,
PointRend, ICNet, U-Net, and the import error that names the variant a file fits.

As in tests/test_checkpoints_mmseg.py (whose SourceState, randomised and save this file uses), each writer spells
out mmseg's key names and shapes from its code and configs (cited at each writer), key by key and independently
of the tables, filled with the tensors of one of our randomly initialised models; imported into a fresh model the
file must give that model's outputs exactly, and the parameter count summed over the written shapes (the source's
deployed network) must be the imported model's. Where mmseg's code fixes a width that our test_kwargs shrink
(HRNet's 64-wide stem), the writer takes it as an argument so that the round trip runs at the small size; the
full-size count uses mmseg's value.

ICNet: mmseg's backbones/icnet.py and necks/ic_neck.py are another network than icnet_r50 (a PSPNet pyramid that
concatenates with 512-wide reductions and a 3x3 bottleneck, conv_sub2/conv_sub4 1x1 convs, ReLU on each CFF
branch, a ceil_mode max-pool, scale_factor=0.5 resizes, ResNetV1c, an FCN head), built as icnet_r{50,101}_mmseg from
configs/_base_/models/icnet_r50-d8.py; test_mmseg_icnet_runs_mmseg_forward writes mmseg's forward out on its layers.
The R-18 files (icnet_r18-d8) are icnet_r18_mmseg: mmseg's BasicBlock leaves conv2 undilated (resnet.py 03b0197),
which our BasicBlock does with dilate_conv2=False (tests/test_backbones.py compares it with mmseg's forward).

U-Net: mmseg's UNet (backbones/unet.py) has BatchNorm, up-samples by bilinear x2 and a 1x1 conv-BN-ReLU where
unet_padded has a transposed conv, and puts an FCN head on the last decoder map: unet_mmseg, from
configs/_base_/models/fcn_unet_s5-d16.py (the PSPNet- and DeepLabV3-headed unet-s5-d16 files are not mapped).

DPT and Segmenter: tests/test_checkpoints_mmseg_vit.py (dpt_vit_b16_mmseg, segmenter_vit_{t,s,b,l}_mmseg)."""
from __future__ import annotations

import pytest
import torch
from test_checkpoints_mmseg import (
    R18,
    R50,
    R101,
    SourceState,
    mmseg_ccnet,
    mmseg_fcn_aux,
    mmseg_fcn_head,
    mmseg_resnet_v1c,
    randomised,
    round_trip,
    small_source,
    assert_source_count,
    save,
)

from export.compile.checkpoints import read_checkpoint
from export.compile.weights import import_weights
from export.errors import UserError
from models import count_parameters, create_model, get_spec

# ------------------------------------------------------------------------------------ the sources' layouts


def conv1d_module(s: SourceState, key: str, ours: str, cin: int, cout: int) -> None:
    """An mmcv ConvModule (1x1, BN) run on a (B, C, K, 1) map; ours a ConvNormAct1d (Conv1d, BatchNorm1d)."""
    s.put(f"{key}.conv.weight", (cout, cin, 1, 1), s.take(f"{ours}.0.weight").reshape(cout, cin, 1, 1))
    s.bn(f"{key}.bn", f"{ours}.1", cout)


def mmseg_hrnet(s: SourceState, width: int, depths=(4, 4, 4, 4), num_modules=(1, 4, 3), stem: int = 64,
                stage1: int = 64) -> list[int]:
    """mmseg/models/backbones/hrnet.py (034a5c8) with configs/_base_/models/ocrnet_hr18.py's ``extra`` (57ac1a0):
    conv1/bn1, conv2/bn2 (3x3 s2, 64 wide in mmseg's code: ``stem``); layer1 of mmseg's resnet Bottlenecks
    (``stage1`` = num_channels 64, downsample on the first); transitionN.{i} = (conv, bn, relu) for a width change,
    (((conv s2, bn, relu))) for the new branch; stageN.{m} = HRModule: branches.{b}.{k} BasicBlocks (conv1, bn1,
    conv2, bn2), fuse_layers.{i}.{j} = (1x1 conv, bn, Upsample) from a coarser branch, ((3x3 s2 conv, bn[, relu])
    x (i - j)) from a finer one. Returns the four branch widths."""
    s.conv("backbone.conv1", "backbone.stem.0.0", 3, stem, 3)
    s.bn("backbone.bn1", "backbone.stem.0.1", stem)
    s.conv("backbone.conv2", "backbone.stem.1.0", stem, stem, 3)
    s.bn("backbone.bn2", "backbone.stem.1.1", stem)
    for k in range(depths[0]):
        cin = stem if k == 0 else 4 * stage1
        for n, (ci, co, ks) in enumerate(((cin, stage1, 1), (stage1, stage1, 3), (stage1, 4 * stage1, 1)), 1):
            s.conv(f"backbone.layer1.{k}.conv{n}", f"backbone.layer1.{k}.conv{n}.0", ci, co, ks)
            s.bn(f"backbone.layer1.{k}.bn{n}", f"backbone.layer1.{k}.conv{n}.1", co)
        if k == 0 and cin != 4 * stage1:
            s.conv("backbone.layer1.0.downsample.0", "backbone.layer1.0.downsample.0", cin, 4 * stage1, 1)
            s.bn("backbone.layer1.0.downsample.1", "backbone.layer1.0.downsample.1", 4 * stage1)
    previous = [4 * stage1]
    for stage, (depth, modules) in enumerate(zip(depths[1:], num_modules), start=2):
        widths = [width * 2**b for b in range(stage)]
        t = f"backbone.transition{stage - 1}"
        for i, c in enumerate(widths):
            if i < len(previous) and c != previous[i]:
                s.conv(f"{t}.{i}.0", f"{t}.{i}.0", previous[i], c, 3)
                s.bn(f"{t}.{i}.1", f"{t}.{i}.1", c)
            elif i >= len(previous):
                s.conv(f"{t}.{i}.0.0", f"{t}.{i}.0.0", previous[-1], c, 3)
                s.bn(f"{t}.{i}.0.1", f"{t}.{i}.0.1", c)
        for m in range(modules):
            mm = f"backbone.stage{stage}.{m}"
            for b, c in enumerate(widths):
                for k in range(depth):
                    for n in (1, 2):
                        s.conv(f"{mm}.branches.{b}.{k}.conv{n}", f"{mm}.branches.{b}.{k}.conv{n}.0", c, c, 3)
                        s.bn(f"{mm}.branches.{b}.{k}.bn{n}", f"{mm}.branches.{b}.{k}.conv{n}.1", c)
            for i, ci in enumerate(widths):
                for j, cj in enumerate(widths):
                    f = f"{mm}.fuse_layers.{i}.{j}"
                    if j > i:
                        s.conv(f"{f}.0", f"{f}.0", cj, ci, 1)
                        s.bn(f"{f}.1", f"{f}.1", ci)
                    for k in range(i - j):
                        co = ci if k == i - j - 1 else cj
                        s.conv(f"{f}.{k}.0", f"{f}.{k}.0", cj, co, 3)
                        s.bn(f"{f}.{k}.1", f"{f}.{k}.1", co)
        previous = widths
    return previous


def mmseg_ocrnet(model, num_classes, width=18, depths=(4, 4, 4, 4), num_modules=(1, 4, 3), stem=64, stage1=64,
                 channels=512, ocr_channels=256) -> SourceState:
    """configs/_base_/models/ocrnet_hr18.py (57ac1a0; hr48: configs/ocrnet/ocrnet_hr48_4xb2-80k_cityscapes-
    512x1024.py, hr18s: ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py, 3f8d34e): decode_head.0 an FCNHead
    (resize_concat, one 1x1 ConvModule keeping the width, conv_seg), decode_head.1 the OCRHead (decode_heads/
    ocr_head.py 168c883: bottleneck 3x3 ConvModule to 512; object_context_block = SelfAttentionBlock
    (models/utils/self_attention_block.py 50546da) with key_project and query_project two 1x1 ConvModules,
    value_project and out_project one, and its bottleneck 1x1 on the concatenation; conv_seg)."""
    s = SourceState(model)
    c = sum(mmseg_hrnet(s, width, depths, num_modules, stem, stage1))
    s.conv_module("decode_head.0.convs.0", "head.soft_regions", c, c, 1)
    s.conv("decode_head.0.conv_seg", "head.soft_regions.3", c, num_classes, 1, bias=True)
    s.conv_module("decode_head.1.bottleneck", "head.pixel_representation", c, channels, 3)
    block = "decode_head.1.object_context_block"
    for k in range(2):
        cin = channels if k == 0 else ocr_channels
        s.conv_module(f"{block}.query_project.{k}", f"head.attention.query.{k}", cin, ocr_channels, 1)
        conv1d_module(s, f"{block}.key_project.{k}", f"head.attention.key.{k}", cin, ocr_channels)
    conv1d_module(s, f"{block}.value_project", "head.attention.value", channels, ocr_channels)
    s.conv_module(f"{block}.out_project", "head.attention.out", ocr_channels, channels, 1)
    s.conv_module(f"{block}.bottleneck", "head.fuse", 2 * channels, channels, 1)
    s.conv("decode_head.1.conv_seg", "head.classifier", channels, num_classes, 1, bias=True)
    return s


def mmseg_bisenetv1(model, num_classes, spatial=(64, 64, 64, 128), context=128, stem=64, base=64, head=256,
                    aux=64, layers=R18, basic_block=True) -> SourceState:
    """configs/_base_/models/bisenetv1_r18-d32.py (3d241e0): BiSeNetV1(context_channels (128, 256, 512),
    spatial_channels (64, 64, 64, 128), out_channels 256) on a ResNet-18 (mmseg's plain ResNet: 7x7 stem); FCNHead
    256 -> 256 (num_convs 1) and two auxiliary FCNHeads 128 -> 64 on outputs 1 and 2. R-50 / R-101 (``layers``,
    bottlenecks): tests/test_checkpoints_mmseg_variants.py. mmseg/models/backbones/bisenetv1.py (168c883):
    spatial_path.layer1..4 (7x7 s2, 3x3 s2, 3x3 s2, 1x1 ConvModules); context_path: arm16 / arm32 (conv_layer 3x3,
    atten_conv_layer.1 1x1 ConvModule without activation), conv_head32 and conv_head16 (3x3), gap_conv.1 (1x1);
    ffm: conv1 (1x1) and conv_atten.0 (1x1 ConvModule, ReLU) before the sigmoid."""
    s = SourceState(model)
    c32 = mmseg_resnet_v1c(s, layers, stem, base, "backbone.context_path.backbone", "backbone.context.backbone",
                           basic_block, deep_stem=False)
    c16 = c32 // 2
    cin = 3
    for i, (c, k) in enumerate(zip(spatial, (7, 3, 3, 1))):
        s.conv_module(f"backbone.spatial_path.layer{i + 1}", f"backbone.spatial.{i}", cin, c, k)
        cin = c
    cp, ours = "backbone.context_path", "backbone.context"
    for arm, cin in (("arm16", c16), ("arm32", c32)):
        s.conv_module(f"{cp}.{arm}.conv_layer", f"{ours}.{arm}.conv", cin, context, 3)
        s.conv_module(f"{cp}.{arm}.atten_conv_layer.1", f"{ours}.{arm}.attention", context, context, 1)
    s.conv_module(f"{cp}.conv_head32", f"{ours}.refine16", context, context, 3)
    s.conv_module(f"{cp}.conv_head16", f"{ours}.refine8", context, context, 3)
    s.conv_module(f"{cp}.gap_conv.1", f"{ours}.global_context", c32, context, 1)
    fused = spatial[-1] + context
    s.conv_module("backbone.ffm.conv1", "backbone.fusion.fuse", fused, fused, 1)
    s.conv_module("backbone.ffm.conv_atten.0", "backbone.fusion.attention", fused, fused, 1)
    mmseg_fcn_head(s, "decode_head", "head.seg", num_classes, fused, head)
    for k in range(2):
        mmseg_fcn_head(s, f"auxiliary_head.{k}", f"aux_heads.{k}", num_classes, context, aux)
    return s


def mmseg_pointrend(model, num_classes, layers=R50, stem_channels=64, base=64, fpn=256, coarse=128,
                    point=256) -> SourceState:
    """configs/_base_/models/pointrend_r50.py: ResNetV1c (dilations 1), FPN(in_channels 256..2048, out 256,
    num_outs 4; mmdet-style neck: lateral_convs / fpn_convs ConvModules without norm), decode_head.0 an FPNHead
    (feature_strides 4, 8, 16, 32, channels 128: per level max(1, log2(s / 4)) 3x3 ConvModules, each followed by an
    Upsample on levels coarser than the first), decode_head.1 the PointHead (decode_heads/point_head.py 11deec3:
    three Conv1d ConvModules of 256 without norm on [fine, coarse] with the coarse logits appended after each,
    fc_seg)."""
    s = SourceState(model)
    mmseg_resnet_v1c(s, layers, stem_channels, base)
    for i in range(4):
        s.conv(f"neck.lateral_convs.{i}.conv", f"head.neck.lateral_convs.{i}", 4 * base * 2**i, fpn, 1, bias=True)
        s.conv(f"neck.fpn_convs.{i}.conv", f"head.neck.fpn_convs.{i}", fpn, fpn, 3, bias=True)
    for i in range(4):
        for k in range(max(1, i)):
            idx = 2 * k if i > 0 else k
            s.conv_module(f"decode_head.0.scale_heads.{i}.{idx}", f"head.coarse_head.scale_heads.{i}.{idx}",
                          fpn if k == 0 else coarse, coarse, 3)
    s.conv("decode_head.0.conv_seg", "head.coarse_head.classifier", coarse, num_classes, 1, bias=True)
    cin = fpn + num_classes
    for i in range(3):
        s.put(f"decode_head.1.fcs.{i}.conv.weight", (point, cin, 1), s.take(f"head.point_head.fcs.{i}.0.weight"))
        s.put(f"decode_head.1.fcs.{i}.conv.bias", (point,), s.take(f"head.point_head.fcs.{i}.0.bias"))
        cin = point + num_classes
    s.put("decode_head.1.fc_seg.weight", (num_classes, cin, 1), s.take("head.point_head.classifier.weight"))
    s.put("decode_head.1.fc_seg.bias", (num_classes,), s.take("head.point_head.classifier.bias"))
    return s


def mmseg_icnet(model, num_classes, layers=R50, stem_channels=64, base=64, light=32, branches=(64, 256, 256),
                psp=512, channels=128, basic_block=False) -> SourceState:
    """configs/_base_/models/icnet_r50-d8.py (80eee4a; R-101: configs/icnet/icnet_r101-d8_4xb2-80k_cityscapes-
    832x832.py, 3f8d34e, depth=101): ICNet(layer_channels (512, 2048), light_branch_middle_channels 32,
    psp_out_channels 512, out_channels (64, 256, 256)) on ResNetV1c; ICNeck(out_channels 128); decode_head an
    FCNHead 128 -> 128 (num_convs 1, in_index 2), auxiliary_head two FCNHeads 128 -> 128 (in_index 0, 1).
    mmseg/models/backbones/icnet.py (034a5c8): backbone.backbone the ResNetV1c (its maxpool has no parameters),
    psp_modules.{i} = (AdaptiveAvgPool2d, ConvModule 1x1) (PPM of decode_heads/psp_head.py), psp_bottleneck
    (3x3 on cat(pyramid + [x])), conv_sub1.{0,1,2} (3x3 s2 ConvModules), conv_sub2 and conv_sub4 (1x1 ConvModules).
    necks/ic_neck.py (10d08c2): cff_24 and cff_12, each conv_low (3x3, dilation 2) and conv_high (1x1)
    ConvModules. R-18 (configs/icnet/icnet_r18-d8_832x832_80k_cityscapes.py, 94f9cb4): resnet depth=18
    (BasicBlock), layer_channels (128, 512); the rest as R-50."""
    s = SourceState(model)
    c4 = mmseg_resnet_v1c(s, layers, stem_channels, base, "backbone.backbone", "backbone.resnet", basic_block)
    c2 = c4 // 4  # layer2's width (layer_channels[0]: 512 of 2048, 128 of 512)
    c1, cs2, cs4 = branches
    for i in range(4):
        s.conv_module(f"backbone.psp_modules.{i}.1", f"backbone.pyramid.stages.{i}", c4, psp, 1)
    s.conv_module("backbone.psp_bottleneck", "backbone.bottleneck", c4 + 4 * psp, psp, 3)
    for i, (cin, c) in enumerate(((3, light), (light, light), (light, c1))):
        s.conv_module(f"backbone.conv_sub1.{i}", f"backbone.sub1.{i}", cin, c, 3)
    s.conv_module("backbone.conv_sub2", "backbone.sub2", c2, cs2, 1)
    s.conv_module("backbone.conv_sub4", "backbone.sub4", psp, cs4, 1)
    for cff, low, high in (("24", cs4, cs2), ("12", channels, c1)):
        s.conv_module(f"neck.cff_{cff}.conv_low", f"backbone.cff{cff}.conv_low", low, channels, 3)
        s.conv_module(f"neck.cff_{cff}.conv_high", f"backbone.cff{cff}.conv_high", high, channels, 1)
    mmseg_fcn_head(s, "decode_head", "head.seg", num_classes, channels, channels)
    for k in range(2):
        mmseg_fcn_head(s, f"auxiliary_head.{k}", f"aux_heads.{k}", num_classes, channels, channels)
    return s


def mmseg_unet(model, num_classes, base=64, stages=5) -> SourceState:
    """configs/_base_/models/fcn_unet_s5-d16.py (0631053): UNet(base_channels 64, num_stages 5, 2 convs per
    block, downsamples all True, upsample_cfg InterpConv), FCNHead 64 -> 64 on in_index 4, auxiliary FCNHead
    128 -> 64 on in_index 3. mmseg/models/backbones/unet.py (28b5733): encoder.{i} = ([MaxPool2d,]
    BasicConvBlock: convs.{k} 3x3 ConvModules), decoder.{i} = UpConvBlock(in base * 2^(i+1), skip base * 2^i):
    upsample.interp_upsample = (Upsample, 1x1 ConvModule in -> skip), conv_block.convs.{k} (2 * skip -> skip,
    then skip -> skip)."""
    s = SourceState(model)
    cin = 3
    for i in range(stages):
        c, idx = base * 2**i, 0 if i == 0 else 1
        for k in range(2):
            s.conv(f"backbone.encoder.{i}.{idx}.convs.{k}.conv", f"backbone.encoder.levels.{i}.{3 * k}",
                   cin if k == 0 else c, c, 3)
            s.bn(f"backbone.encoder.{i}.{idx}.convs.{k}.bn", f"backbone.encoder.levels.{i}.{3 * k + 1}", c)
        cin = c
    for i in range(stages - 1):
        skip, j = base * 2**i, stages - 2 - i
        s.conv_module(f"backbone.decoder.{i}.upsample.interp_upsample.1", f"backbone.ups.{j}", 2 * skip, skip, 1)
        for k in range(2):
            s.conv(f"backbone.decoder.{i}.conv_block.convs.{k}.conv", f"backbone.levels.{j}.{3 * k}",
                   2 * skip if k == 0 else skip, skip, 3)
            s.bn(f"backbone.decoder.{i}.conv_block.convs.{k}.bn", f"backbone.levels.{j}.{3 * k + 1}", skip)
    mmseg_fcn_head(s, "decode_head", "head.seg", num_classes, base, base)
    mmseg_fcn_aux(s, num_classes, 2 * base, base)
    return s


_HRNET_SMALL = {"width": 4, "depths": (1, 1, 1, 1), "num_modules": (1, 2, 1), "stem": 8, "stage1": 4, "channels": 32,
                "ocr_channels": 16}  # ocrnet.py's _NARROW in mmseg's terms
_ICNET_SMALL = {"stem_channels": 16, "base": 16, "light": 8, "branches": (16, 64, 64), "psp": 128,
                "channels": 32}  # icnet.py's _NARROW_MMSEG
HR18S = {"depths": (2, 2, 2, 2), "num_modules": (1, 3, 2)}
# name -> (writer, the source config at full size, the same at the registry's test_kwargs widths, what the source
# file adds beside the deployed network)
CASES = {
    "ocrnet_hrnetv2_w18_mmseg": (mmseg_ocrnet, {"width": 18}, _HRNET_SMALL, ()),
    "ocrnet_hrnetv2_w48_mmseg": (mmseg_ocrnet, {"width": 48}, _HRNET_SMALL, ()),
    "ocrnet_hrnetv2_w18_small_v2_mmseg": (mmseg_ocrnet, {"width": 18, **HR18S}, _HRNET_SMALL, ()),
    "bisenetv1_r18_mmseg": (mmseg_bisenetv1, {}, {"spatial": (16, 16, 16, 32), "context": 32, "stem": 16, "base": 16,
                                                  "head": 16, "aux": 32}, ("auxiliary_head.",)),
    "pointrend_r50_v1c": (mmseg_pointrend, {}, {"stem_channels": 16, "base": 16, "fpn": 64, "coarse": 32, "point": 64},
                          ()),
    "icnet_r18_mmseg": (mmseg_icnet, {"layers": R18, "basic_block": True},
                        {**_ICNET_SMALL, "layers": R18, "basic_block": True}, ("auxiliary_head.",)),
    "icnet_r50_mmseg": (mmseg_icnet, {}, _ICNET_SMALL, ("auxiliary_head.",)),
    "unet_mmseg": (mmseg_unet, {}, {"base": 8}, ("auxiliary_head.",)),
    "icnet_r101_mmseg": (mmseg_icnet, {"layers": R101}, {**_ICNET_SMALL, "layers": R101}, ("auxiliary_head.",)),
}
# Parameters of the source's deployed network at 19 classes, summed over the shapes the writers give (mmseg
# publishes no parameter counts).
SOURCE_PARAMS = {"ocrnet_hrnetv2_w18_mmseg": 12_080_036, "ocrnet_hrnetv2_w48_mmseg": 70_371_446,
                 "ocrnet_hrnetv2_w18_small_v2_mmseg": 6_378_496, "bisenetv1_r18_mmseg": 13_275_539,
                 "pointrend_r50_v1c": 28_715_119, "icnet_r18_mmseg": 24_874_067, "icnet_r50_mmseg": 47_527_507,
                 "icnet_r101_mmseg": 66_519_635,
                 "unet_mmseg": 28_987_795}
RESHAPED = {"ocrnet": ["head.attention.key.0.0.weight", "head.attention.key.1.0.weight",
                       "head.attention.value.0.weight"]}  # a 2-d 1x1 kernel on the source's side, Conv1d on ours


@pytest.mark.parametrize("name, meta", [("ocrnet_hrnetv2_w18_mmseg", "mmseg 0.x"),
                                        ("ocrnet_hrnetv2_w48_mmseg", "mmseg 1.x"),
                                        ("bisenetv1_r18_mmseg", "mmseg 0.x"), ("pointrend_r50_v1c", "mmseg 1.x"),
                                        ("icnet_r18_mmseg", "mmseg 1.x"), ("icnet_r50_mmseg", "mmseg 0.x"),
                                        ("unet_mmseg", "mmseg 1.x")])
def test_source_checkpoint_imports_with_the_same_outputs(name, meta, tmp_path):
    source_model, s, kwargs, extra = small_source(CASES, name)
    imported, report, _ = round_trip(tmp_path, name, s, source_model, meta, **kwargs)
    assert report.names == "mmseg" and report.loaded == len(s.used) and not report.left_out
    assert sorted(report.reshaped) == RESHAPED.get(get_spec(name).family, [])
    assert count_parameters(imported) == s.parameters(skip=extra)


@pytest.mark.parametrize("name", sorted(CASES))
def test_parameter_count_is_the_source_configs(name):
    assert_source_count(CASES, name, 19, SOURCE_PARAMS[name])


# ------------------------------------------------------------- a file for another variant of the family


def full_size_file(tmp_path, name: str, writer, **config):
    """An mmseg file of ``name`` at full size in shapes only: every tensor one zero broadcast to its shape (a
    1-element storage, so the file stays small), which is all an import needs to say what fits."""
    with torch.device("meta"):
        s = writer(create_model(name, num_classes=19), 19, **config)
    s.state = {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in s.state.items()}
    return read_checkpoint(save(tmp_path, name, s, "mmseg 0.x"))


@pytest.mark.parametrize("target, fits, writer, config", [
    ("ccnet", "ccnet_r50_v1c", mmseg_ccnet, {"layers": R50}),
    ("ocrnet_hrnetv2_w48", "ocrnet_hrnetv2_w48_mmseg", mmseg_ocrnet, {"width": 48}),
    ("pointrend_r50", "pointrend_r50_v1c", mmseg_pointrend, {}),
    ("icnet_r50", "icnet_r50_mmseg", mmseg_icnet, {}),
    ("unet_padded", "unet_mmseg", mmseg_unet, {})])
def test_a_zoo_file_for_another_variant_names_it(target, fits, writer, config, tmp_path):
    """mmseg's ccnet_r50-d8 file (ResNetV1c's 32-32-64 stem) into plain ccnet (64-64-128), and ocrnet_hr48's
    (no bias on two convs) into the official-code OCRNet: the one-line error names the variant the file fits."""
    checkpoint = full_size_file(tmp_path, fits, writer, **config)
    with torch.device("meta"):
        model = create_model(target, num_classes=19)
    with pytest.raises(UserError) as error:
        import_weights(model, target, checkpoint)
    message = str(error.value)
    assert "\n" not in message and f"do not fit {target}: " in message
    assert message.endswith(f"; the file fits the registered variant {fits}: use that name (models[].name, --model)")


def test_no_variant_named_when_none_does_better(tmp_path):
    """A file that fits no variant better than the one asked for (here one of another width) gets no hint."""
    s = mmseg_ccnet(randomised("ccnet_r50_v1c", 0, **get_spec("ccnet_r50_v1c").test_kwargs), 19,
                    layers=R50, stem_channels=16, base=16, channels=128, aux=64)
    checkpoint = read_checkpoint(save(tmp_path, "ccnet", s, "mmseg 0.x"))
    with pytest.raises(UserError) as error:
        import_weights(create_model("ccnet", num_classes=19, **get_spec("ccnet").test_kwargs), "ccnet", checkpoint)
    assert "registered variant" not in str(error.value) and "comes closest" not in str(error.value)


def test_mmseg_bisenetv1_runs_mmseg_forward():
    """mmseg's ContextPath.forward and FeatureFusionModule.forward (backbones/bisenetv1.py) written out on the
    variant's layers: nearest upsampling to the stride-16 and stride-8 maps, x + x * sigmoid(conv-BN-ReLU(pool))."""
    import torch.nn.functional as F

    model = randomised("bisenetv1_r18_mmseg", 0, **get_spec("bisenetv1_r18_mmseg").test_kwargs)
    cp, ffm = model.backbone.context, model.backbone.fusion
    torch.manual_seed(5)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        x16, x32 = cp.backbone(x)[-2:]
        x_gap = cp.global_context(F.adaptive_avg_pool2d(x32, 1))
        x32_up = cp.refine16(F.interpolate(cp.arm32(x32) + x_gap, size=x16.shape[2:], mode="nearest"))
        x16_up = cp.refine8(F.interpolate(cp.arm16(x16) + x32_up, size=(8, 12), mode="nearest"))
        assert all(torch.equal(a, b) for a, b in zip(cp(x, torch.Size((8, 12))), (x16_up, x32_up)))
        spatial = model.backbone.spatial(x)
        fuse = ffm.fuse(torch.cat([spatial, x16_up], dim=1))
        expected = fuse * torch.sigmoid(ffm.attention(F.adaptive_avg_pool2d(fuse, 1))) + fuse
        assert torch.allclose(ffm(spatial, x16_up), expected, atol=1e-6)


def test_mmseg_icnet_runs_mmseg_forward():
    """mmseg's ICNet.forward (backbones/icnet.py: ceil-mode max-pool, resizes by scale_factor=0.5, the pyramid
    concatenated before the input) and ICNeck.forward (necks/ic_neck.py: conv_low, conv_high, relu of the sum;
    x_low returned) written out on the variant's layers, at a size whose inner maps are odd."""
    import torch.nn.functional as F

    model = randomised("icnet_r50_mmseg", 0, **get_spec("icnet_r50_mmseg").test_kwargs)
    b, r = model.backbone, model.backbone.resnet

    def resize(x, **size):
        return F.interpolate(x, mode="bilinear", align_corners=False, **size)

    def cff(m, x_low, x_high):
        x_low = m.conv_low(resize(x_low, size=x_high.shape[2:]))
        return F.relu(x_low + m.conv_high(x_high)), x_low

    torch.manual_seed(6)
    x = torch.randn(1, 3, 72, 88)
    with torch.no_grad():
        sub1 = b.sub1(x)
        y = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)(r.stem[:3](resize(x, scale_factor=0.5)))
        y = r.stages[1](r.stages[0](y))
        sub2 = b.sub2(y)
        y = r.stages[3](r.stages[2](resize(y, scale_factor=0.5)))
        psp = [resize(stage(F.adaptive_avg_pool2d(y, scale)), size=y.shape[2:])
               for scale, stage in zip((1, 2, 3, 6), b.pyramid.stages)]
        sub4 = b.sub4(b.bottleneck(torch.cat(psp + [y], dim=1)))
        x_cff_24, x_24 = cff(b.cff24, sub4, sub2)
        x_cff_12, x_12 = cff(b.cff12, x_cff_24, sub1)
        assert tuple(sub2.shape[2:]) == (5, 6) and tuple(sub4.shape[2:]) == (2, 3)
        assert all(torch.allclose(a, e, atol=1e-5) for a, e in zip(b(x), (x_24, x_12, x_cff_12)))


def test_mmseg_unet_runs_mmseg_forward():
    """mmseg's UNet.forward (backbones/unet.py): enc_outs from the encoder, then for each decoder block from the
    bottom UpConvBlock.forward: upsample (InterpConv: bilinear x2, then the 1x1 ConvModule), torch.cat([skip, x]),
    conv_block; dec_outs bottom first, written out on the variant's layers."""
    b = randomised("unet_mmseg", 0, **get_spec("unet_mmseg").test_kwargs).backbone
    torch.manual_seed(7)
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        enc_outs = b.encoder(x)
        y, dec_outs = enc_outs[-1], [enc_outs[-1]]
        for up, conv_block, skip in zip(b.ups, b.levels, enc_outs[-2::-1]):
            y = up(torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)(y))
            y = conv_block(torch.cat([skip, y], dim=1))
            dec_outs.append(y)
        assert all(torch.equal(a, e) for a, e in zip(b(x), dec_outs)) and len(dec_outs) == 5
