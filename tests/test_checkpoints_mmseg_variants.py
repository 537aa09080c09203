"""mmsegmentation model-zoo files of other depths and widths in families that already import one: PointRend
R-101 (pointrend_r101_v1c), BiSeNetV1 R-50 and R-101 (bisenetv1_r{50,101}_mmseg) and Mask2Former R-101
(mask2former_r101), each through its family's MMSEG_KEYS table.

As in tests/test_checkpoints_mmseg.py (whose SourceState, small_source, round_trip and assert_source_count this
file uses), the writers spell out mmseg's key names and shapes from its code and configs, key by key and
independently of the tables: the families' writers in tests/test_checkpoints_mmseg_more.py (mmseg_pointrend,
mmseg_bisenetv1) and tests/test_checkpoints_mmseg_m2f.py (mmseg_mask2former), given the depth and widths of the
configs cited at each case below. Imported into a fresh model the file must give the outputs of the model it was
written from exactly (at the registry's test widths), and at full size (shapes only) the parameter count summed
over the written shapes (the source's deployed network) must be the variant's, at each class count the zoo's
files of that variant have."""
from __future__ import annotations

import pytest
import torch
from test_checkpoints_mmseg import R50, R101, assert_source_count, round_trip, small_source
from test_checkpoints_mmseg_m2f import _SMALL as M2F_SMALL
from test_checkpoints_mmseg_m2f import mmseg_mask2former
from test_checkpoints_mmseg_more import full_size_file, mmseg_bisenetv1, mmseg_pointrend

from export.errors import UserError
from export.compile.weights import import_weights
from models import count_parameters, create_model

# PointRend R-101: configs/point_rend/pointrend_r101_4xb2-80k_cityscapes-512x1024.py (a3a144a) and
# pointrend_r101_4xb4-160k_ade20k-512x512.py (152f43b) are their R-50 configs with backbone depth=101 (and
# open-mmlab://resnet101_v1c to start from): the same ResNetV1c, FPN and heads.
_POINTREND_SMALL = {"stem_channels": 16, "base": 16, "fpn": 64, "coarse": 32, "point": 64}  # pointrend.py's _NARROW_V1C
# BiSeNetV1: configs/bisenetv1/bisenetv1_r50-d32_4xb4-160k_cityscapes-1024x1024.py (3f8d34e),
# bisenetv1_r50-d32_4xb4-160k_coco-stuff164k-512x512.py (3f8d34e), bisenetv1_r101-d32_4xb4-160k_coco-stuff164k-
# 512x512.py (13d58ef): backbone_cfg ResNet depth 50 / 101 over the base's deep_stem-less ResNet, context_channels
# (512, 1024, 2048), spatial_channels (256, 256, 256, 512), out_channels 1024, decode_head FCNHead 1024 -> 1024,
# auxiliary_head two FCNHeads 512 -> 256 (num_convs 1, concat_input False); the -in1k-pre files (5703d6e, 3f8d34e)
# set only the backbone's init_cfg. The R-101 files are COCO-Stuff 164k only (171 classes).
_BISENET_FULL = {"spatial": (256, 256, 256, 512), "context": 512, "head": 1024, "aux": 256, "basic_block": False}
_BISENET_SMALL = {"spatial": (16, 16, 16, 32), "context": 32, "stem": 16, "base": 16, "head": 16, "aux": 32,
                  "basic_block": False}  # bisenetv1.py's _NARROW with the 16-wide ResNet
# Mask2Former R-101: configs/mask2former/mask2former_r101_8xb2-90k_cityscapes-512x1024.py (fa05a05) and
# mask2former_r101_8xb2-160k_ade20k-512x512.py (7c8993c): their R-50 configs with backbone depth=101 (from
# torchvision://resnet101), deep_stem still False.
# name -> (writer, the source config at full size, the same at the registry's test_kwargs widths, what the source
# file adds beside the deployed network)
CASES = {
    "pointrend_r101_v1c": (mmseg_pointrend, {"layers": R101}, {**_POINTREND_SMALL, "layers": R101}, ()),
    "bisenetv1_r50_mmseg": (mmseg_bisenetv1, {**_BISENET_FULL, "layers": R50}, {**_BISENET_SMALL, "layers": R50},
                            ("auxiliary_head.",)),
    "bisenetv1_r101_mmseg": (mmseg_bisenetv1, {**_BISENET_FULL, "layers": R101}, {**_BISENET_SMALL, "layers": R101},
                             ("auxiliary_head.",)),
    "mask2former_r101": (mmseg_mask2former, {"layers": R101}, {**M2F_SMALL, "layers": R101}, ()),
}
# Parameters of the source's deployed network, summed over the shapes the writers give, at the class counts of the
# zoo's files (Cityscapes 19, ADE20K 150, COCO-Stuff 164k 171; mmseg's READMEs give no parameter counts).
SOURCE_PARAMS = {("pointrend_r101_v1c", 19): 47_707_247, ("pointrend_r101_v1c", 150): 47_880_560,
                 ("bisenetv1_r50_mmseg", 19): 56_873_299, ("bisenetv1_r50_mmseg", 171): 57_029_099,
                 ("bisenetv1_r101_mmseg", 171): 76_021_227,
                 ("mask2former_r101", 19): 62_999_828, ("mask2former_r101", 150): 63_033_495}


@pytest.mark.parametrize("name, meta", [("pointrend_r101_v1c", "mmseg 0.x"), ("bisenetv1_r50_mmseg", "mmseg 0.x"),
                                        ("bisenetv1_r101_mmseg", "mmseg 1.x"), ("mask2former_r101", "mmseg 1.x")])
def test_source_checkpoint_imports_with_the_same_outputs(name, meta, tmp_path):
    """PointRend and BiSeNetV1 were trained in mmseg 0.x (its files carry mmcv's meta; 1.x loads them as they are),
    Mask2Former in 1.x only; each layout is read."""
    source_model, s, kwargs, extra = small_source(CASES, name)
    imported, report, _ = round_trip(tmp_path, name, s, source_model, meta, **kwargs)
    assert report.names == "mmseg" and report.loaded == len(s.used) and not report.left_out and not report.reshaped
    # Mask2Former: in_proj weight and bias of two attentions in each of the test size's 3 decoder layers
    assert len(report.split) == (2 * 2 * 3 if name.startswith("mask2former") else 0)
    assert count_parameters(imported) == s.parameters(skip=extra)


@pytest.mark.parametrize("name, num_classes", sorted(SOURCE_PARAMS))
def test_parameter_count_is_the_source_configs(name, num_classes):
    assert_source_count(CASES, name, num_classes, SOURCE_PARAMS[name, num_classes])


@pytest.mark.parametrize("target, fits", [("pointrend_r50_v1c", "pointrend_r101_v1c"),
                                          ("bisenetv1_r18_mmseg", "bisenetv1_r50_mmseg"),
                                          ("bisenetv1_r50_mmseg", "bisenetv1_r101_mmseg"),
                                          ("mask2former_r50", "mask2former_r101")])
def test_a_zoo_file_of_another_depth_names_its_variant(target, fits, tmp_path):
    """A family's variants share one table, so a file of another depth maps onto the variant asked for and fails on
    its keys or shapes (ResNet-101's layer3.6 ... layer3.22, ResNet-50's bottleneck widths where R-18 has basic
    blocks): the one-line error names the variant the file fits."""
    writer, config, _, _ = CASES[fits]
    checkpoint = full_size_file(tmp_path, fits, writer, **config)
    with torch.device("meta"):
        model = create_model(target, num_classes=19)
    with pytest.raises(UserError) as error:
        import_weights(model, target, checkpoint)
    message = str(error.value)
    assert "\n" not in message and f"do not fit {target}: " in message
    assert message.endswith(f"; the file fits the registered variant {fits}: use that name (models[].name, --model)")
