"""An engine rebuilds only when something that shapes it changed: its code hash covers ``export/``,
``engines/``, ``data/`` and the ``models`` modules its architecture imports, not every model file."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.compile.sources import PROJECT_ROOT, model_sources, source_hash
from helpers import tiny_pipeline
from models import MODELS, create_model, get_spec


@pytest.mark.parametrize("name", sorted(MODELS))
def test_code_hash_covers_every_class_the_network_is_built_of(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=5)
    files = model_sources(get_spec(name).builder.__module__)
    used = {Path(sys.modules[type(m).__module__].__file__).resolve() for m in model.modules()
            if type(m).__module__.startswith("models.")}
    assert used <= {f.resolve() for f in files}, f"{name}: not hashed: {sorted(map(str, used - files))}"


@pytest.fixture
def repo_copy(tmp_path):
    """The packages the build reads, copied, so a test can edit them."""
    for folder in ("data", "models", "export", "engines"):
        shutil.copytree(PROJECT_ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def changed_models(root: Path, edit: str) -> set[str]:
    before = {name: source_hash(name, root) for name in MODELS}
    with open(root / edit, "a") as f:
        f.write("\n# an edit\n")
    return {name for name in MODELS if source_hash(name, root) != before[name]}


def built_of(module: str) -> set[str]:
    """The models of every family file one of whose variants has a layer that ``module`` defines (found by
    instantiating each, shapes only). The hash follows a family file's imports, so a sibling variant that
    does not use the layer rebuilds too (bisenetv1_xception39 beside bisenetv1_r18)."""
    with torch.device("meta"):
        users = {n for n in MODELS
                 if any(type(m).__module__ == module for m in create_model(n, num_classes=5).modules())}
    files = {MODELS[n].builder.__module__ for n in users}
    return {n for n in MODELS if MODELS[n].builder.__module__ in files}


@pytest.mark.parametrize("edit, rebuilt", [
    ("models/segformer.py", {n for n in MODELS if n.startswith("segformer")}),
    ("models/backbones/resnet.py", built_of("models.backbones.resnet")),  # CCNet, PSPNet, RefineNet, ICNet...
    ("models/bisenetv2.py", {"bisenetv2", "bisenetv2_coincheung"}),
    ("models/__init__.py", set()),  # registration only
    ("models/base.py", set(MODELS)),
    ("export/compile/precision.py", set(MODELS)),
    ("data/layouts.py", set(MODELS)),  # how accuracy.data is read decides what INT8 keeps in float
])
def test_an_edit_changes_the_code_hash_of_the_models_it_shapes(repo_copy, edit, rebuilt):
    assert changed_models(repo_copy, edit) == rebuilt


def test_editing_one_model_rebuilds_only_its_engines(repo_copy):
    """End to end, as a user would see it: two models built, one model's file edited, the next build
    rebuilds that model's engine and skips the other's."""
    shutil.copy(PROJECT_ROOT / "pyproject.toml", repo_copy)
    models = [{"name": "bisenetv2", "num_classes": 4, "precisions": ["fp32"], "input": {"size": [64, 64]}},
              {"name": "segformer_b0", "num_classes": 4, "precisions": ["fp32"], "input": {"size": [64, 64]}}]
    config = tiny_pipeline(repo_copy / "work", models=models)

    def build() -> str:
        done = subprocess.run([sys.executable, "-m", "export", "build", "--config", config], cwd=repo_copy,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    assert "2 built, 0 up to date" in build()
    with open(repo_copy / "models" / "bisenetv2.py", "a") as f:  # the cheaper of the two to rebuild
        f.write("\n# an edit\n")
    out = build()
    assert "1 built, 1 up to date" in out
    assert "segformer_b0 fp32 onnxruntime: up to date" in out
