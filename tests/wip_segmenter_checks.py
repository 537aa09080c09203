"""WORK IN PROGRESS checks of Segmenter (models/_wip_segmenter.py, not registered yet: its CPU INT8 parity in the
conformance set is 0.10-0.18 relative L2 depending on the initialisation, against a bound of 0.15). Not collected
by default (the name does not match test_*.py); run it explicitly:
``pytest -p no:cacheprovider -n 0 tests/wip_segmenter_checks.py``. Importing the module registers the four
variants, so this file must stay out of the default collection until they pass the conformance set; then rename
models/_wip_segmenter.py to segmenter.py and merge these tests into test_model_segmenter_dpt.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import count_parameters, create_model
from models._wip_segmenter import MaskTransformer

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




def test_one_graph_serves_several_sizes(tmp_path) -> None:
    from test_model_segmenter_dpt import test_one_graph_serves_several_sizes as check

    check("segmenter_vit_t", tmp_path)
