"""mmsegmentation files with a d8 variant's keys and shapes that are another network: FCN's fcn-d6_r{50,101}-d16
(0.x fcn_d6_r{50,101}-d16: configs/fcn/fcn-d6_r50-d16_4xb2-40k_cityscapes-512x1024.py, 3f8d34e, and
fcn_d6_r50-d16_512x1024_40k_cityscapes.py, bd15201: backbone strides (1, 2, 2, 1), dilations (1, 1, 1, 2), decode
head dilation=6, output stride 16) and PSPNet's pspnet_r50-d32 (configs/pspnet/pspnet_r50-d32_512x1024_80k_
cityscapes.py, df47283: strides (1, 2, 2, 2), output stride 32; its dilations stay (1, 1, 2, 4)). The settings are
read from the config text the file carries (0.x ``meta.config``, 1.x ``meta.cfg``: ``Config.pretty_text``), never
executed, against what the variant builds (``KeyMap.config``); a file that disagrees is refused in one line, and
one without config text imports as before (nothing tells it apart).

The files are written in mmseg's exact layout by the writers of tests/test_checkpoints_mmseg.py and
tests/test_checkpoints_mmseg_attention.py."""
from __future__ import annotations

import pytest
import torch
import yaml
from test_checkpoints_mmseg import CASES, CITYSCAPES, PALETTE, randomised, small_source
from test_checkpoints_mmseg_attention import write as write_fcn
from torch import nn

from export.__main__ import main
from export.compile.checkpoints import config_settings, read_checkpoint
from export.compile.weights import import_weights, load_model
from export.config import load_pipeline
from export.errors import UserError
from models import MODELS, create_model, get_spec

D8 = {"backbone.strides": (1, 2, 1, 1), "backbone.dilations": (1, 1, 2, 4), "decode_head.dilation": 1}
D6_D16 = {"backbone.strides": (1, 2, 2, 1), "backbone.dilations": (1, 1, 1, 2), "decode_head.dilation": 6}
D32 = {"backbone.strides": (1, 2, 2, 2), "backbone.dilations": (1, 1, 2, 4), "decode_head.dilation": 1}
DEFAULTS = {"backbone.strides": (1, 2, 2, 2), "backbone.dilations": (1, 1, 1, 1), "decode_head.dilation": 1}


# ------------------------------------------------------------------------------------ the config texts

def text_0x(head: str, strides: str, dilations: str, head_keys: str = "", aux_keys: str = "", depth: int = 50) -> str:
    """mmcv's Config.pretty_text (insertion order; an override's new keys after the base's) of a 0.x config on
    configs/_base_/models/{fcn,pspnet}_r50-d8.py (2fc821e, 3f8d34e), its backbone's ``strides`` and ``dilations``
    replaced in place and ``head_keys`` / ``aux_keys`` appended to the heads; the dataset part shortened."""
    own = "num_convs=2,\n        concat_input=True," if head == "FCNHead" else "pool_scales=(1, 2, 3, 6),"
    return f"""norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained='open-mmlab://resnet{depth}_v1c',
    backbone=dict(
        type='ResNetV1c',
        depth={depth},
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations={dilations},
        strides={strides},
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        contract_dilation=True),
    decode_head=dict(
        type='{head}',
        in_channels=2048,
        in_index=3,
        channels=512,
        {own}
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0){head_keys}),
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
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4){aux_keys}),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
dataset_type = 'CityscapesDataset'
data_root = 'data/cityscapes/'
crop_size = (512, 1024)
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)
runner = dict(type='IterBasedRunner', max_iters=40000)
work_dir = './work_dirs/{head.lower()}_r{depth}'
"""


def _tuple_1x(values: tuple[int, ...], indent: int) -> str:
    """A tuple as mmengine's pretty_text (yapf) writes it: one element a line."""
    pad = " " * indent
    return "(\n" + "".join(f"{pad}    {v},\n" for v in values) + f"{pad})"


def text_1x(head: str, strides: tuple, dilations: tuple, head_keys: str = "", aux_keys: str = "") -> str:
    """mmengine's Config.pretty_text (keys sorted: mmengine/config/config.py, _format_dict; yapf) of a 1.x
    ``*_4xb2-40k_cityscapes-512x1024.py`` config (3f8d34e) on the same bases; ``head_keys`` / ``aux_keys`` are
    lines in the heads' sorted place (the auxiliary head comes first in this order)."""
    fcn = head == "FCNHead"
    first = "\n        concat_input=True," if fcn else ""
    last = "\n        num_convs=2," if fcn else "\n        pool_scales=" + _tuple_1x((1, 2, 3, 6), 8) + ","
    return f"""crop_size = (
    512,
    1024,
)
data_preprocessor = dict(
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(
        512,
        1024,
    ),
    type='SegDataPreProcessor')
model = dict(
    auxiliary_head=dict(
        align_corners=False,
        channels=256,
        concat_input=False,{aux_keys}
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
        dilations={_tuple_1x(dilations, 8)},
        norm_cfg=dict(requires_grad=True, type='SyncBN'),
        norm_eval=False,
        num_stages=4,
        out_indices=(
            0,
            1,
            2,
            3,
        ),
        strides={_tuple_1x(strides, 8)},
        style='pytorch',
        type='ResNetV1c'),
    data_preprocessor=dict(
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(
            512,
            1024,
        ),
        type='SegDataPreProcessor'),
    decode_head=dict(
        align_corners=False,
        channels=512,{first}{head_keys}
        dropout_ratio=0.1,
        in_channels=2048,
        in_index=3,
        loss_decode=dict(
            loss_weight=1.0, type='CrossEntropyLoss', use_sigmoid=False),
        norm_cfg=dict(requires_grad=True, type='SyncBN'),
        num_classes=19,{last}
        type='{head}'),
    pretrained='open-mmlab://resnet50_v1c',
    test_cfg=dict(mode='whole'),
    train_cfg=dict(),
    type='EncoderDecoder')
norm_cfg = dict(requires_grad=True, type='SyncBN')
work_dir = './work_dirs/{head.lower()}_512x1024'
"""


FCN_D6_0X = text_0x("FCNHead", "(1, 2, 2, 1)", "(1, 1, 1, 2)", ",\n        dilation=6", ",\n        dilation=6")
FCN_D6_1X = text_1x("FCNHead", (1, 2, 2, 1), (1, 1, 1, 2), "\n        dilation=6,", "\n        dilation=6,")
FCN_D8_0X = text_0x("FCNHead", "(1, 2, 1, 1)", "(1, 1, 2, 4)")
FCN_D8_1X = text_1x("FCNHead", (1, 2, 1, 1), (1, 1, 2, 4))
PSPNET_D32_0X = text_0x("PSPHead", "(1, 2, 2, 2)", "(1, 1, 2, 4)")
PSPNET_D32_1X = text_1x("PSPHead", (1, 2, 2, 2), (1, 1, 2, 4))
PSPNET_D8_0X = text_0x("PSPHead", "(1, 2, 1, 1)", "(1, 1, 2, 4)")
# configs/fcn/fcn_d6_r50-d16_512x1024_40k_cityscapes.py (bd15201) as written: it inherits the rest
D6_AS_WRITTEN = """_base_ = [
    '../_base_/models/fcn_r50-d8.py', '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_40k.py'
]
model = dict(
    backbone=dict(dilations=(1, 1, 1, 2), strides=(1, 2, 2, 1)),
    decode_head=dict(dilation=6),
    auxiliary_head=dict(dilation=6))
"""


SETTINGS_CASES = [
    (FCN_D6_0X, D6_D16),
    (FCN_D6_1X, D6_D16),
    (PSPNET_D32_0X, D32),
    (PSPNET_D32_1X, D32),
    (FCN_D8_0X, D8),
    (FCN_D8_1X, D8),
    # the auxiliary head's dilation (first in mmengine's sorted text) is not the decode head's
    (text_1x("FCNHead", (1, 2, 2, 1), (1, 1, 1, 2), aux_keys="\n        dilation=6,"),
     {**D6_D16, "decode_head.dilation": 1}),
    # a backbone and a head that leave them out: ResNet's and FCNHead's defaults
    ("model = dict(backbone=dict(type='ResNetV1c', depth=50), decode_head=dict(type='FCNHead', channels=512))",
     DEFAULTS),
    ("model = dict(backbone=dict(type='ResNetV1c', strides=(1, 2, 1, 1)), decode_head=dict(type='FCNHead'))",
     {**DEFAULTS, "backbone.strides": (1, 2, 1, 1)}),
    # a dict whose keys are not all identifiers is written as a mapping, lists as lists
    ("model = {'backbone': {'strides': [1, 2, 2, 1], 'dilations': [1, 1, 1, 2]}, 'decode_head': {'dilation': 6}, "
     "'x y': 1}", D6_D16),
    # 'backbone' elsewhere (an optimizer's custom_keys, written first) is not the model's
    ("optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))\n" + FCN_D8_0X, D8),
    # as written, inheriting: only what it writes; the rest is in its _base_ files, which are not here
    (D6_AS_WRITTEN, D6_D16),
    ("_base_ = './fcn_r50-d8_512x1024_40k_cityscapes.py'\nmodel = dict(pretrained='open-mmlab://resnet101_v1c', "
     "backbone=dict(depth=101))", {}),
    # a value that is not numbers cannot be told; no backbone or head: nothing said
    ("model = dict(backbone=dict(strides=strides, dilations=(1, 1, 2, 4)), decode_head=dict(dilation=d))",
     {"backbone.dilations": (1, 1, 2, 4)}),
    ("model = dict(...)", {}),
    ("", {}),
]


@pytest.mark.parametrize("text, expected", SETTINGS_CASES, ids=[
    "fcn-d6-0.x", "fcn-d6-1.x", "pspnet-d32-0.x", "pspnet-d32-1.x", "fcn-d8-0.x", "fcn-d8-1.x", "aux-dilation",
    "defaults", "strides-only", "mapping", "custom-keys", "as-written", "as-written-inherits", "not-numbers",
    "no-entries", "empty"])
def test_the_settings_are_read_from_the_config_text(text, expected):
    assert config_settings(text) == expected


def test_every_d8_table_declares_what_its_variants_build():
    """``KeyMap.config`` against the network: each stage's 3x3 convs carry the declared stride and (at most) the
    declared dilation, and no conv of the decode head is dilated beyond the declared one."""
    declared = {name: [t.config for t in spec.checkpoints if t.config] for name, spec in MODELS.items()}
    declared = {name: configs for name, configs in declared.items() if configs}
    assert {get_spec(n).family for n in declared} == {"fcn", "pspnet", "ccnet", "nonlocal", "gcnet", "danet", "ann",
                                                      "psanet", "encnet"}
    assert "fcn_r50_v1c" in declared and "pointrend_r50_v1c" not in declared  # PointRend is output stride 32
    for name, configs in declared.items():
        with torch.device("meta"):
            model = create_model(name, num_classes=19)
        strides, dilations = [], []
        for stage in model.backbone.stages:
            convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
            strides.append(max(m.stride[0] for m in convs))
            dilations.append(max(m.dilation[0] for m in convs))
        head = max(m.dilation[0] for m in model.head.modules() if isinstance(m, nn.Conv2d))
        for config in configs:
            assert config == {"backbone.strides": tuple(strides), "backbone.dilations": tuple(dilations),
                              "decode_head.dilation": head}, name


# ------------------------------------------------------------------------------------------ importing

def save(tmp_path, name: str, state: dict, meta: str, text: str | None):
    """The file mmseg's runner writes (0.x tools/train.py: ``meta.config``; 1.x mmengine Runner.save_checkpoint:
    ``meta.cfg``), with ``text`` as its config (None: no config text, as a file converted without it)."""
    path = tmp_path / f"{name}.pth"
    if meta == "mmseg 0.x":
        info = {"CLASSES": CITYSCAPES, "PALETTE": PALETTE, "mmseg_version": "0.30.0"}
        key = "config"
    else:
        info = {"dataset_meta": {"classes": CITYSCAPES, "palette": PALETTE}, "iter": 40000,
                "mmengine_version": "0.10.4"}
        key = "cfg"
    if text is not None:
        info[key] = text
    torch.save({"meta": info, "state_dict": state}, path)
    return path


def written(name: str):
    """(source model, its state in mmseg's names) at the registry's test widths."""
    if name.startswith("pspnet"):
        source_model, s, _, _ = small_source(CASES, name)
        return source_model, s.state
    source_model = randomised(name, 0, **get_spec(name).test_kwargs)
    return source_model, write_fcn(name, source_model, full=False).state


def refusal(name: str, path) -> str:
    """The one-line error importing ``path`` into a fresh ``name``, which must keep its own weights."""
    model = randomised(name, 1, **get_spec(name).test_kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as error:
        import_weights(model, name, read_checkpoint(path))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["fcn_r50_v1c", "fcn_r101_v1c"])
@pytest.mark.parametrize("meta, text", [("mmseg 0.x", FCN_D6_0X), ("mmseg 1.x", FCN_D6_1X)], ids=["0.x", "1.x"])
def test_an_fcn_d6_d16_file_is_refused(name, meta, text, tmp_path):
    _, state = written(name)
    depth = name.split("_")[1][1:]
    text = text.replace("resnet50", f"resnet{depth}").replace("depth=50", f"depth={depth}")
    path = save(tmp_path, name, state, meta, text)
    message = refusal(name, path)
    where = "meta.config" if meta == "mmseg 0.x" else "meta.cfg"
    assert message == (
        f"weights {path} have {name}'s keys and shapes but are another network: its config ({where}) says "
        "backbone.strides=(1, 2, 2, 1), backbone.dilations=(1, 1, 1, 2), decode_head.dilation=6 (output stride 16) "
        f"where {name} builds backbone.strides=(1, 2, 1, 1), backbone.dilations=(1, 1, 2, 4), decode_head.dilation=1; "
        f"no registered variant builds that network: use a file trained with {name}'s settings (mmseg's *-d8 files)")


@pytest.mark.parametrize("meta, text", [("mmseg 0.x", PSPNET_D32_0X), ("mmseg 1.x", PSPNET_D32_1X)],
                         ids=["0.x", "1.x"])
def test_a_pspnet_d32_file_is_refused_naming_only_what_differs(meta, text, tmp_path):
    name = "pspnet_r50_v1c"
    _, state = written(name)
    message = refusal(name, save(tmp_path, name, state, meta, text))
    assert ("says backbone.strides=(1, 2, 2, 2) (output stride 32) where pspnet_r50_v1c builds "
            "backbone.strides=(1, 2, 1, 1); no registered variant builds") in message
    assert "dilation" not in message  # its dilations are the d8 ones, and PSPHead takes none


def test_a_config_that_leaves_the_backbone_to_its_defaults_is_refused(tmp_path):
    """mmseg's ResNetV1c defaults (strides (1, 2, 2, 2), dilations (1, 1, 1, 1)) where the text says none."""
    name = "fcn_r50_v1c"
    _, state = written(name)
    text = FCN_D8_0X.replace("        dilations=(1, 1, 2, 4),\n        strides=(1, 2, 1, 1),\n", "")
    message = refusal(name, save(tmp_path, name, state, "mmseg 0.x", text))
    assert ("says backbone.strides=(1, 2, 2, 2), backbone.dilations=(1, 1, 1, 1) (output stride 32) where "
            "fcn_r50_v1c builds backbone.strides=(1, 2, 1, 1), backbone.dilations=(1, 1, 2, 4);") in message


@pytest.mark.parametrize("name, meta, text", [
    ("fcn_r50_v1c", "mmseg 0.x", FCN_D8_0X), ("fcn_r101_v1c", "mmseg 1.x", FCN_D8_1X),
    ("pspnet_r50_v1c", "mmseg 0.x", PSPNET_D8_0X),
    # no config text, or one that says nothing of the model: nothing tells the file apart, as before
    ("fcn_r50_v1c", "mmseg 0.x", None), ("pspnet_r50_v1c", "mmseg 1.x", None),
    ("fcn_r50_v1c", "mmseg 1.x", "model = dict(...)"),
], ids=["fcn-d8-0.x", "fcn-r101-d8-1.x", "pspnet-d8-0.x", "fcn-no-text", "pspnet-no-text", "fcn-says-nothing"])
def test_a_d8_file_or_one_without_config_text_imports(name, meta, text, tmp_path):
    source_model, state = written(name)
    checkpoint = read_checkpoint(save(tmp_path, name, state, meta, text))
    assert checkpoint.config == (D8 if text in (FCN_D8_0X, FCN_D8_1X, PSPNET_D8_0X) else {})
    imported = randomised(name, 1, **get_spec(name).test_kwargs)
    import_weights(imported, name, checkpoint)
    images = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(imported(images), source_model(images))


# ------------------------------------------------------------------------------ the CLI and pipeline.yaml

@pytest.fixture(scope="module")
def d6_file(tmp_path_factory):
    """A full-width fcn_r18_v1c file with an fcn-d6_*-d16 config (depth 18): what the CLI and the build load."""
    name = "fcn_r18_v1c"
    state = write_fcn(name, randomised(name, 0), full=True).state
    text = FCN_D6_1X.replace("depth=50", "depth=18").replace("in_channels=2048", "in_channels=512")
    return save(tmp_path_factory.mktemp("d6"), name, state, "mmseg 1.x", text)


def test_export_import_refuses_in_one_line_and_writes_nothing(d6_file, tmp_path, capsys):
    out = tmp_path / "w.pt"
    assert main(["import", str(d6_file), "--model", "fcn_r18_v1c", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and list(tmp_path.iterdir()) == []  # nothing written, not even a partial file
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: weights {d6_file} have fcn_r18_v1c's keys and shapes")
    assert "decode_head.dilation=6 (output stride 16) where fcn_r18_v1c builds" in lines[0]


def test_a_build_naming_the_file_in_models_weights_is_refused(d6_file, tmp_path, capsys):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "fcn_r18_v1c", "weights": str(d6_file),
                                                  "precisions": ["fp32"]}], "backends": ["onnxruntime"]}))
    pipeline = load_pipeline(config)  # the file's classes are read here, its settings where the model is built
    with pytest.raises(UserError, match=r"^weights .* have fcn_r18_v1c's keys and shapes but are another network") \
            as error:
        load_model(pipeline.models[0], pipeline)
    assert "\n" not in str(error.value)
    out = tmp_path / "out"
    assert main(["build", "--config", str(config), "--out", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "its config (meta.cfg) says backbone.strides=(1, 2, 2, 1)" in errors[0]
    assert errors[0].endswith("(mmseg's *-d8 files)")
    assert not (out / "summary.json").exists()
