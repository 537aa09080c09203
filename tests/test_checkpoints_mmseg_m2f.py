"""mmsegmentation 1.x model-zoo layout of Mask2Former R-50 (mask2former_r50's MMSEG_KEYS table).

As in tests/test_checkpoints_mmseg.py (whose SourceState, mmseg_resnet_v1c, small_source, round_trip and
assert_source_count this file uses), the writer spells out mmseg's and mmdet's key names and shapes from their
code and configs (cited at the writer), key by key and independently of the table, filled with the tensors of
one of our randomly initialised models; imported into a fresh model the file must give that model's outputs
exactly, and the parameter count summed over the written shapes (the source's deployed network) must be the
imported model's, at full size with the zoo files' 19 Cityscapes and 150 ADE20K classes.

Why no ``_mmseg`` variant: both zoo configs build a plain ResNet-50 (``deep_stem=False``: the 7x7 stem ours has)
and the head's layer counts (6 encoder, 9 decoder layers, 100 queries) and norms (GN 32, LayerNorm) are ours.
"""
from __future__ import annotations

import pytest
import torch
from test_checkpoints_mmseg import R50, SourceState, assert_source_count, mmseg_resnet_v1c, round_trip, small_source

from models import count_parameters

# ------------------------------------------------------------------------------------ the source's layout


def mmseg_mha(s: SourceState, key: str, ours: str, dim: int) -> None:
    """mmcv's MultiheadAttention (mmcv/cnn/bricks/transformer.py): attn = nn.MultiheadAttention, whose in_proj_weight
    (3D, D) stacks query, key and value; out_proj. Ours an Attention with q, k, v and proj Linears."""
    for p, shape in (("weight", (3 * dim, dim)), ("bias", (3 * dim,))):
        s.put(f"{key}.attn.in_proj_{p}", shape, torch.cat([s.take(f"{ours}.{n}.{p}") for n in ("q", "k", "v")]))
    s.put(f"{key}.attn.out_proj.weight", (dim, dim), s.take(f"{ours}.proj.weight"))
    s.put(f"{key}.attn.out_proj.bias", (dim,), s.take(f"{ours}.proj.bias"))


def mmcv_ffn(s: SourceState, key: str, ours: str, dim: int, hidden: int) -> None:
    """mmcv's FFN (num_fcs=2): layers = (Sequential(Linear D -> F, act, dropout), Linear F -> D, dropout)."""
    s.put(f"{key}.layers.0.0.weight", (hidden, dim), s.take(f"{ours}.linear1.weight"))
    s.put(f"{key}.layers.0.0.bias", (hidden,), s.take(f"{ours}.linear1.bias"))
    s.put(f"{key}.layers.1.weight", (dim, hidden), s.take(f"{ours}.linear2.weight"))
    s.put(f"{key}.layers.1.bias", (dim,), s.take(f"{ours}.linear2.bias"))


def gn_conv_module(s: SourceState, key: str, ours: str, cin: int, cout: int, k: int, bias: bool) -> None:
    """mmcv's ConvModule with norm_cfg GN: conv (bias as given), gn (weight, bias; no statistics)."""
    s.conv(f"{key}.conv", f"{ours}.0", cin, cout, k, bias=bias)
    s.ln(f"{key}.gn", f"{ours}.1", cout)


def mmseg_mask2former(model, num_classes, stem_channels=64, base=64, dim=256, encoder_layers=6, encoder_ffn=1024,
                      decoder_layers=9, decoder_ffn=2048, queries=100, heads=8, points=4, levels=3,
                      layers=R50) -> SourceState:
    """configs/mask2former/mask2former_r50_8xb2-90k_cityscapes-512x1024.py and mask2former_r50_8xb2-160k_ade20k-
    512x512.py (11d1ed8): backbone ResNet(depth 50, deep_stem=False, style 'pytorch'), Mask2FormerHead(in_channels
    256..2048, feat_channels = out_channels = 256, num_queries 100, num_transformer_feat_level 3, pixel_decoder GN
    32 with a 6-layer encoder (MultiScaleDeformableAttention 8 heads, 3 levels, 4 points; FFN 1024),
    enforce_decoder_input_project False, a 9-layer decoder (8 heads, FFN 2048)).
    mmdet/models/layers/msdeformattn_pixel_decoder.py (14e758a): input_convs.{i} (ConvModule 1x1, bias=True, GN;
    i = 0 reads the coarsest level), encoder (Mask2FormerTransformerEncoder: layers.{j} =
    DeformableDetrTransformerEncoderLayer: self_attn (mmcv's MultiScaleDeformableAttention: sampling_offsets (H*L*P*2,
    D), attention_weights (H*L*P, D), value_proj, output_proj), ffn, norms.{0,1}), level_encoding (nn.Embedding(L, D)),
    lateral_convs.0 / output_convs.0 (ConvModules 1x1 / 3x3 without bias, GN), mask_feature (Conv2d 1x1 with bias).
    mmdet/models/dense_heads/mask2former_head.py (3.x) and mmdet/models/layers/transformer/mask2former_layers.py
    (19bceba), detr_layers.py (7ece1f0): transformer_decoder.layers.{i} (self_attn, cross_attn: mmcv
    MultiheadAttention; ffn; norms.{0,1,2}), transformer_decoder.post_norm; decoder_input_projs Identities (no
    tensors); query_embed, query_feat, level_embed (nn.Embedding); mask_embed (Linear, ReLU, Linear, ReLU, Linear);
    cls_embed (Linear D -> K + 1), rebuilt by mmseg/models/decode_heads/mask2former_head.py (fa05a05)."""
    s = SourceState(model)
    c = mmseg_resnet_v1c(s, layers, stem_channels, base, deep_stem=False)  # test_checkpoints_mmseg_variants.py
    widths = [c // 8, c // 4, c // 2, c]
    pd, ours = "decode_head.pixel_decoder", "head.pixel_decoder"
    for i, cin in enumerate(reversed(widths[1:])):
        gn_conv_module(s, f"{pd}.input_convs.{i}", f"{ours}.input_proj.{i}", cin, dim, 1, bias=True)
    s.put(f"{pd}.level_encoding.weight", (levels, dim), s.take(f"{ours}.level_embed"))
    for j in range(encoder_layers):
        mm, o = f"{pd}.encoder.layers.{j}", f"{ours}.encoder.{j}"
        for name, out in (("sampling_offsets", heads * levels * points * 2), ("attention_weights", heads * levels * points),
                          ("value_proj", dim), ("output_proj", dim)):
            s.put(f"{mm}.self_attn.{name}.weight", (out, dim), s.take(f"{o}.self_attn.{name}.weight"))
            s.put(f"{mm}.self_attn.{name}.bias", (out,), s.take(f"{o}.self_attn.{name}.bias"))
        mmcv_ffn(s, f"{mm}.ffn", o, dim, encoder_ffn)
        s.ln(f"{mm}.norms.0", f"{o}.norm1", dim)
        s.ln(f"{mm}.norms.1", f"{o}.norm2", dim)
    gn_conv_module(s, f"{pd}.lateral_convs.0", f"{ours}.lateral_conv", widths[0], dim, 1, bias=False)
    gn_conv_module(s, f"{pd}.output_convs.0", f"{ours}.output_conv", dim, dim, 3, bias=False)
    s.conv(f"{pd}.mask_feature", f"{ours}.mask_features", dim, dim, 1, bias=True)
    td, ours = "decode_head.transformer_decoder", "head.decoder"
    for i in range(decoder_layers):
        mm, o = f"{td}.layers.{i}", f"{ours}.layers.{i}"
        mmseg_mha(s, f"{mm}.self_attn", f"{o}.self_attn", dim)
        mmseg_mha(s, f"{mm}.cross_attn", f"{o}.cross_attn", dim)
        mmcv_ffn(s, f"{mm}.ffn", o, dim, decoder_ffn)
        # Mask2FormerTransformerDecoderLayer.forward: cross_attn, norms[0], self_attn, norms[1], ffn, norms[2]
        for k, norm in enumerate(("norm1", "norm2", "norm3")):
            s.ln(f"{mm}.norms.{k}", f"{o}.{norm}", dim)
    s.ln(f"{td}.post_norm", f"{ours}.decoder_norm", dim)
    for name, n in (("query_embed", queries), ("query_feat", queries), ("level_embed", levels)):
        s.put(f"decode_head.{name}.weight", (n, dim), s.take(f"{ours}.{name}.weight"))
    for k in (0, 2, 4):
        s.put(f"decode_head.mask_embed.{k}.weight", (dim, dim), s.take(f"{ours}.mask_embed.{k}.weight"))
        s.put(f"decode_head.mask_embed.{k}.bias", (dim,), s.take(f"{ours}.mask_embed.{k}.bias"))
    s.put("decode_head.cls_embed.weight", (num_classes + 1, dim), s.take(f"{ours}.class_embed.weight"))
    s.put("decode_head.cls_embed.bias", (num_classes + 1,), s.take(f"{ours}.class_embed.bias"))
    return s


# mask2former.py's _NARROW test widths
_SMALL = dict(stem_channels=16, base=16, dim=32, encoder_layers=1, encoder_ffn=64, decoder_layers=3, decoder_ffn=64,
              queries=10, heads=2, points=2)
CASES = {"mask2former_r50": (mmseg_mask2former, {}, _SMALL, ())}
# Parameters of the source's deployed network, summed over the shapes the writer gives, at the Cityscapes file's 19
# and the ADE20K file's 150 classes (mmseg's README gives none).
SOURCE_PARAMS = {19: 44_007_700, 150: 44_041_367}


def test_source_checkpoint_imports_with_the_same_outputs(tmp_path):
    """Mask2Former is in mmseg 1.x only: an mmengine checkpoint."""
    source_model, s, kwargs, _ = small_source(CASES, "mask2former_r50")
    imported, report, _ = round_trip(tmp_path, "mask2former_r50", s, source_model, "mmseg 1.x", **kwargs)
    assert report.names == "mmseg" and report.loaded == len(s.used) and not report.reshaped and not report.left_out
    assert len(report.split) == 2 * 2 * 3  # in_proj weight and bias of two attentions in each of 3 layers
    assert count_parameters(imported) == s.parameters(skip=())


@pytest.mark.parametrize("num_classes", sorted(SOURCE_PARAMS))
def test_parameter_count_is_the_source_configs(num_classes):
    """At full width (shapes only), the source network the writer lays out from the config has the parameters of
    mask2former_r50, and every one of our tensors has its source tensor."""
    assert_source_count(CASES, "mask2former_r50", num_classes, SOURCE_PARAMS[num_classes])


def test_mmseg_cross_attention_is_torch_multihead_attention_on_the_same_tensors(tmp_path):
    """mmcv's MultiheadAttention runs nn.MultiheadAttention(query + query_pos, key + key_pos, value, attn_mask) with
    the packed in_proj; ours, loaded through the table, computes the same, masked positions included."""
    source_model, s, kwargs, _ = small_source(CASES, "mask2former_r50")
    imported, _, _ = round_trip(tmp_path, "mask2former_r50", s, source_model, "mmseg 1.x", **kwargs)
    attn = imported.head.decoder.layers[1].cross_attn
    mha = torch.nn.MultiheadAttention(32, 2, batch_first=True).eval()
    prefix = "decode_head.transformer_decoder.layers.1.cross_attn.attn."
    mha.load_state_dict({k[len(prefix):]: v for k, v in s.state.items() if k.startswith(prefix)})
    torch.manual_seed(5)
    q, k, v = torch.randn(2, 10, 32), torch.randn(2, 24, 32), torch.randn(2, 24, 32)
    masked = torch.rand(2, 10, 24) < 0.3  # True: not attended, as mmdet's attn_mask
    with torch.no_grad():
        ours = attn(q, k, v, (masked.float() * imported.head.decoder.MASKED)[:, None])
        theirs = mha(q, k, v, attn_mask=masked.repeat_interleave(2, dim=0), need_weights=False)[0]
    assert torch.allclose(ours, theirs, atol=1e-5)
