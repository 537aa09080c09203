"""mmsegmentation model-zoo layouts of the ViT families: DPT (dpt_vit_b16_mmseg) and Segmenter
(segmenter_vit_{t,s,b,l}_mmseg), the families' MMSEG_KEYS tables.

As in tests/test_checkpoints_mmseg.py (whose SourceState, randomised, round_trip and save this file uses), each
writer spells out mmseg's key names and shapes from its code and configs (cited at each writer), key by key and
independently of the tables, filled with the tensors of one of our randomly initialised models; imported into a
fresh model the file must give that model's outputs exactly, and the parameter count summed over the written
shapes (the source's deployed network) must be the imported model's, at full size with the zoo files' 150 ADE20K
classes.

Why these are ``_mmseg`` variants and not tables on dpt_vit_b16 / segmenter_vit_*: mmseg's ViT resizes its
position embeddings bicubically (``interpolate_mode='bicubic'``; DPT's from a 224-trained 14 x 14 grid at every
size), with other LayerNorm eps than ours (DPT: 1e-5, ours 1e-6; Segmenter's encoder: 1e-6, ours rstrudel's
1e-5); mmseg's DPTHead ends at stride 2 and leaves the x2 to the EncoderDecoder's resize (align_corners=False,
ours upsamples with True inside the head), and has no residual unit for the coarsest fusion block's absent skip
(models/dpt.py, models/segmenter.py say more). mmseg's DPT fusion blocks upsample with align_corners=True, as
ours: FeatureFusionBlock's default, which DPTHead (bf06ace) does not override. The bicubic resize is written as
two interpolation matrices (models/backbones/vit.py ``bicubic_matrix``), checked here against F.interpolate."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_checkpoints_mmseg import SourceState, assert_source_count, randomised, round_trip, small_source

from models import count_parameters, get_spec
from models.backbones.vit import resize_pos_embed

ADE20K_CLASSES = 150

# ------------------------------------------------------------------------------------ the sources' layouts


def mmseg_vit(s: SourceState, ours: str, dim: int, depth: int, grid: int, patch: int = 16,
              final_norm: bool = False, prefix: str = "backbone") -> None:
    """mmseg/models/backbones/vit.py (886c189, 1.x; 00bf9f6, 0.x): patch_embed.projection (PatchEmbed of
    mmseg/models/utils/embed.py: a Conv2d with bias, kernel = stride = patch), cls_token (1, 1, D), pos_embed
    (1, 1 + grid^2, D) for img_size / patch = grid, layers.{i} = TransformerEncoderLayer: ln1, attn.attn (mmcv's
    MultiheadAttention wrapping nn.MultiheadAttention: in_proj_weight (3D, D), in_proj_bias, out_proj), ln2,
    ffn.layers.0.0 (Linear D -> 4D) and ffn.layers.1 (4D -> D) (mmcv's FFN); ln1 the final norm (final_norm).
    Ours at ``ours`` (a VisionTransformer)."""
    s.conv(f"{prefix}.patch_embed.projection", f"{ours}.patch_embed.proj", 3, dim, patch, bias=True)
    s.put(f"{prefix}.cls_token", (1, 1, dim), s.take(f"{ours}.cls_token"))
    s.put(f"{prefix}.pos_embed", (1, 1 + grid * grid, dim), s.take(f"{ours}.pos_embed"))
    mmseg_transformer_layers(s, f"{prefix}.layers", f"{ours}.blocks", dim, depth)
    if final_norm:
        s.ln(f"{prefix}.ln1", f"{ours}.norm", dim)


def mmseg_transformer_layers(s: SourceState, key: str, ours: str, dim: int, depth: int) -> None:
    """mmseg's TransformerEncoderLayers (backbones/vit.py) at ``key``.{i}; ours Blocks at ``ours``.{i}."""
    for i in range(depth):
        b, o = f"{key}.{i}", f"{ours}.{i}"
        s.ln(f"{b}.ln1", f"{o}.norm1", dim)
        s.put(f"{b}.attn.attn.in_proj_weight", (3 * dim, dim), s.take(f"{o}.attn.qkv.weight"))
        s.put(f"{b}.attn.attn.in_proj_bias", (3 * dim,), s.take(f"{o}.attn.qkv.bias"))
        s.put(f"{b}.attn.attn.out_proj.weight", (dim, dim), s.take(f"{o}.attn.proj.weight"))
        s.put(f"{b}.attn.attn.out_proj.bias", (dim,), s.take(f"{o}.attn.proj.bias"))
        s.ln(f"{b}.ln2", f"{o}.norm2", dim)
        s.put(f"{b}.ffn.layers.0.0.weight", (4 * dim, dim), s.take(f"{o}.mlp.fc1.weight"))
        s.put(f"{b}.ffn.layers.0.0.bias", (4 * dim,), s.take(f"{o}.mlp.fc1.bias"))
        s.put(f"{b}.ffn.layers.1.weight", (dim, 4 * dim), s.take(f"{o}.mlp.fc2.weight"))
        s.put(f"{b}.ffn.layers.1.bias", (dim,), s.take(f"{o}.mlp.fc2.bias"))


def mmseg_dpt(model, num_classes, dim=768, depth=12, grid=14, post=(96, 192, 384, 768), channels=256) -> SourceState:
    """configs/_base_/models/dpt_vit-b16.py (30aabc4): VisionTransformer(img_size 224, embed_dims 768, 12 layers,
    out_indices (2, 5, 8, 11), final_norm False, output_cls_token), DPTHead(channels 256, post_process_channels
    (96, 192, 384, 768), readout_type 'project'). mmseg/models/decode_heads/dpt_head.py (bf06ace):
    reassemble_blocks = readout_projects.{i}.0 (Linear 2D -> D), projects.{i} (1x1 ConvModule, no norm: conv
    with bias), resize_layers.{0, 1, 3} (ConvTranspose2d k4 s4, k2 s2; 2 an Identity; Conv2d 3x3 s2); convs.{i}
    (3x3 ConvModule, bias=False, no norm); fusion_blocks.{j}: project (1x1 ConvModule with bias), res_conv_unit1
    (None in block 0) and res_conv_unit2, PreActResidualConvUnits of two ConvModules (conv bias-free, bn);
    project (3x3 ConvModule with BN); conv_seg (BaseDecodeHead's 1x1)."""
    s = SourceState(model)
    mmseg_vit(s, "backbone.vit", dim, depth, grid)
    rb = "decode_head.reassemble_blocks"
    for i, c in enumerate(post):
        s.put(f"{rb}.readout_projects.{i}.0.weight", (dim, 2 * dim),
              s.take(f"backbone.readout.{i}.project.0.weight"))
        s.put(f"{rb}.readout_projects.{i}.0.bias", (dim,), s.take(f"backbone.readout.{i}.project.0.bias"))
        s.conv(f"{rb}.projects.{i}.conv", f"head.reassemble.{i}.0", dim, c, 1, bias=True)
        if i in (0, 1):  # ConvTranspose2d weight: (in, out, k, k)
            k = 4 if i == 0 else 2
            s.put(f"{rb}.resize_layers.{i}.weight", (c, c, k, k), s.take(f"head.reassemble.{i}.1.weight"))
            s.put(f"{rb}.resize_layers.{i}.bias", (c,), s.take(f"head.reassemble.{i}.1.bias"))
        elif i == 3:
            s.conv(f"{rb}.resize_layers.{i}", f"head.reassemble.{i}.1", c, c, 3, bias=True)
        s.conv(f"decode_head.convs.{i}.conv", f"head.project.{i}", c, channels, 3)
    for j in range(4):
        fb, ours = f"decode_head.fusion_blocks.{j}", f"head.fusion.{3 - j}"
        s.conv(f"{fb}.project.conv", f"{ours}.out_conv", channels, channels, 1, bias=True)
        for unit, o in (("res_conv_unit1", "skip_unit"), ("res_conv_unit2", "unit")):
            if unit == "res_conv_unit1" and j == 0:
                continue
            for k in (1, 2):
                s.conv_module(f"{fb}.{unit}.conv{k}", f"{ours}.{o}.conv{k}", channels, channels, 3)
    s.conv_module("decode_head.project", "head.classifier.0", channels, channels, 3)
    s.conv("decode_head.conv_seg", "head.classifier.2", channels, num_classes, 1, bias=True)
    return s


def mmseg_segmenter(model, num_classes, dim=768, depth=12, grid=32, layers=2) -> SourceState:
    """configs/_base_/models/segmenter_vit-b16_mask.py (7d7a3e3; T, S, L: configs/segmenter/segmenter_vit-{t,s,l}_
    mask_8xb1-160k_ade20k-512x512.py, 3f8d34e and superliuweilin/mmsegmentation 003df15: widths 192, 384, 1024, L 24
    layers at img_size 640): VisionTransformer(img_size 512, final_norm, with_cls_token), SegmenterMaskTransformer
    Head(num_layers 2, embed_dims = in_channels). mmseg/models/decode_heads/segmenter_mask_head.py (0ab294f):
    layers.{i} TransformerEncoderLayers, dec_proj (Linear with bias), cls_emb (1, K, D), patch_proj and
    classes_proj (Linear, bias=False: (out, in) weights), decoder_norm, mask_norm (LayerNorm over K), and
    BaseDecodeHead's conv_seg (1x1 conv, unused by this head's forward)."""
    s = SourceState(model)
    mmseg_vit(s, "backbone", dim, depth, grid, final_norm=True)
    mmseg_transformer_layers(s, "decode_head.layers", "head.blocks", dim, layers)
    s.put("decode_head.dec_proj.weight", (dim, dim), s.take("head.proj_dec.weight"))
    s.put("decode_head.dec_proj.bias", (dim,), s.take("head.proj_dec.bias"))
    s.put("decode_head.cls_emb", (1, num_classes, dim), s.take("head.cls_emb"))
    s.put("decode_head.patch_proj.weight", (dim, dim), s.take("head.proj_patch").t())  # ours (in, out)
    s.put("decode_head.classes_proj.weight", (dim, dim), s.take("head.proj_classes").t())
    s.ln("decode_head.decoder_norm", "head.decoder_norm", dim)
    s.ln("decode_head.mask_norm", "head.mask_norm", num_classes)
    s.extra("decode_head.conv_seg.weight", (num_classes, dim, 1, 1))
    s.extra("decode_head.conv_seg.bias", (num_classes,))
    return s


_DPT_SMALL = dict(dim=64, depth=4, grid=4, post=(16, 32, 48, 64), channels=32)  # dpt.py's test_kwargs
_SEGMENTER_SMALL = dict(dim=64, depth=2, grid=4)  # segmenter.py's _SMALL
_SEGMENTER = {"t": dict(dim=192), "s": dict(dim=384), "b": {}, "l": dict(dim=1024, depth=24, grid=40)}
# name -> (writer, the source config at full size, the same at the registry's test_kwargs widths, what the source
# file adds beside the deployed network)
CASES = {
    "dpt_vit_b16_mmseg": (mmseg_dpt, {}, _DPT_SMALL, ()),
    **{f"segmenter_vit_{v}_mmseg": (mmseg_segmenter, full, _SEGMENTER_SMALL, ("decode_head.conv_seg.",))
       for v, full in _SEGMENTER.items()},
}
# Parameters of the source's deployed network at 150 classes, summed over the shapes the writers give (mmseg
# publishes no parameter counts).
SOURCE_PARAMS = {"dpt_vit_b16_mmseg": 109_705_046, "segmenter_vit_t_mmseg": 6_713_388,
                 "segmenter_vit_s_mmseg": 26_033_964, "segmenter_vit_b_mmseg": 102_497_580,
                 "segmenter_vit_l_mmseg": 333_234_476}


@pytest.mark.parametrize("name, meta", [("dpt_vit_b16_mmseg", "mmseg 1.x"), ("segmenter_vit_b_mmseg", "mmseg 0.x")])
def test_source_checkpoint_imports_with_the_same_outputs(name, meta, tmp_path):
    source_model, s, kwargs, extra = small_source(CASES, name)
    imported, report, _ = round_trip(tmp_path, name, s, source_model, meta, **kwargs)
    assert report.names == "mmseg" and report.loaded == len(s.used) and not report.reshaped
    assert sorted(report.left_out) == sorted(k for k in s.state if extra and k.startswith(extra))
    assert count_parameters(imported) == s.parameters(skip=extra)


@pytest.mark.parametrize("name", sorted(CASES))
def test_parameter_count_is_the_source_configs(name):
    """At full width (shapes only) with the zoo files' 150 classes, the source network the writer lays out from
    the config has the parameters of the registered variant, and every one of our tensors has its source tensor."""
    assert_source_count(CASES, name, ADE20K_CLASSES, SOURCE_PARAMS[name])


@pytest.mark.parametrize("grid, size", [((14, 14), (32, 32)), ((14, 14), (14, 14)), ((4, 6), (3, 10)), ((32, 32), (40, 24))])
def test_bicubic_matmul_is_mmseg_bicubic_resize(grid, size):
    """mmseg's resize_pos_embed (backbones/vit.py): F.interpolate(mode='bicubic', align_corners=False); ours as two
    interpolation matrices agrees to float rounding, and is exactly the identity at the training grid."""
    torch.manual_seed(8)
    g = torch.randn(1, 16, *grid)
    ours = resize_pos_embed(g, size, "bicubic_matmul")
    theirs = F.interpolate(g, size=size, mode="bicubic", align_corners=False)
    assert torch.allclose(ours, theirs, atol=1e-5) and (grid != size or torch.equal(ours, g))


def test_mmseg_dpt_head_runs_mmseg_forward():
    """mmseg's DPTHead.forward (dpt_head.py bf06ace) written out on the variant's layers: reassemble, convs,
    fusion_blocks[0] on the coarsest level alone, then each finer level (PreActResidualConvUnit: x + conv2(conv1(x))
    with ReLU before each conv, FeatureFusionBlock: x2 bilinear, align_corners=True, then the 1x1 project), project,
    conv_seg at stride 2; the EncoderDecoder's resize to the input with align_corners=False."""
    model = randomised("dpt_vit_b16_mmseg", 0, **get_spec("dpt_vit_b16_mmseg").test_kwargs)
    head = model.head

    def unit(u, x):
        return x + u.conv2(F.relu(u.conv1(F.relu(x))))

    def fusion(block, x, skip=None):
        if skip is not None:
            x = x + unit(block.skip_unit, skip)
        x = F.interpolate(unit(block.unit, x), scale_factor=2, mode="bilinear", align_corners=True)
        return block.out_conv(x)

    torch.manual_seed(9)
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        x = [p(r(f)) for f, r, p in zip(model.backbone(images), head.reassemble, head.project)]
        out = fusion(head.fusion[3], x[-1])
        for i in (2, 1, 0):
            out = fusion(head.fusion[i], out, x[i])
        logits = head.classifier(out)
        assert logits.shape[-2:] == (32, 48) and head.fusion[3].skip_unit is None
        expected = F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False)
        assert torch.equal(model(images), expected)
