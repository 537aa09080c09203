"""The ViT-encoder families, DPT (models/dpt.py) and Segmenter (models/segmenter.py): parameter counts, Segmenter's
class masks, and one graph serving several sizes. Forward, export, the TensorRT op tables and fp32/fp16/int8
parity of every variant's small configuration are in test_conformance.py."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from export.compile.onnx_export import export_onnx
from helpers import make_deterministic
from models import count_parameters, create_model, get_spec
from models.segmenter import MaskTransformer


def test_dpt_parameter_count() -> None:
    """No count for DPT-Base (ViT-B/16) is published in the paper's text we found, the isl-org/DPT README or
    mmsegmentation's configs/dpt/README.md; this pins the architecture: the ViT-B/16 at 384 without its final
    norm (85.8M) and the reassemble/fusion/head at 256 features with 150 classes."""
    with torch.device("meta"):
        assert count_parameters(create_model("dpt_vit_b16", num_classes=150)) == 111_177_558


@pytest.mark.parametrize("name", ["dpt_vit_b16", "segmenter_vit_t"])
def test_one_graph_serves_several_sizes(name: str, tmp_path) -> None:
    """Exported at 64 x 64, the graph computes PyTorch's logits at 64 x 96 and 96 x 64 (position embeddings
    resized; DPT's resampling and x2 upsampling, Segmenter's patch/class split, follow the input)."""
    spec = get_spec(name)
    model = make_deterministic(create_model(name, num_classes=5, **spec.test_kwargs))
    graph = export_onnx(model, tmp_path / "model.onnx", (64, 64), spec.size_divisor, spec.dynamic_hw)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    for size in [(64, 96), (96, 64)]:
        images = torch.randn(1, 3, *size)
        with torch.no_grad():
            reference = model(images).numpy()
        (result,) = session.run(None, {"images": images.numpy()})
        assert result.shape == (1, 5, *size)
        assert np.abs(result - reference).max() <= 1e-5 * np.abs(reference).max(), size


def test_shared_float_constants_get_one_copy_per_reader():
    """DPT-Hybrid's GroupNorms export as InstanceNormalizations whose identical scales the exporter merges
    into one initializer, which ONNX Runtime's quantizer refuses to quantize for two readers; the INT8
    conversion gives each reader its own copy (integer shape constants stay shared)."""
    from onnx import TensorProto, helper, numpy_helper

    from export.compile.precision import unshare_initializers

    scale = numpy_helper.from_array(np.ones(4, np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "bias")
    shape = numpy_helper.from_array(np.array([1, 4, -1], np.int64), "shape")
    nodes = [helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["a"]),
             helper.make_node("InstanceNormalization", ["a", "scale", "bias"], ["b"]),
             helper.make_node("Reshape", ["a", "shape"], ["c"]), helper.make_node("Reshape", ["b", "shape"], ["d"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "cd"],
                              [scale, bias, shape])
    model = unshare_initializers(helper.make_model(graph))
    first, second = model.graph.node[:2]
    assert set(first.input[1:]).isdisjoint(second.input[1:])
    assert model.graph.node[2].input[1] == model.graph.node[3].input[1] == "shape"
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert all(np.array_equal(values[a], values[b]) for a, b in zip(first.input[1:], second.input[1:]))


def test_hybrid_reads_resnet_stages_for_the_two_finest_levels():
    spec = get_spec("dpt_hybrid_r50")
    model = create_model("dpt_hybrid_r50", num_classes=3, **spec.test_kwargs).eval()
    assert model.backbone.strides == [4, 8, 16, 16]
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 24), (8, 12), (4, 6), (4, 6)]



# rstrudel/segmenter README, "Model Zoo", ADE20K table (150 classes), "# params" of Seg-{T,S,B,L}-Mask/16, in
# millions as printed (rounded to 1M). Seg-L is trained at 640 x 640 (a 40 x 40 position grid).
SEGMENTER_README_PARAMS_M = {"segmenter_vit_t": 7, "segmenter_vit_s": 27, "segmenter_vit_b": 106, "segmenter_vit_l": 334}
# The reference checkpoints also hold the encoder's ImageNet classifier (segm/model/factory.py builds the ViT with
# n_cls=1000 and loads strictly), unused for segmentation and not built here; with it added, T (6.91M) and L
# (334.26M) round to the README's figures. S (26.42M) and B (103.27M) do not: the README's 27M and 106M exceed
# what the reference code (segm/model/{vit,decoder,factory}.py, segm/config.yml) builds, with or without that
# head, so those two are expected failures rather than loosened tolerances.
SEGMENTER_MEASURED_PARAMS = {"segmenter_vit_t": 6_713_388, "segmenter_vit_l": 333_234_476}
README_MISMATCH = pytest.mark.xfail(strict=True, reason="README's 27M / 106M exceed the reference architecture's "
                                                        "26.4M / 103.3M (with its ImageNet head)")


@pytest.mark.parametrize("name", [
    "segmenter_vit_t",
    pytest.param("segmenter_vit_s", marks=README_MISMATCH),
    pytest.param("segmenter_vit_b", marks=README_MISMATCH),
    "segmenter_vit_l",
])
def test_segmenter_parameter_count_matches_the_release(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=150)
    width = model.backbone.out_channels[-1]
    imagenet_head = 1000 * width + 1000
    assert round((count_parameters(model) + imagenet_head) / 1e6) == SEGMENTER_README_PARAMS_M[name]


@pytest.mark.parametrize("name, count", sorted(SEGMENTER_MEASURED_PARAMS.items()))
def test_segmenter_parameter_count_is_the_reference_architecture(name: str, count: int) -> None:
    with torch.device("meta"):
        assert count_parameters(create_model(name, num_classes=150)) == count


def test_mask_transformer_class_masks_follow_the_formula() -> None:
    """masks = LayerNorm_K( (P W_p / |P W_p|) (C W_c / |C W_c|)^T ), reshaped to (K, h, w), computed here from
    the decoder's own blocks on a tiny input."""
    torch.manual_seed(0)
    head = MaskTransformer(in_channels=8, num_classes=3, d_model=16, n_layers=1, num_heads=2).eval()
    with torch.no_grad():
        head.mask_norm.weight.uniform_(0.5, 1.5)
        head.mask_norm.bias.uniform_(-0.5, 0.5)
        features = torch.randn(2, 8, 2, 3)  # (B, C, h, w)
        masks = head([features])

        x = head.proj_dec(features.flatten(2).transpose(1, 2))  # (B, 6, D)
        x = head.decoder_norm(head.blocks[0](torch.cat([x, head.cls_emb.expand(2, -1, -1)], dim=1)))
        p, c = x[:, :6] @ head.proj_patch, x[:, 6:] @ head.proj_classes
        p, c = p / p.norm(dim=-1, keepdim=True), c / c.norm(dim=-1, keepdim=True)
        cosine = torch.einsum("bnd,bkd->bnk", p, c)  # (B, 6, K)
        expected = F.layer_norm(cosine, (3,), head.mask_norm.weight, head.mask_norm.bias, head.mask_norm.eps)
        expected = expected.permute(0, 2, 1).reshape(2, 3, 2, 3)
    assert masks.shape == (2, 3, 2, 3)
    torch.testing.assert_close(masks, expected)
    assert cosine.abs().max() <= 1 + 1e-6
