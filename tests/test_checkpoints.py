"""Checkpoints trained elsewhere (export/compile/checkpoints.py, the families' CHECKPOINT_KEYS tables): every
import is checked by numbers against the source's own model, and bad files are refused in one line.

Hugging Face models are built by transformers at random initialisation from a config (nothing is downloaded)
and saved with ``save_pretrained``: the folder layout and key names of the hub's checkpoints."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from export.compile.checkpoints import read_checkpoint
from export.compile.weights import import_weights
from export.config import load_pipeline
from export.errors import UserError
from helpers import cli, tiny_pipeline
from models import create_model, get_spec

import transformers  # noqa: E402  a test extra (pyproject.toml): where it is missing these tests fail, never skip


def _randomise_batch_norms(model: torch.nn.Module) -> None:
    """Fresh BatchNorms are the identity; statistics away from it check that they map to the right layer."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)


def _hf_logits(model, images: torch.Tensor) -> torch.Tensor:
    """The transformers model's logits upsampled to the input as ours are (bilinear, align_corners=False)."""
    with torch.no_grad():
        logits = model(pixel_values=images).logits
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def hf_segformer(tmp_path_factory):
    """SegFormer-B0 with an ADE20K-sized head (150 classes), as transformers saves it."""
    torch.manual_seed(0)
    labels = {i: f"class{i}" for i in range(150)}
    config = transformers.SegformerConfig(num_labels=150, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    _randomise_batch_norms(model)
    folder = tmp_path_factory.mktemp("hf") / "segformer-b0-ade"
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("form", ["folder", "safetensors", "cache"])
def test_hf_segformer_imports_with_the_sources_logits(hf_segformer, form, tmp_path, monkeypatch):
    model, folder = hf_segformer
    if form == "folder":
        ref = str(folder)
    elif form == "safetensors":
        ref = str(folder / "model.safetensors")
    else:  # hf:<repo id> from the local cache's layout (models--org--name/refs/main -> snapshots/<commit>)
        repo = tmp_path / "hub" / "models--nvidia--segformer-b0-finetuned-ade-512-512"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0123abc")
        snapshot = repo / "snapshots" / "0123abc"
        snapshot.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            (snapshot / name).symlink_to(folder / name)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
        ref = "hf:nvidia/segformer-b0-finetuned-ade-512-512"
    checkpoint = read_checkpoint(ref)
    assert checkpoint.layout == "huggingface"
    assert checkpoint.classes == [f"class{i}" for i in range(150)]
    ours = create_model("segformer_b0", num_classes=150).eval()
    report = import_weights(ours, "segformer_b0", checkpoint)
    assert report.names == "huggingface" and report.loaded == len(ours.state_dict())
    assert len(report.fused) == 16  # key + value -> kv in each of the 8 blocks, weight and bias
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        result = ours(images)
    assert (result - _hf_logits(model, images)).abs().max() <= 1e-4


def test_hf_cache_miss_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="huggingface-cli download nvidia/segformer-b1-finetuned-ade-512-512"):
        read_checkpoint("hf:nvidia/segformer-b1-finetuned-ade-512-512")


def test_pipeline_takes_classes_from_the_checkpoint(hf_segformer, tmp_path):
    _, folder = hf_segformer
    model = {"name": "segformer_b0", "weights": str(folder), "precisions": ["fp32"], "input": {"size": [64, 64]}}
    (cfg,) = load_pipeline(tiny_pipeline(tmp_path, models=[model])).models
    assert cfg.num_classes == 150 and cfg.classes[:2] == ["class0", "class1"] and cfg.palette is None


def test_a_class_count_against_the_checkpoint_is_one_line(hf_segformer, tmp_path):
    _, folder = hf_segformer
    model = {"name": "segformer_b0", "num_classes": 19, "weights": str(folder), "precisions": ["fp32"],
             "input": {"size": [64, 64]}}
    config = tiny_pipeline(tmp_path, models=[model])
    result = cli("build", "--config", config)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "num_classes 19 but" in last and "150 classes" in last
    assert "Traceback" not in result.stderr and not list((tmp_path / "out").rglob("*.onnx"))


def test_export_import_converts_once_and_reports(hf_segformer, tmp_path):
    model, folder = hf_segformer
    out = tmp_path / "weights.pt"
    result = cli("import", str(folder), "--model", "segformer_b0", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "detected: huggingface checkpoint" in result.stdout and "mapped: 192 tensors" in result.stdout
    # The converted file is this project's own layout, classes included.
    checkpoint = read_checkpoint(out)
    assert checkpoint.layout == "state dict" and len(checkpoint.classes) == 150
    ours = create_model("segformer_b0", num_classes=150).eval()
    assert import_weights(ours, "segformer_b0", checkpoint).names == "ours"
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(images) - _hf_logits(model, images)).abs().max() <= 1e-4


def test_another_architectures_checkpoint_names_the_keys(hf_segformer, tmp_path):
    _, folder = hf_segformer
    result = cli("import", str(folder), "--model", "bisenetv2", "--out", str(tmp_path / "w.pt"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "do not fit bisenetv2 with num_classes=150: missing keys: backbone.detail" in result.stderr
    assert not (tmp_path / "w.pt").exists()


# ------------------------------------------------------------------------ DPT (modeling_dpt.py, 5.23.0)

def _randomise(model: torch.nn.Module) -> None:
    """BatchNorm statistics and affine parameters, class token and position embeddings away from their initial
    values (ones, zeros), so that each one's mapping shows in the logits."""
    _randomise_batch_norms(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".batch_norm" in name or "head.head.1." in name or "cls_token" in name or "position_embeddings" in name:
                p.normal_(0.5 if name.endswith("weight") else 0.0, 0.2)


def _hf_dpt_config(**kwargs):
    """DPTConfig of the hub's ADE20K checkpoint (BatchNorm in the fusion residual units, 150 classes), at
    dpt_vit_*'s test size: the ViT of dpt's _SMALL_VIT, reassembled widths 16-64, 32 fusion channels."""
    labels = {i: f"class{i}" for i in range(150)}
    args = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256, image_size=64,
                backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 48, 64], fusion_hidden_size=32,
                use_batch_norm_in_fusion_residual=True, num_labels=150, id2label=labels,
                label2id={v: k for k, v in labels.items()})
    return transformers.DPTConfig(**{**args, **kwargs})


@pytest.fixture(scope="module")
def hf_dpt(tmp_path_factory):
    torch.manual_seed(0)
    # Weights at 5x transformers' initial scale (std 0.1, not 0.02) give logits of order 1 (max |logit| 2.8), not
    # 0.03, so that 1e-4 is a test.
    model = transformers.DPTForSemanticSegmentation(_hf_dpt_config(initializer_range=0.1)).eval()
    _randomise(model)
    folder = tmp_path_factory.mktemp("hf") / "dpt-ade"
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("name", ["dpt_vit_b16", "dpt_vit_l16"])
def test_hf_dpt_imports_with_the_sources_logits(hf_dpt, name):
    model, folder = hf_dpt
    checkpoint = read_checkpoint(folder)
    ours = create_model(name, num_classes=150, **get_spec(name).test_kwargs).eval()
    report = import_weights(ours, name, checkpoint)
    assert report.names == "huggingface" and report.loaded == len(ours.state_dict())
    assert len(report.fused) == 8  # query, key, value -> qkv in each of the 4 blocks, weight and bias
    assert sorted(report.left_out) == ["auxiliary_head.head.0.weight", "auxiliary_head.head.1.bias",
                                       "auxiliary_head.head.1.num_batches_tracked", "auxiliary_head.head.1.running_mean",
                                       "auxiliary_head.head.1.running_var", "auxiliary_head.head.1.weight",
                                       "auxiliary_head.head.4.bias", "auxiliary_head.head.4.weight",
                                       "dpt.layernorm.bias", "dpt.layernorm.weight"]
    torch.manual_seed(1)
    images = torch.randn(2, 3, 96, 96)  # square (transformers' reassembly assumes it); position grid resized 4 -> 6
    with torch.no_grad():
        error = (ours(images) - _hf_logits(model, images)).abs().max().item()
    assert error <= 1e-4, error


def test_hf_dpt_without_batch_norm_in_the_fusion_units_is_one_line(tmp_path):
    model = transformers.DPTForSemanticSegmentation(_hf_dpt_config(use_batch_norm_in_fusion_residual=False))
    model.save_pretrained(tmp_path / "dpt")
    result = cli("import", str(tmp_path / "dpt"), "--model", "dpt_vit_b16", "--out", str(tmp_path / "w.pt"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "do not fit dpt_vit_b16 with num_classes=150" in result.stderr and "batch_norm" in result.stderr


def test_hf_dpt_into_another_architecture_names_the_keys(hf_dpt, tmp_path):
    _, folder = hf_dpt
    result = cli("import", str(folder), "--model", "segformer_b0", "--out", str(tmp_path / "w.pt"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "do not fit segformer_b0 with num_classes=150: missing keys: backbone.stages" in result.stderr
    assert not (tmp_path / "w.pt").exists()


# ------------------------------------------------------- Mask2Former (modeling_mask2former.py, 5.23.0)

def _hf_mask2former(**kwargs):
    """Mask2FormerForUniversalSegmentation with a ResNet-50 backbone at mask2former_r50's test size (widths / 4,
    one encoder layer, 3 decoder layers: transformers counts 4) and a 150-class head. Its loss, unused here,
    asks for scipy at construction only (the Hungarian matcher); it is built without that check."""
    from transformers.models.mask2former import modeling_mask2former

    backbone = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[64, 128, 256, 512], depths=[3, 4, 6, 3],
                                         layer_type="bottleneck", out_features=["stage1", "stage2", "stage3", "stage4"])
    labels = {i: f"class{i}" for i in range(150)}
    args = dict(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=4, num_attention_heads=2,
                dim_feedforward=64, num_queries=10, num_labels=150, id2label=labels,
                label2id={v: k for k, v in labels.items()})
    config = transformers.Mask2FormerConfig(**{**args, **kwargs})
    check = modeling_mask2former.requires_backends
    modeling_mask2former.requires_backends = lambda *args, **kw: None
    try:
        return transformers.Mask2FormerForUniversalSegmentation(config).eval()
    finally:
        modeling_mask2former.requires_backends = check


@pytest.fixture(scope="module")
def hf_mask2former(tmp_path_factory):
    torch.manual_seed(0)
    model = _hf_mask2former()
    _randomise_batch_norms(model)
    with torch.no_grad():
        # Peaked class probabilities (scores up to ~3, not ~0.04) and mask logits of unit scale, so that the
        # masked attention masks about 60% of each level, not a coin toss at sigmoid(0) = 0.5.
        model.class_predictor.weight.mul_(50)
        model.model.transformer_module.decoder.mask_predictor.mask_embedder.layers[2].layers[0].weight.mul_(30)
    folder = tmp_path_factory.mktemp("hf") / "mask2former-r50-ade"
    model.save_pretrained(folder)
    return model, folder


def _hf_semantic_scores(model, images: torch.Tensor) -> torch.Tensor:
    """Mask2Former's semantic inference from transformers' outputs, as ours computes it: per pixel at stride 4,
    sum_q softmax(class logits_q)[:-1] * sigmoid(mask logits_q), then bilinear to the input size."""
    with torch.no_grad():
        out = model(pixel_values=images)
    scores = torch.einsum("bqc,bqhw->bchw", out.class_queries_logits.softmax(-1)[..., :-1],
                          out.masks_queries_logits.sigmoid())
    return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)


def test_hf_mask2former_r50_imports_with_the_sources_semantic_scores(hf_mask2former):
    model, folder = hf_mask2former
    checkpoint = read_checkpoint(folder)
    assert checkpoint.classes == [f"class{i}" for i in range(150)]
    # transformers' pixel-decoder encoder always samples 4 points per head and level.
    ours = create_model("mask2former_r50", num_classes=150, **{**get_spec("mask2former_r50").test_kwargs, "points": 4})
    report = import_weights(ours.eval(), "mask2former_r50", checkpoint)
    assert report.names == "huggingface" and report.loaded == len(ours.state_dict())
    assert len(report.split) == 6  # in_proj weight and bias of each of the 3 cross-attentions -> q, k, v
    assert report.left_out == ["criterion.empty_weight"]
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        error = (ours(images) - _hf_semantic_scores(model, images)).abs().max().item()
    assert error <= 1e-4, error


def test_hf_mask2former_with_a_swin_backbone_is_one_line(tmp_path):
    swin = transformers.SwinConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], image_size=64,
                                   out_features=["stage1", "stage2", "stage3", "stage4"])
    _hf_mask2former(backbone_config=swin).save_pretrained(tmp_path / "m2f-swin")
    result = cli("import", str(tmp_path / "m2f-swin"), "--model", "mask2former_r50", "--out", str(tmp_path / "w.pt"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "do not fit mask2former_r50 with num_classes=150: missing keys: backbone.stem" in result.stderr
    assert not (tmp_path / "w.pt").exists()


def test_a_key_map_cuts_one_fused_tensor_into_several():
    from models.keymaps import KeyMap, apply_key_map

    table = KeyMap("test", ((r"attn\.in_proj_(weight|bias)", r"attn.{q,k,v}.\1"),))
    weight, bias = torch.arange(12.0).reshape(6, 2), torch.arange(6.0)
    mapped = apply_key_map({"attn.in_proj_weight": weight, "attn.in_proj_bias": bias}, table)
    assert mapped.split == ["attn.in_proj_weight", "attn.in_proj_bias"] and mapped.renamed == 2
    for i, part in enumerate("qkv"):
        assert torch.equal(mapped.state[f"attn.{part}.weight"], weight[2 * i:2 * i + 2])
        assert torch.equal(mapped.state[f"attn.{part}.bias"], bias[2 * i:2 * i + 2])


# ------------------------------------------------------------------------------ .pth files, read safely

class _Exploit:
    def __reduce__(self):
        return (print, ("this code ran",))


def test_a_pickle_with_code_is_refused_never_run(tmp_path, capfd):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit()}, path)
    with pytest.raises(UserError, match="need code to load .*never run here"):
        read_checkpoint(path)
    assert "this code ran" not in capfd.readouterr().out


def test_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(create_model("bisenetv2", num_classes=4).state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="damaged or truncated"):
        read_checkpoint(path)


def test_mmengine_checkpoint_with_training_logs_loads_its_weights_and_classes(tmp_path, monkeypatch):
    """mmengine 1.x's Runner saves ``meta.dataset_meta`` and a ``message_hub`` of HistoryBuffer objects
    holding numpy arrays (mmengine/runner/runner.py save_checkpoint; mmengine/logging/history_buffer.py)."""
    import numpy as np

    module = types.ModuleType("mmengine.logging.history_buffer")
    HistoryBuffer = type("HistoryBuffer", (), {"__module__": module.__name__})
    module.HistoryBuffer = HistoryBuffer
    buffer = HistoryBuffer()
    buffer._log_history, buffer._count_history = np.arange(3.0), np.ones(3)
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    state = create_model("bisenetv2", num_classes=4).state_dict()
    meta = {"epoch": 1, "dataset_meta": {"classes": ("a", "b", "c", "d"), "palette": [[1, 2, 3]] * 4}}
    path = tmp_path / "iter_1000.pth"
    torch.save({"meta": meta, "state_dict": state, "message_hub": {"log_scalars": {"loss": buffer}},
                "optimizer": {"state": {}}}, path)
    monkeypatch.delitem(sys.modules, module.__name__)  # mmengine is not installed where it is read
    checkpoint = read_checkpoint(path)
    assert checkpoint.layout == "mmseg"
    assert checkpoint.classes == ["a", "b", "c", "d"] and checkpoint.palette == [[1, 2, 3]] * 4
    assert set(checkpoint.state) == set(state)


def test_mmseg_0x_meta_gives_classes_and_palette(tmp_path):
    path = tmp_path / "zoo.pth"
    torch.save({"meta": {"CLASSES": ("road", "sky"), "PALETTE": [[128, 64, 128], [70, 130, 180]],
                         "mmseg_version": "0.20.0", "config": "model = dict(...)"},
                "state_dict": {"w": torch.zeros(2)}}, path)
    checkpoint = read_checkpoint(path)
    assert (checkpoint.layout, checkpoint.classes, checkpoint.palette) == (
        "mmseg", ["road", "sky"], [[128, 64, 128], [70, 130, 180]])


def test_any_other_class_in_the_pickle_is_refused(tmp_path):
    """Anything beyond tensors, containers, numpy data and mmengine's log buffers needs code: refused."""
    path = tmp_path / "odd.pth"
    torch.save({"meta": {"when": types.SimpleNamespace(a=1)}, "state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(UserError, match="types.SimpleNamespace"):
        read_checkpoint(path)


def test_the_example_pipeline_builds_an_imported_checkpoint(hf_segformer, tmp_path):
    """pipelines/imported_segformer.yaml as a user runs it, with the hub repo it names in a local Hugging Face
    cache (here the random-init stand-in), at a small size: the engine gets the checkpoint's 150 classes."""
    import os
    import subprocess

    import yaml

    from helpers import ROOT

    _, folder = hf_segformer
    snapshot = tmp_path / "hub" / "models--nvidia--segformer-b0-finetuned-ade-512-512" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).symlink_to(folder / name)
    config = yaml.safe_load((ROOT / "pipelines" / "imported_segformer.yaml").read_text())
    config["models"][0]["input"] = {"size": [64, 64], "min": [64, 64], "max": [128, 128]}
    config["models"][0]["precisions"] = ["fp32"]
    config.update(out_dir=str(tmp_path / "out"), backends=["onnxruntime"])
    config["calibration"]["images"] = str(ROOT / "samples")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "export", "build", "--config", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0, result.stderr
    manifest = json.loads(next((tmp_path / "out").rglob("fp32*.manifest.json")).read_text())
    assert manifest["classes"][:2] == ["class0", "class1"] and len(manifest["classes"]) == 150
