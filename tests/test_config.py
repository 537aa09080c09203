"""pipeline.yaml: typed loading, and errors that name the path and the allowed values."""
from __future__ import annotations

import pytest
import yaml

from export.config import load_pipeline
from export.errors import UserError
from helpers import ROOT
from models import MODELS


def write(tmp_path, data) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_default_pipeline_loads():
    p = load_pipeline(ROOT / "pipeline.yaml")
    assert [m.name for m in p.models] == ["bisenetv2", "segformer_b0", "ccnet"]
    assert all(m.precisions == ["fp32", "fp16", "int8"] for m in p.models)
    assert p.resolve(p.calibration.images) == ROOT / "samples"
    assert p.tensorrt.check_versions == ["10.3", "11.1"]


@pytest.mark.parametrize("data, message", [
    ({"models": [{"name": "bisenetv2"}, {"name": "ccnet", "precisions": ["int4"]}]},
     "models[1].precisions[0]: 'int4' is not one of fp32, fp16, int8"),
    ({"models": [{"name": "segformer_b9"}]}, "models[0].name: unknown model 'segformer_b9'; known: " + sorted(MODELS)[0]),
    ({"models": [{"name": "bisenetv2", "colour": 1}]}, "models[0].colour: unknown key; allowed: name, precisions"),
    ({"models": [{"name": "bisenetv2", "num_classes": "many"}]}, "models[0].num_classes: expected an integer or null, got 'many'"),
    ({"models": [{"name": "bisenetv2", "input": {"size": [100, 512]}}]}, "models[0].input.size: [100, 512] is not a multiple of 32"),
    ({"models": [{"name": "bisenetv2", "input": {"size": [256, 512], "max": [128, 512]}}]}, "need min <= size <= max"),
    ({"models": [{"name": "bisenetv2"}], "backends": ["coreml"]},
         "backends[0]: 'coreml' is not one of onnxruntime, tensorrt, openvino"),
    ({"models": [{"name": "bisenetv2"}], "calibration": {"method": "kl"}}, "calibration.method: 'kl' is not one of minmax"),
    ({"models": [{"name": "bisenetv2"}], "tensorrt": {"dla_core": "zero"}}, "tensorrt.dla_core: expected an integer or null"),
    ({"models": [{"name": "bisenetv2", "num_classes": 300, "embed_pre_post": True}]},
     "models[0].embed_pre_post: 300 classes do not fit the engine's uint8 class map (at most 256)"),
    ({"models": [{"name": "bisenetv2"}], "tensorrt": {"check_versions": ["9.0"]}}, "tensorrt.check_versions[0]: '9.0' is not one of 10.3"),
    ({"models": [{"name": "bisenetv2"}], "parity": {"fp16": {"max_abs_error": "small"}}}, "parity.fp16.max_abs_error: expected a number or null"),
    ({"out_dir": "build"}, "models: missing"),
    ({"models": []}, "models: empty"),
    ([1, 2], "pipeline: expected a mapping"),
])
def test_bad_values_name_their_path(tmp_path, data, message):
    with pytest.raises(UserError) as info:
        load_pipeline(write(tmp_path, data))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="no such file; pass --config"):
        load_pipeline(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="cannot be read as YAML"):
        load_pipeline(write(tmp_path, "models: [\n"))


def test_backends_build_from_the_artifact_targets():
    """pipeline.yaml's backend names (a Literal, for validation) each build from one of the graph targets
    engines/artifacts.py lays out (openvino from the onnxruntime graphs), every target has its backend, and
    every backend has its engine file name."""
    from engines.artifacts import ENGINE_SUFFIX, TARGETS
    from export.compile.backends import BACKENDS as BUILDERS
    from export.config import BACKENDS

    assert {BUILDERS[name]().target for name in BACKENDS} == set(TARGETS) <= set(BACKENDS)
    assert set(ENGINE_SUFFIX) == set(BACKENDS)


def test_every_backend_and_precision_the_config_accepts_has_its_handler():
    """pipeline.yaml's names, the build's registries and the build folder's layout agree."""
    from engines import artifacts
    from export.compile.backends import BACKENDS as BUILDERS
    from export.compile.precisions import PRECISIONS as HANDLERS
    from export.config import BACKENDS, PRECISIONS

    assert set(BACKENDS) == set(BUILDERS) and set(artifacts.TARGETS) <= set(BACKENDS)
    assert set(PRECISIONS) == set(HANDLERS) == set(artifacts.PRECISIONS)


CNN_FAMILIES = {"sliding_window", "fcn", "segnet", "unet", "deeplabv1", "pspnet", "refinenet", "icnet", "bisenetv1"}


def test_cnn_example_pipeline_builds_every_cnn_family():
    """pipelines/cnn.yaml (README, Architectures) names every CNN family and loads with its paths relative
    to itself."""
    p = load_pipeline(ROOT / "pipelines" / "cnn.yaml")
    assert {MODELS[m.name].family for m in p.models} == CNN_FAMILIES
    assert p.resolve(p.calibration.images).resolve() == ROOT / "samples"
    assert p.resolve(p.out_dir).resolve() == ROOT / "build" / "cnn"
