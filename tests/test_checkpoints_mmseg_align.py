"""mmsegmentation's ``align_corners=True`` files: the Cityscapes ``*_769x769_*`` configs of FCN, PSPNet, CCNet,
Non-local, GCNet, DANet, ANN, PSANet and EncNet set ``decode_head=dict(align_corners=True)`` (e.g.
configs/pspnet/pspnet_r50-d8_769x769_40k_cityscapes.py at 0.30.0, 38900d5; pspnet_r50-d8_4xb2-40k_cityscapes-
769x769.py at 1.1.1, 22ffd0d). The setting is read from the config text the file carries (0.x ``meta.config``,
1.x ``meta.cfg``: ``Config.pretty_text``), never executed, and the imported model resizes as mmseg's does with it.

As in tests/test_checkpoints_mmseg.py, whose writers these tests use, each file is written in mmseg's exact layout
from one of our randomised models; here its meta carries the 769 config's text, and the imported model's logits
must equal mmseg's forward written out from its source with ``align_corners=True`` (and differ from the same
weights resized with ``align_corners=False``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from onnx import TensorProto, helper, numpy_helper
from test_checkpoints_mmseg import CITYSCAPES, CASES, PALETTE, randomised, small_source
from test_checkpoints_mmseg_attention import write as write_attention

from engines.onnxruntime import OnnxRuntimeRunner
from export.compile.checkpoints import config_align_corners, read_checkpoint
from export.compile.compat import check_tensorrt_compat, known_tensorrt_versions
from export.compile.onnx_export import export_onnx
from export.compile.rewrites import apply_rewrites
from export.compile.weights import import_weights, load_model, resolve_align_corners
from export.config import load_pipeline
from export.measure.metrics import compare
from export.__main__ import main
from export.errors import UserError
from models import MODELS, create_model, get_spec

# ------------------------------------------------------------------------------------ the config texts

# mmcv's Config.pretty_text (insertion order, yapf) of configs/pspnet/pspnet_r50-d8_769x769_40k_cityscapes.py at
# mmseg 0.30.0 (38900d5): configs/_base_/models/pspnet_r50-d8.py with the 769 file's model overrides merged in,
# the dataset and schedule parts shortened.
PSPNET_769_0X = """norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained='open-mmlab://resnet50_v1c',
    backbone=dict(
        type='ResNetV1c',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        contract_dilation=True),
    decode_head=dict(
        type='PSPHead',
        in_channels=2048,
        in_index=3,
        channels=512,
        pool_scales=(1, 2, 3, 6),
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=True,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=1024,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=True,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(769, 769), stride=(513, 513)))
dataset_type = 'CityscapesDataset'
data_root = 'data/cityscapes/'
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (769, 769)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', img_scale=(2049, 1025), ratio_range=(0.5, 2.0)),
    dict(type='RandomCrop', crop_size=(769, 769), cat_max_ratio=0.75),
]
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)
runner = dict(type='IterBasedRunner', max_iters=40000)
work_dir = './work_dirs/pspnet_r50-d8_769x769_40k_cityscapes'
gpu_ids = range(0, 8)
"""


def mmengine_text(head: str, head_keys: str) -> str:
    """mmengine's Config.pretty_text (keys sorted: mmengine/config/config.py, _format_dict; yapf) of a 1.x
    ``*_4xb2-40k_cityscapes-769x769.py`` config (1.1.1, 22ffd0d) of ``head``, whose own keys are ``head_keys``; the
    auxiliary head comes first in that order, and the dataset part is shortened."""
    return f"""auto_scale_lr = dict(base_batch_size=16, enable=False)
crop_size = (
    769,
    769,
)
data_preprocessor = dict(
    bgr_to_rgb=True,
    mean=[
        123.675,
        116.28,
        103.53,
    ],
    pad_val=0,
    seg_pad_val=255,
    size=(
        769,
        769,
    ),
    std=[
        58.395,
        57.12,
        57.375,
    ],
    type='SegDataPreProcessor')
model = dict(
    auxiliary_head=dict(
        align_corners=True,
        channels=256,
        concat_input=False,
        dropout_ratio=0.1,
        in_channels=1024,
        in_index=2,
        loss_decode=dict(
            loss_weight=0.4, type='CrossEntropyLoss', use_sigmoid=False),
        norm_cfg=dict(requires_grad=True, type='SyncBN'),
        num_classes=19,
        num_convs=1,
        type='FCNHead'),
    backbone=dict(
        contract_dilation=True,
        depth=50,
        dilations=(
            1,
            1,
            2,
            4,
        ),
        norm_cfg=dict(requires_grad=True, type='SyncBN'),
        norm_eval=False,
        num_stages=4,
        out_indices=(
            0,
            1,
            2,
            3,
        ),
        strides=(
            1,
            2,
            1,
            1,
        ),
        style='pytorch',
        type='ResNetV1c'),
    data_preprocessor=dict(
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(
            769,
            769,
        ),
        type='SegDataPreProcessor'),
    decode_head=dict(
        align_corners=True,
        channels=512,
        dropout_ratio=0.1,
        in_channels=2048,
        in_index=3,
        loss_decode=dict(
            loss_weight=1.0, type='CrossEntropyLoss', use_sigmoid=False),
        norm_cfg=dict(requires_grad=True, type='SyncBN'),
        num_classes=19,{head_keys}
        type='{head}'),
    pretrained='open-mmlab://resnet50_v1c',
    test_cfg=dict(crop_size=(
        769,
        769,
    ), mode='slide', stride=(
        513,
        513,
    )),
    train_cfg=dict(),
    type='EncoderDecoder')
norm_cfg = dict(requires_grad=True, type='SyncBN')
work_dir = './work_dirs/{head.lower()}_769x769'
"""


PSPNET_769_1X = mmengine_text("PSPHead", """
        pool_scales=(
            1,
            2,
            3,
            6,
        ),""")
DANET_769_1X = mmengine_text("DAHead", "\n        pam_channels=64,")


@pytest.mark.parametrize("text, expected", [
    (PSPNET_769_0X, True),
    (PSPNET_769_1X, True),
    # the 512x1024 files: configs/_base_/models/pspnet_r50-d8.py's own align_corners=False
    (PSPNET_769_0X.replace("align_corners=True", "align_corners=False"), False),
    # the auxiliary head's option is not the decode head's (it comes first in mmengine's sorted text)
    (PSPNET_769_1X.replace("decode_head=dict(\n        align_corners=True,", "decode_head=dict("), False),
    # a config file as written: the 769 file's own override of its _base_
    ("_base_ = ['../_base_/models/pspnet_r50-d8.py']\nmodel = dict(\n    decode_head=dict(align_corners=True),\n"
     "    auxiliary_head=dict(align_corners=True))", True),
    # a dict whose keys are not all identifiers is written as a mapping (pretty_text's use_mapping)
    ("model = {'decode_head': {'type': 'PSPHead(', 'align_corners': True}, 'x': 1}", True),
    # a cascade's list of heads (OCRNet, PointRend): all False in mmseg's configs
    ("model = dict(decode_head=[dict(type='FCNHead', align_corners=False), dict(type='OCRHead', align_corners=False)])",
     False),
    ("model = dict(...)", None),  # no decode head said: the file does not say
    ("model = dict(decode_head=dict(type='X)', align_corners=True", None),  # cut short
])
def test_the_decode_heads_setting_is_read_from_the_config_text(text, expected):
    assert config_align_corners(text) is expected


# ------------------------------------------------------------------------------ mmseg's forward, written out

def mmseg_pspnet_forward(model: torch.nn.Module, images: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """mmseg's EncoderDecoder with PSPHead, its resizes written out from its source on the file's tensors (our
    layers, which hold them):
    - PPM.forward (mmseg/models/decode_heads/psp_head.py l.53-57, 0.30.0 38900d5 and 1.1.1 22ffd0d): each pool
      scale's AdaptiveAvgPool2d and 1x1 ConvModule, then resize(size=x.size()[2:], mode='bilinear',
      align_corners=self.align_corners), the head's option (PSPHead passes it to PPM);
    - PSPHead._forward_feature (l.107-110, 1.1.1): cat([x, *ppm_outs], 1), bottleneck; cls_seg (decode_head.py
      l.240-245): dropout (identity in eval), conv_seg;
    - the logits to the input: 0.x EncoderDecoder.encode_decode (encoder_decoder.py l.76-80) resize(size=
      img.shape[2:], mode='bilinear', align_corners=self.align_corners), which is the decode head's (l.50); 1.x
      BaseDecodeHead.predict_by_feat (decode_head.py l.353-357) to img_shape with the head's own.
    mmseg's resize (mmseg/ops/wrappers.py 0.x, mmseg/models/utils/wrappers.py 1.x) warns, then F.interpolate."""
    x = model.backbone(images)[-1]  # ResNetV1c out_indices (0, 1, 2, 3); PSPHead in_index=3
    ppm_outs = [F.interpolate(stage(F.adaptive_avg_pool2d(x, scale)), size=x.shape[2:], mode="bilinear",
                              align_corners=align_corners)
                for scale, stage in zip(model.head.ppm.bins, model.head.ppm.stages)]
    out = model.head.classifier(model.head.bottleneck(torch.cat([x, *ppm_outs], 1)))
    return F.interpolate(out, size=images.shape[2:], mode="bilinear", align_corners=align_corners)


def mmseg_danet_forward(model: torch.nn.Module, images: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """mmseg's EncoderDecoder with DAHead: the head resizes nothing (mmseg/models/decode_heads/da_head.py; its test
    forward keeps pam_cam_out only: forward_test l.161-163 0.x, predict l.163-167 1.x), so only the logits' resize
    to the input takes the option (encoder_decoder.py l.76-80 0.x, decode_head.py l.353-357 1.x)."""
    out = model.head(model.backbone(images))  # our DAHead: pam_cam_out's conv_seg, tested equal to mmseg's
    return F.interpolate(out, size=images.shape[2:], mode="bilinear", align_corners=align_corners)


REFERENCES = {"pspnet": mmseg_pspnet_forward, "danet": mmseg_danet_forward}


def written(name: str):
    """(source model, state in mmseg's names, the test widths) for ``name`` at the registry's test widths."""
    if name.startswith("pspnet"):
        source_model, s, kwargs, _ = small_source(CASES, name)
        return source_model, s, kwargs
    kwargs = get_spec(name).test_kwargs
    source_model = randomised(name, 0, **kwargs)
    return source_model, write_attention(name, source_model, full=False), kwargs


def save_769(tmp_path, name: str, state: dict, meta: str, text: str):
    """The file mmseg's runner writes, with ``text`` as the config it keeps: 0.x tools/train.py (mmcv runner)
    ``meta.config = cfg.pretty_text``; 1.x mmengine Runner.save_checkpoint ``meta.cfg = self.cfg.pretty_text``
    (mmengine/runner/runner.py, save_checkpoint, 2543429)."""
    path = tmp_path / f"{name}_769x769.pth"
    if meta == "mmseg 0.x":
        torch.save({"meta": {"CLASSES": CITYSCAPES, "PALETTE": PALETTE, "mmseg_version": "0.30.0", "config": text},
                    "state_dict": state}, path)
    else:
        torch.save({"meta": {"dataset_meta": {"classes": CITYSCAPES, "palette": PALETTE}, "iter": 40000,
                             "cfg": text, "mmengine_version": "0.10.4"}, "state_dict": state}, path)
    return path


CASES_769 = [("pspnet_r50_v1c", "mmseg 0.x", PSPNET_769_0X), ("pspnet_r50_v1c", "mmseg 1.x", PSPNET_769_1X),
             ("danet_r50_v1c", "mmseg 1.x", DANET_769_1X)]
SIZES = [(64, 64), (72, 56)]


@pytest.mark.parametrize("name, meta, text", CASES_769, ids=[f"{n}-{m[-3:]}" for n, m, _ in CASES_769])
def test_a_769_file_imports_with_mmsegs_outputs(name, meta, text, tmp_path):
    source_model, s, kwargs = written(name)
    checkpoint = read_checkpoint(save_769(tmp_path, name, s.state, meta, text))
    key = "meta.config" if meta == "mmseg 0.x" else "meta.cfg"
    assert (checkpoint.align_corners, checkpoint.align_corners_from) == (True, key)

    align_corners = resolve_align_corners(name, None, checkpoint)
    imported = randomised(name, 1, align_corners=align_corners, **kwargs)
    import_weights(imported, name, checkpoint)
    plain = randomised(name, 1, **kwargs)  # the same file resized with align_corners=False, as before
    import_weights(plain, name, checkpoint)
    reference = REFERENCES[name.split("_")[0]]
    torch.manual_seed(2)
    for size in SIZES:
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected, result, before = reference(source_model, images, True), imported(images), plain(images)
            assert torch.allclose(reference(source_model, images, False), before, atol=1e-5)
        assert torch.allclose(result, expected, atol=1e-5), (result - expected).abs().max()
        assert (before - expected).abs().max() > 1e-2  # the option matters at these sizes


def test_every_family_that_takes_the_option_resizes_with_it():
    """The registry's ``takes_align_corners`` against the network: True reaches the final upsampling (and the
    pyramid's, PSPNet's), changes the output, and leaves the weights' layout alone; any other variant refuses it."""
    takes = sorted(n for n, s in MODELS.items() if s.takes_align_corners)
    assert {get_spec(n).family for n in takes} == {"fcn", "pspnet", "ccnet", "nonlocal", "gcnet", "danet", "ann",
                                                    "psanet", "encnet"}
    for name in takes:  # shapes only
        with torch.device("meta"):
            assert create_model(name, num_classes=19, align_corners=True).align_corners, name
    images = torch.randn(1, 3, 40, 48)
    for name in ("fcn_r18_v1c", "pspnet_r18_v1c", "encnet_r50"):
        kwargs = get_spec(name).test_kwargs
        plain = randomised(name, 0, **kwargs)
        aligned = create_model(name, num_classes=19, align_corners=True, **kwargs).eval()
        aligned.load_state_dict(plain.state_dict())
        assert aligned.align_corners and sorted(aligned.state_dict()) == sorted(plain.state_dict())
        with torch.no_grad():
            assert not torch.allclose(aligned(images), plain(images), atol=1e-3)
            _, aux = aligned(images, return_aux=True)  # training's upsampling takes it too
            assert torch.allclose(aux[0], aligned.upsample_logits(aligned.aux_heads[0](
                aligned.backbone(images)[aligned.aux_indices[0]]), images.shape[-2:]))
    assert create_model("pspnet_r18_v1c", align_corners=True, **get_spec("pspnet_r18_v1c").test_kwargs).head.ppm \
        .align_corners
    with pytest.raises(ValueError, match="bisenetv2 resizes with align_corners=False only; .* pspnet variants"):
        create_model("bisenetv2", align_corners=True)
    assert not create_model("bisenetv2", align_corners=False).align_corners


# ------------------------------------------------------------------------------------- pipeline.yaml, import

def pipeline(tmp_path, weights, **model) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "pspnet_r50_v1c", "weights": str(weights), **model}],
                                    "backends": ["onnxruntime"]}))
    return str(path)


@pytest.fixture(scope="module")
def psp_769(tmp_path_factory):
    _, s, _ = written("pspnet_r50_v1c")
    return save_769(tmp_path_factory.mktemp("psp769"), "pspnet_r50_v1c", s.state, "mmseg 0.x", PSPNET_769_0X)


def test_pipeline_takes_the_checkpoints_setting_and_refuses_one_that_disagrees(psp_769, tmp_path):
    assert load_pipeline(pipeline(tmp_path, psp_769)).models[0].align_corners is True
    assert load_pipeline(pipeline(tmp_path, psp_769, align_corners=True)).models[0].align_corners is True
    with pytest.raises(UserError) as error:
        load_pipeline(pipeline(tmp_path, psp_769, align_corners=False))
    message = str(error.value)
    assert "\n" not in message
    assert (f"pspnet_r50_v1c: pipeline.yaml says align_corners false but {psp_769} was trained with "
            "align_corners=True (its config, meta.config); remove models[].align_corners") in message
    # every key given: the file is read only where the model is built, and refused there before it is built
    explicit = load_pipeline(pipeline(tmp_path, psp_769, align_corners=False, num_classes=19,
                                      classes=list(CITYSCAPES), palette=PALETTE))
    with pytest.raises(UserError, match="says align_corners false but .* was trained with align_corners=True"):
        load_model(explicit.models[0], explicit)


def test_pipeline_without_config_text_defaults_to_false_and_true_needs_a_family_that_takes_it(tmp_path):
    _, s, _ = written("pspnet_r50_v1c")
    path = save_769(tmp_path, "pspnet_r50_v1c", s.state, "mmseg 0.x", "")  # no config the file says
    assert read_checkpoint(path).align_corners is None
    assert load_pipeline(pipeline(tmp_path, path)).models[0].align_corners is False
    assert load_pipeline(pipeline(tmp_path, path, align_corners=True)).models[0].align_corners is True
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"models": [{"name": "bisenetv2", "align_corners": True}]}))
    with pytest.raises(UserError, match="bisenetv2: pipeline.yaml says align_corners true, but bisenetv2 resizes "
                                        "with align_corners=False only.*the families that take true: ann, ccnet"):
        load_pipeline(other)


def test_export_import_prints_and_writes_the_setting_which_builds_carry(tmp_path, capsys):
    """End to end at full width on the smallest 769 file (pspnet_r18-d8_769x769_80k_cityscapes.py, 38900d5):
    `python -m export import` says the setting and writes it beside the classes; a pipeline naming the written
    file builds the model with it, whose logits are mmseg's."""
    name = "pspnet_r18_v1c"
    writer, full, _, _ = CASES[name]
    source_model = randomised(name, 0)
    text = PSPNET_769_0X.replace("depth=50", "depth=18").replace("in_channels=2048", "in_channels=512")
    path = save_769(tmp_path, name, writer(source_model, 19, **full).state, "mmseg 0.x", text)
    out = tmp_path / "w.pt"
    assert main(["import", str(path), "--model", name, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "  align_corners: True, from the file's config (meta.config): the model resizes as the source's" in printed
    converted = read_checkpoint(out)
    assert (converted.align_corners, converted.align_corners_from, converted.palette) == (True, "segdeploy", PALETTE)

    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": name, "weights": str(out)}], "backends": ["onnxruntime"]}))
    loaded = load_pipeline(config)
    model, _ = load_model(loaded.models[0], loaded)
    assert model.align_corners and model.head.ppm.align_corners
    images = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.allclose(model(images), mmseg_pspnet_forward(source_model, images, True), atol=1e-5)


# ------------------------------------------------------------------------------------------ ONNX, TensorRT

@pytest.fixture(scope="module")
def exported_psp(tmp_path_factory):
    name = "pspnet_r50_v1c"
    torch.manual_seed(0)
    model = randomised(name, 0, align_corners=True, **get_spec(name).test_kwargs)
    spec = get_spec(name)
    graph = export_onnx(model, tmp_path_factory.mktemp("psp_ac") / "model.onnx", (64, 64), spec.size_divisor,
                        spec.dynamic_hw)
    return model, graph


def test_the_exported_resizes_align_corners_and_tensorrts_tables_pass_them(exported_psp):
    _, graph = exported_psp
    modes = [a.s.decode() for n in graph.graph.node if n.op_type == "Resize" for a in n.attribute
             if a.name == "coordinate_transformation_mode"]
    assert modes == ["align_corners"] * 5  # the pyramid's four levels and the logits
    # no 1x1 conv reads the pyramid's concatenation (a 3x3 does); the logits' x8 upsampling goes by constant scales
    # (align_corners maps by lengths, not by the scale: the same Resize)
    assert set(apply_rewrites(graph, "onnxruntime")[1]) == {"lower_adaptive_avg_pool", "resize_by_constant_scales"}
    tensorrt = apply_rewrites(graph, "tensorrt")[0]
    for version in known_tensorrt_versions():
        assert check_tensorrt_compat(tensorrt, version) == []


def test_onnxruntime_parity_with_align_corners(exported_psp):
    model, graph = exported_psp
    lowered, _ = apply_rewrites(graph, "onnxruntime")  # the fusions for ONNX Runtime included
    rng = np.random.default_rng(0)
    with OnnxRuntimeRunner(lowered.SerializeToString()) as runner:
        for size in SIZES:  # the export's size and another: one graph serves both
            images = rng.standard_normal((2, 3, *size), dtype=np.float32)
            with torch.no_grad():
                expected = model(torch.from_numpy(images)).numpy()
            result = compare([runner.infer({"images": images})["logits"]], [expected])
            assert result["rel_l2_error"] < 1e-5 and result["pixel_agreement"] > 0.999, result


def test_a_1x1_conv_still_moves_before_an_align_corners_resize():
    """pointwise_conv_before_upsampling (export/compile/fusions.py) on a Resize in align_corners mode: a linear
    Resize whose weights per output sum to 1 (align_corners's too) commutes with a 1x1 conv and keeps its bias, so
    the moved Resize keeps its mode and the graph computes what it did."""
    f = TensorProto.FLOAT
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Shape", ["c"], ["c_shape"]),
             helper.make_node("Shape", ["a"], ["a_shape"]),
             helper.make_node("Slice", ["c_shape", "two", "four"], ["hw"]),
             helper.make_node("Slice", ["a_shape", "zero", "two"], ["nc"]),
             helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
             helper.make_node("Resize", ["a", "", "", "sizes"], ["a_up"], mode="linear",
                              coordinate_transformation_mode="align_corners"),
             helper.make_node("Concat", ["a_up", "c"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "weight", "bias"], ["out"], kernel_shape=[1, 1])]
    inits = [numpy_helper.from_array(rng.standard_normal((3, 5, 1, 1), dtype=np.float32), "weight"),
             numpy_helper.from_array(rng.standard_normal(3, dtype=np.float32), "bias"),
             *(numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("zero", 0), ("two", 2), ("four", 4)))]
    graph = helper.make_graph(nodes, "ac", [helper.make_tensor_value_info("a", f, ["N", 2, "h", "w"]),
                                            helper.make_tensor_value_info("c", f, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("out", f, ["N", 3, "H", "W"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    model.graph.value_info.append(helper.make_tensor_value_info("a_up", f, ["N", 2, "H", "W"]))
    fused, counts = apply_rewrites(model, "onnxruntime")
    assert counts == {"pointwise_conv_before_upsampling": 1}
    assert [a.s for n in fused.graph.node if n.op_type == "Resize" for a in n.attribute
            if a.name == "coordinate_transformation_mode"] == [b"align_corners"]
    feed = {"a": rng.standard_normal((2, 2, 3, 5), dtype=np.float32),
            "c": rng.standard_normal((2, 3, 7, 9), dtype=np.float32)}
    runs = []
    for g in (model, fused):
        with OnnxRuntimeRunner(g.SerializeToString(), threads=1) as runner:
            runs.append(runner.infer(feed)["out"])
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5, atol=1e-5)
