"""DPT, the Dense Prediction Transformer: a ViT encoder read at four depths, reassembled into an image-like
pyramid and fused by a convolutional decoder.

Ranftl, Bochkovskiy, Koltun. "Vision Transformers for Dense Prediction." ICCV 2021.
https://arxiv.org/abs/2103.13413 (reference code: https://github.com/isl-org/DPT)

- Encoder: the shared ViT (models/backbones/vit.py), raw block outputs (no final norm) of blocks 3, 6, 9 and 12
  (``out_indices`` 2, 5, 8, 11) for ViT-B/16. DPT-Hybrid embeds patches with ResNet-50 stages instead (a 1x1
  projection of the stride-16 stage), runs the 12 ViT-B blocks on them and reads blocks 9 and 12; its two finest
  levels are the ResNet's stride-4 and stride-8 stages, unchanged (Section 3, "Hybrid"): ``dpt_hybrid_r50``.
  Its GroupNorm exports as InstanceNormalization with identical constants the exporter merges; the INT8
  conversion gives each reader its own copy (export/compile/precision.py ``unshare_initializers``).
- Reassemble (Section 3, Eq. 2-5): Read, the class ("readout") token handled by "project" (concatenated to every
  patch token, Linear 2D -> D + GELU), the paper's best in its ablation and what both the reference code and
  mmsegmentation's DPT config use; Concatenate, tokens back to the (h, w) grid; Resample, a 1x1 conv to the
  level's width and a transposed conv (x4, x2), nothing, or a 3x3 stride-2 conv, to strides 4, 8, 16 and 32.
- Fusion (Fig. 1, right): from the coarsest level, a residual conv unit on the skip, addition, a second unit,
  x2 bilinear upsampling (align_corners=True, as the reference) and a 1x1 conv; each level first projected to
  ``features`` (256) channels by a bias-free 3x3 conv. BatchNorm in the units, as the segmentation models.
- Head: 3x3 conv-BN-ReLU, dropout 0.1, 1x1 classifier, x2 bilinear upsampling: logits at the input size.

Parameter names are our own; the reference's map one to one (``pretrained.act_postprocess{i}`` ->
``head.reassemble.{i-1}``, ``scratch.layer{i}_rn`` -> ``head.project.{i-1}``, ``scratch.refinenet{i}`` ->
``head.fusion.{i-1}``, ``scratch.output_conv`` -> ``head.classifier``). The coarsest fusion block keeps its
unused first residual unit, as the reference does, so its checkpoints load strictly; the reference's auxiliary
head (``auxlayer``, unused by its forward) is left out. ``dpt_vit_b16_mmseg`` is mmsegmentation's DPT-Base, which differs in ways that change outputs (see its section at the end). DPT-Hybrid's ResNet uses weight-standardised convs
(timm's ``StdConv2dSame``); at inference that is a fixed reparametrisation of each weight, applied once when a
checkpoint is converted, so the graph has plain convs.

Deployment notes: only Conv, ConvTranspose, MatMul, LayerNormalization, Softmax, GELU's Erf, Resize (linear) and
shape arithmetic, all at dynamic H/W (multiples of 32: the stride-2 conv and the x2 upsampling must meet the
stride-16 grid exactly).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.resnet import ResNet
from .backbones.vit import VisionTransformer, mmseg_vit_keys
from .base import ConvNormAct, SegmentationModel, init_conv_bn
from .keymaps import KeyMap, conv_norm
from .registry import register_model

READOUTS = ("ignore", "project")


class ProjectReadout(nn.Module):
    """The "project" readout: every patch token concatenated with the class token, Linear 2D -> D, GELU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]  # (B, hw, D)
        readout = tokens[:, :1].expand_as(patches)  # (B, hw, D)
        return self.project(torch.cat([patches, readout], dim=-1))  # (B, hw, D)


class ReadoutViT(nn.Module):
    """A ViT whose block outputs are returned as maps (B, D, H/p, W/p) after the readout step: "project", or
    "ignore" (the class token dropped, as the ViT backbone itself returns them)."""

    def __init__(self, vit: VisionTransformer, readout: str = "project") -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout '{readout}': expected one of {', '.join(READOUTS)}")
        if readout == "project" and vit.num_prefix_tokens != 1:
            raise ValueError("readout 'project' reads the class token; build the ViT with class_token=True")
        self.vit = vit
        dim = vit.out_channels[0]
        self.readout = nn.ModuleList(ProjectReadout(dim) for _ in vit.out_indices) if readout == "project" else None
        self.out_channels = list(vit.out_channels)
        self.strides = list(vit.strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.read(self.vit.patch_embed(x))

    def read(self, embedded: torch.Tensor) -> list[torch.Tensor]:
        """The readout maps from embedded patches (B, D, h, w)."""
        b, d, h, w = embedded.shape
        maps = []
        for i, tokens in enumerate(self.vit.forward_tokens(embedded)):  # (B, 1 + hw, D)
            tokens = self.readout[i](tokens) if self.readout is not None else tokens[:, self.vit.num_prefix_tokens:]
            maps.append(tokens.transpose(1, 2).reshape(b, d, h, w))  # (B, D, h, w)
        return maps


class ResidualConvUnit(nn.Module):
    """ReLU -> 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus the input (pre-activation, as RefineNet's)."""

    def __init__(self, channels: int, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 3, norm_layer=norm_layer, act_layer=None)
        self.conv2 = ConvNormAct(channels, channels, 3, norm_layer=norm_layer, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds the residual-unit-refined skip to the coarser path, refines, upsamples x2 and projects (1x1).
    ``skip_unit=False`` builds no unit for a skip (the coarsest block, which has none, as mmsegmentation does)."""

    def __init__(self, channels: int, norm_layer: type[nn.Module] = nn.BatchNorm2d, skip_unit: bool = True) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels, norm_layer) if skip_unit else None
        self.unit = ResidualConvUnit(channels, norm_layer)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)  # (B, F, h, w)
        x = self.unit(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)  # (B, F, 2h, 2w)
        return self.out_conv(x)


def _resample(channels: int, factor: int) -> nn.Module:
    """The Resample step to a level ``factor`` times finer (> 1) or coarser (< 1) than the token grid: transposed
    conv with kernel = stride for x4 and x2, nothing for x1, a 3x3 stride-2 conv for x1/2."""
    if factor > 1:
        return nn.ConvTranspose2d(channels, channels, int(factor), int(factor))
    if factor == 1:
        return nn.Identity()
    if factor == 0.5:
        return nn.Conv2d(channels, channels, 3, 2, 1)
    raise ValueError(f"resampling by {factor}: expected 4, 2, 1 or 0.5")


class DPTHead(nn.Module):
    """Reassemble (Concatenate's 1x1 conv and Resample) -> project to ``features`` -> fusion -> head.

    ``reassemble_channels[i]`` is the width level i is reassembled to, or None for a level that is already an
    image-like map at its target stride (DPT-Hybrid's ResNet stages), which passes unchanged. Returns logits at
    the input size (the head's final x2 upsampling from the finest fused level, at stride 2), or at stride 2
    with ``upsample_logits=False`` (mmsegmentation's DPTHead, which leaves the x2 to the model's resize to the
    input: bilinear with align_corners=False, another interpolation than the reference's align_corners=True).
    ``coarsest_skip_unit=False`` leaves out the coarsest fusion block's residual unit for a skip it never gets
    (the reference keeps it unused; mmsegmentation sets it to None)."""

    LEVEL_STRIDES = (4, 8, 16, 32)

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int],
                 reassemble_channels: Sequence[int | None], num_classes: int, features: int = 256,
                 dropout: float = 0.1, norm_layer: type[nn.Module] = nn.BatchNorm2d, upsample_logits: bool = True,
                 coarsest_skip_unit: bool = True) -> None:
        super().__init__()
        self.upsample_logits = upsample_logits
        self.output_stride = 1 if upsample_logits else 2
        self.reassemble = nn.ModuleList()
        widths = []
        for c, s, r, target in zip(in_channels, in_strides, reassemble_channels, self.LEVEL_STRIDES):
            if r is None:
                if s != target:
                    raise ValueError(f"a level passed unchanged must be at its stride {target}; got stride {s}")
                self.reassemble.append(nn.Identity())
                widths.append(c)
            else:
                self.reassemble.append(nn.Sequential(nn.Conv2d(c, r, 1), _resample(r, s / target)))
                widths.append(r)
        self.project = nn.ModuleList(nn.Conv2d(w, features, 3, padding=1, bias=False) for w in widths)
        self.fusion = nn.ModuleList(FusionBlock(features, norm_layer, coarsest_skip_unit or i < len(widths) - 1)
                                    for i in range(len(widths)))
        self.classifier = nn.Sequential(
            ConvNormAct(features, features, 3, norm_layer=norm_layer),
            nn.Dropout(dropout),
            nn.Conv2d(features, num_classes, 1),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        levels = [p(r(x)) for x, r, p in zip(features, self.reassemble, self.project)]  # (B, F, H/s_i, W/s_i)
        x = self.fusion[-1](levels[-1])  # (B, F, H/16, W/16)
        for i in range(len(levels) - 2, -1, -1):
            x = self.fusion[i](x, levels[i])  # (B, F, H/s_i * 2, W/s_i * 2)
        x = self.classifier(x)  # (B, K, H/2, W/2)
        if not self.upsample_logits:
            return x
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)  # (B, K, H, W)


class DPT(SegmentationModel):
    """An encoder returning four maps (``ReadoutViT``; DPT-Hybrid's ``HybridViT`` below) + ``DPTHead``."""

    def __init__(self, encoder: nn.Module, num_classes: int, reassemble_channels: Sequence[int | None],
                 features: int = 256, **head: bool) -> None:
        head = DPTHead(encoder.out_channels, encoder.strides, reassemble_channels, num_classes, features, **head)
        head.apply(init_conv_bn)
        super().__init__(encoder, head, num_classes)


# Checkpoints trained elsewhere. Hugging Face transformers' DPTForSemanticSegmentation (transformers 5.23.0,
# models/dpt/modeling_dpt.py; the hub's Intel/dpt-large-ade, a ViT-L/16 with 150 classes: dpt_vit_l16). Op for op
# the network is ours when the config has use_batch_norm_in_fusion_residual=True (what its converter,
# convert_dpt_to_pytorch.py, sets for the ADE20K checkpoint; the residual convs are then bias-free, as ours):
# separate query/key/value projections are our qkv Linear's three parts; its fusion stage runs coarsest first, so
# its layers.j is our fusion.{3-j}; its DPTModel.layernorm (applied to the last hidden state only, which the
# segmentation head never reads) and the training-only auxiliary_head have no counterpart. Its ViT LayerNorm eps
# is 1e-12 (DPTConfig's default) where ours is timm's 1e-6: with activations of unit scale this changes the
# logits by far less than 1e-4 (tests/test_checkpoints.py measures it). Configs without BatchNorm in the residual
# units (the depth checkpoints, which also have a depth head) do not fit and say so by their missing keys.
# DPT-Hybrid (is_hybrid=True) does not map: transformers' BiT backbone pads its stride-2 convs and max pooling
# "SAME" (asymmetric, 0 before and 1 after on even sizes; the 7x7 stem 2 and 3) where our ResNet pads
# symmetrically, and standardizes each conv weight at run time; the only hybrid hub checkpoint,
# Intel/dpt-hybrid-midas, is a depth model besides.
_HF_LAYER = r"dpt\.encoder\.layer\.(\d+)\."
_OUR_BLOCK = r"backbone.vit.blocks.\1."
_HF_FUSION = r"neck\.fusion_stage\.layers\.{j}\."
# Within a fusion layer: residual_layer1 refines the skip, residual_layer2 the sum; convolutionN and batch_normN
# are the conv and the norm of our unit's convN.
_FUSION = tuple((rf"residual_layer{r}\.{hf}(1|2)\.(\w+)", rf"{unit}.conv\1.{i}.\2")
                for r, unit in ((1, "skip_unit"), (2, "unit")) for hf, i in (("convolution", 0), ("batch_norm", 1)))
HF_KEYS = KeyMap("huggingface", (
    (r"dpt\.embeddings\.cls_token", "backbone.vit.cls_token"),
    (r"dpt\.embeddings\.position_embeddings", "backbone.vit.pos_embed"),
    (r"dpt\.embeddings\.patch_embeddings\.projection\.(\w+)", r"backbone.vit.patch_embed.proj.\1"),
    (_HF_LAYER + r"layernorm_before\.(\w+)", _OUR_BLOCK + r"norm1.\2"),
    (_HF_LAYER + r"attention\.attention\.query\.(\w+)", _OUR_BLOCK + r"attn.qkv.\2#0"),
    (_HF_LAYER + r"attention\.attention\.key\.(\w+)", _OUR_BLOCK + r"attn.qkv.\2#1"),
    (_HF_LAYER + r"attention\.attention\.value\.(\w+)", _OUR_BLOCK + r"attn.qkv.\2#2"),
    (_HF_LAYER + r"attention\.output\.dense\.(\w+)", _OUR_BLOCK + r"attn.proj.\2"),
    (_HF_LAYER + r"layernorm_after\.(\w+)", _OUR_BLOCK + r"norm2.\2"),
    (_HF_LAYER + r"intermediate\.dense\.(\w+)", _OUR_BLOCK + r"mlp.fc1.\2"),
    (_HF_LAYER + r"output\.dense\.(\w+)", _OUR_BLOCK + r"mlp.fc2.\2"),
    (r"neck\.reassemble_stage\.readout_projects\.(\d+)\.0\.(\w+)", r"backbone.readout.\1.project.0.\2"),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.projection\.(\w+)", r"head.reassemble.\1.0.\2"),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.resize\.(\w+)", r"head.reassemble.\1.1.\2"),
    (r"neck\.convs\.(\d+)\.weight", r"head.project.\1.weight"),
    *((_HF_FUSION.format(j=j) + hf, f"head.fusion.{3 - j}." + ours) for j in range(4)
      for hf, ours in (*_FUSION, (r"projection\.(\w+)", r"out_conv.\1"))),
    (r"head\.head\.0\.weight", "head.classifier.0.0.weight"),
    (r"head\.head\.1\.(\w+)", r"head.classifier.0.1.\1"),
    (r"head\.head\.4\.(\w+)", r"head.classifier.2.\1"),
), drop=(r"dpt\.layernorm\.\w+", r"auxiliary_head\..+"),
   note="transformers DPTForSemanticSegmentation (use_batch_norm_in_fusion_residual=True)")
CHECKPOINT_KEYS = (HF_KEYS,)

# The paper's DPT-Base (ViT-B/16 at 384 x 384, the reference code's "vitb16_384"), reassembled widths 96, 192, 384,
# 768 as the reference code has them, and DPT-Large (ViT-L/16 at 384, "vitl16_384": blocks 6, 12, 18, 24, widths
# 256, 512, 1024, 1024), the architecture of the one public ADE20K checkpoint (Intel/dpt-large-ade).

_SMALL_VIT = dict(embed_dim=64, depth=4, num_heads=2, img_size=64, out_indices=(0, 1, 2, 3))


@register_model("dpt", size_divisor=32, output_stride=1, checkpoints=CHECKPOINT_KEYS,
                test_kwargs=dict(vit=_SMALL_VIT, reassemble_channels=(16, 32, 48, 64), features=32))
def dpt_vit_b16(num_classes: int = 19, vit: dict | None = None, readout: str = "project",
                reassemble_channels: Sequence[int] = (96, 192, 384, 768), features: int = 256) -> nn.Module:
    """DPT-Base: ViT-B/16 at 384, blocks 3, 6, 9, 12, project readout (111.2M parameters with 150 classes)."""
    args = dict(embed_dim=768, depth=12, num_heads=12, img_size=384, out_indices=(2, 5, 8, 11), final_norm=False)
    encoder = ReadoutViT(VisionTransformer(**{**args, **(vit or {}), "final_norm": False}), readout)
    return DPT(encoder, num_classes, reassemble_channels, features)


@register_model("dpt", size_divisor=32, output_stride=1, checkpoints=CHECKPOINT_KEYS,
                test_kwargs=dict(vit=_SMALL_VIT, reassemble_channels=(16, 32, 48, 64), features=32))
def dpt_vit_l16(num_classes: int = 19, vit: dict | None = None, readout: str = "project",
                reassemble_channels: Sequence[int] = (256, 512, 1024, 1024), features: int = 256) -> nn.Module:
    """DPT-Large: ViT-L/16 at 384, blocks 6, 12, 18, 24, project readout (343.3M parameters with 150 classes)."""
    args = dict(embed_dim=1024, depth=24, num_heads=16, img_size=384, out_indices=(5, 11, 17, 23))
    encoder = ReadoutViT(VisionTransformer(**{**args, **(vit or {}), "final_norm": False}), readout)
    return DPT(encoder, num_classes, reassemble_channels, features)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, the norm of BiT's ResNet (timm's ResNetV2) in ViT-Hybrid."""

    def __init__(self, num_channels: int) -> None:
        super().__init__(32, num_channels)


class HybridViT(nn.Module):
    """DPT-Hybrid's encoder (ViT-R50+B/16): ResNet-50 stages 1-3 (3, 4 and 9 bottlenecks, as BiT's hybrid),
    a 1x1 projection of the stride-16 stage into the ViT's tokens, the ViT blocks. Returns the ResNet's stride-4
    and stride-8 stages and the readout maps of the ViT's ``out_indices`` (two: blocks 9 and 12)."""

    def __init__(self, vit: VisionTransformer, readout: str = "project", stage_blocks: Sequence[int] = (3, 4, 9),
                 width: int = 64, norm_layer: type[nn.Module] = GroupNorm32) -> None:
        super().__init__()
        # Three stages (zip in ResNet stops at the shorter schedule): strides 4, 8, 16.
        self.resnet = ResNet(tuple(stage_blocks), output_stride=32, deep_stem=False, stem_width=width,
                             base_width=width, norm_layer=norm_layer)
        self.resnet.apply(init_conv_bn)
        if self.resnet.strides[-1] != vit.patch_size:
            raise ValueError(f"the ResNet's last stage is at stride {self.resnet.strides[-1]}, the ViT's grid at "
                             f"{vit.patch_size}; use three stages and patch_size 16")
        # The patches are the ResNet's stride-16 map: the ViT's patch embedding becomes a 1x1 projection of it.
        vit.patch_embed.proj = nn.Conv2d(self.resnet.out_channels[-1], vit.out_channels[0], 1)
        self.vit = ReadoutViT(vit, readout)
        self.out_channels = self.resnet.out_channels[:2] + self.vit.out_channels
        self.strides = self.resnet.strides[:2] + self.vit.strides

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stages = self.resnet(x)  # (B, 256, H/4, W/4), (B, 512, H/8, W/8), (B, 1024, H/16, W/16)
        return stages[:2] + self.vit.read(self.vit.vit.patch_embed(stages[2]))


# Numerical tests: one bottleneck per ResNet stage, half its widths, the small ViT with two read blocks.
_HYBRID_SMALL = dict(vit=dict(_SMALL_VIT, out_indices=(0, 1)), stage_blocks=(1, 1, 1),
                   reassemble_channels=(None, None, 48, 64), features=32, resnet_width=32)


@register_model("dpt", size_divisor=32, output_stride=1, test_kwargs=_HYBRID_SMALL)
def dpt_hybrid_r50(num_classes: int = 19, vit: dict | None = None, readout: str = "project",
                   stage_blocks: Sequence[int] = (3, 4, 9), resnet_width: int = 64,
                   reassemble_channels: Sequence[int | None] = (None, None, 768, 768),
                   features: int = 256) -> nn.Module:
    """DPT-Hybrid: ResNet-50 stages 1-3 + ViT-B/16 blocks, levels from ResNet stages 1, 2 and blocks 9, 12."""
    args = dict(embed_dim=768, depth=12, num_heads=12, img_size=384, out_indices=(8, 11))
    backbone = VisionTransformer(**{**args, **(vit or {}), "final_norm": False})
    encoder = HybridViT(backbone, readout, stage_blocks, resnet_width)
    return DPT(encoder, num_classes, reassemble_channels, features)


# ------------------------------------------------------------------------------ mmsegmentation's DPT
# mmsegmentation's DPT (configs/_base_/models/dpt_vit-b16.py 30aabc4, the zoo's dpt_vit-b16_8xb2-160k_ade20k-512x512
# / dpt_vit-b16_512x512_160k_ade20k file; mmseg/models/decode_heads/dpt_head.py bf06ace; backbones/vit.py 886c189)
# is the paper's DPT-Base with project readout, but not op for op dpt_vit_b16:
# - its ViT is built for img_size=224 (a 14 x 14 position grid, resized to 32 x 32 at the 512 x 512 training size
#   and at every other size) by bicubic interpolation (``interpolate_mode`` 'bicubic'), with PyTorch's LayerNorm eps
#   1e-5 (norm_cfg dict(type='LN')): pos_embed_mode "bicubic_matmul" (the same bicubic, TensorRT-parsable), 1e-5;
# - DPTHead ends at stride 2 (fusion, ``project`` 3x3 ConvModule, ``conv_seg``) and the EncoderDecoder resizes its
#   logits to the input with the head's align_corners, False (BaseDecodeHead's default; the config sets none):
#   upsample_logits=False, SegmentationModel's resize being that one. Its FeatureFusionBlocks upsample x2 with
#   align_corners=True (their default; DPTHead does not pass its own), as ours;
# - ``fusion_blocks[0].res_conv_unit1 = None``: coarsest_skip_unit=False.
# A FeatureFusionBlock resizes a skip that differs in size from the coarser path (align_corners=False); at the
# sizes the graph accepts (multiples of 32) they always agree. Everything else maps one to one: the readout
# Linear+GELU, ``projects`` (1x1 ConvModules with bias, no norm), ``resize_layers`` (ConvTranspose x4, x2,
# Identity, 3x3 s2 conv), ``convs`` (bias-free 3x3), PreActResidualConvUnits (ReLU-conv-BN twice, bias-free),
# each block's 1x1 ``project``; fusion_blocks.{j} (coarsest first) is our fusion.{3-j}.
_MMSEG_FUSION = tuple(rule for unit, ours in (("res_conv_unit1", "skip_unit"), ("res_conv_unit2", "unit"))
                      for k in (1, 2) for rule in conv_norm(rf"\.{unit}\.conv{k}", f".{ours}.conv{k}"))
MMSEG_KEYS = KeyMap("mmseg", (
    *mmseg_vit_keys(r"backbone", "backbone.vit"),
    (r"decode_head\.reassemble_blocks\.readout_projects\.(\d+)\.0\.(\w+)", r"backbone.readout.\1.project.0.\2"),
    (r"decode_head\.reassemble_blocks\.projects\.(\d+)\.conv\.(\w+)", r"head.reassemble.\1.0.\2"),
    (r"decode_head\.reassemble_blocks\.resize_layers\.(\d+)\.(\w+)", r"head.reassemble.\1.1.\2"),
    (r"decode_head\.convs\.(\d+)\.conv\.weight", r"head.project.\1.weight"),
    *((rf"decode_head\.fusion_blocks\.{j}" + src, f"head.fusion.{3 - j}" + dst)
      for j in range(4) for src, dst in (*_MMSEG_FUSION, (r"\.project\.conv\.(?P<param>\w+)", r".out_conv.\g<param>"))),
    *conv_norm(r"decode_head\.project", "head.classifier.0"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.classifier.2.\1"),
), note="mmsegmentation DPT (configs/_base_/models/dpt_vit-b16.py)")
_MMSEG_VIT = dict(img_size=224, norm_eps=1e-5, pos_embed_mode="bicubic_matmul")


@register_model("dpt", size_divisor=32, output_stride=2, checkpoints=(MMSEG_KEYS,),
                test_kwargs=dict(vit=_SMALL_VIT, reassemble_channels=(16, 32, 48, 64), features=32))
def dpt_vit_b16_mmseg(num_classes: int = 19, vit: dict | None = None,
                      reassemble_channels: Sequence[int] = (96, 192, 384, 768), features: int = 256) -> nn.Module:
    """DPT-Base as mmsegmentation builds it (its dpt_vit-b16 ADE20K checkpoint loads here): a 224-trained
    position grid resized bicubically, LayerNorm eps 1e-5, logits at stride 2 resized to the input."""
    args = dict(embed_dim=768, depth=12, num_heads=12, out_indices=(2, 5, 8, 11), **_MMSEG_VIT)
    encoder = ReadoutViT(VisionTransformer(**{**args, **(vit or {}), "final_norm": False}), "project")
    return DPT(encoder, num_classes, reassemble_channels, features, upsample_logits=False, coarsest_skip_unit=False)
