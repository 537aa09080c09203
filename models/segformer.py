"""SegFormer: a hierarchical Mix Transformer encoder and an all-MLP decoder.

Xie, Wang, Yu, Anandkumar, Alvarez, Luo. "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers." NeurIPS 2021. https://arxiv.org/abs/2105.15203

The encoder is the shared MiT backbone (models/backbones/mit.py: stages at strides 4, 8, 16, 32, any input
size divisible by 32). The decoder, here, projects every stage to one width, upsamples to stride 4,
concatenates and fuses.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.mit import MixTransformer
from .base import ConvNormAct, SegmentationModel
from .keymaps import KeyMap, conv_norm
from .registry import register_model


class AllMLPDecoder(nn.Module):
    """The all-MLP head; returns logits at stride 4.

    Each stage is projected to ``embed_dim`` by a linear layer, upsampled to the stride-4 map, concatenated,
    fused by a 1x1 conv + BN + ReLU, and classified by a linear layer (a 1x1 conv). ``stage_norm``: each stage's
    projection is a 1x1 conv + BN + ReLU instead, as in mmsegmentation's SegformerHead.
    """

    output_stride = 4

    def __init__(
        self,
        in_channels: list[int],
        embed_dim: int,
        num_classes: int,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        stage_norm: bool = False,
    ) -> None:
        super().__init__()
        if stage_norm:
            self.linear_c = nn.ModuleList(ConvNormAct(c, embed_dim, 1, norm_layer=norm_layer) for c in in_channels)
        else:
            self.linear_c = nn.ModuleList(nn.Linear(c, embed_dim) for c in in_channels)
        self.linear_fuse = ConvNormAct(embed_dim * len(in_channels), embed_dim, 1, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        projected = []
        for x, project in zip(features, self.linear_c):
            if isinstance(project, nn.Linear):
                x = project(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, E, H_i, W_i)
            else:
                x = project(x)  # (B, E, H_i, W_i)
            projected.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))  # (B, E, H/4, W/4)
        # Deepest stage first, as in the reference code, so released checkpoints' fuse weights keep their layout.
        x = self.linear_fuse(torch.cat(projected[::-1], dim=1))  # (B, E, H/4, W/4)
        return self.linear_pred(self.dropout(x))  # (B, num_classes, H/4, W/4)


class SegFormer(SegmentationModel):
    """MiT encoder + all-MLP decoder; ``forward(images)`` returns logits at the input size. ``encoder``
    keyword arguments go to ``MixTransformer`` (embed_dims, num_heads, depths, sr_ratios, mlp_ratio,
    drop_path_rate, in_channels, norm_layer); ``decoder_stage_norm`` to the decoder's ``stage_norm``."""

    def __init__(self, num_classes: int = 19, decoder_dim: int = 256, decoder_dropout: float = 0.1,
                 decoder_stage_norm: bool = False, **encoder) -> None:
        backbone = MixTransformer(**encoder)
        head = AllMLPDecoder(backbone.out_channels, decoder_dim, num_classes, decoder_dropout,
                             stage_norm=decoder_stage_norm)
        super().__init__(backbone, head, num_classes)


# Checkpoints trained elsewhere. Hugging Face transformers' SegformerForSemanticSegmentation
# (modeling_segformer.py; the hub's nvidia/segformer-b*-finetuned-* folders): its key and value projections
# are our kv Linear's two halves (key rows first, as the NVlabs original that its converter split), and its
# decoder concatenates the stages deepest first, as ours does, so linear_fuse maps unchanged.
_HF_BLOCK = r"segformer\.encoder\.block\.(\d+)\.(\d+)\."
_OUR_BLOCK = r"backbone.stages.\1.blocks.\2."
HF_KEYS = KeyMap("huggingface", (
    (r"segformer\.encoder\.patch_embeddings\.(\d+)\.proj\.(\w+)", r"backbone.stages.\1.patch_embed.proj.\2"),
    (r"segformer\.encoder\.patch_embeddings\.(\d+)\.layer_norm\.(\w+)", r"backbone.stages.\1.patch_embed.norm.\2"),
    (_HF_BLOCK + r"layer_norm_(1|2)\.(\w+)", _OUR_BLOCK + r"norm\3.\4"),
    (_HF_BLOCK + r"attention\.self\.query\.(\w+)", _OUR_BLOCK + r"attn.q.\3"),
    (_HF_BLOCK + r"attention\.self\.key\.(\w+)", _OUR_BLOCK + r"attn.kv.\3#0"),
    (_HF_BLOCK + r"attention\.self\.value\.(\w+)", _OUR_BLOCK + r"attn.kv.\3#1"),
    (_HF_BLOCK + r"attention\.self\.sr\.(\w+)", _OUR_BLOCK + r"attn.sr.\3"),
    (_HF_BLOCK + r"attention\.self\.layer_norm\.(\w+)", _OUR_BLOCK + r"attn.norm.\3"),
    (_HF_BLOCK + r"attention\.output\.dense\.(\w+)", _OUR_BLOCK + r"attn.proj.\3"),
    (_HF_BLOCK + r"mlp\.dense(1|2)\.(\w+)", _OUR_BLOCK + r"mlp.fc\3.\4"),
    (_HF_BLOCK + r"mlp\.dwconv\.dwconv\.(\w+)", _OUR_BLOCK + r"mlp.dwconv.\3"),
    (r"segformer\.encoder\.layer_norm\.(\d+)\.(\w+)", r"backbone.stages.\1.norm.\2"),
    (r"decode_head\.linear_c\.(\d+)\.proj\.(\w+)", r"head.linear_c.\1.\2"),
    (r"decode_head\.linear_fuse\.weight", r"head.linear_fuse.0.weight"),
    (r"decode_head\.batch_norm\.(\w+)", r"head.linear_fuse.1.\1"),
    (r"decode_head\.classifier\.(\w+)", r"head.linear_pred.\1"),
), drop=(r"classifier\.\w+",),  # SegformerForImageClassification's ImageNet head (encoder-only files)
   note="transformers SegformerForSemanticSegmentation")
CHECKPOINT_KEYS = (HF_KEYS,)

# mmsegmentation's MixVisionTransformer + SegformerHead (mmseg/models/backbones/mit.py, 027eca0; decode_heads/
# segformer_head.py, 0554aec; configs/_base_/models/segformer_mit-b0.py, 3f8d34e), which the _mmseg variants
# build: layers.{i} = (PatchEmbed, blocks, LayerNorm); attention is nn.MultiheadAttention, whose in_proj packs
# query, key and value in equal thirds (ours q and kv = [key; value]); MixFFN's linears are 1x1 convs (squeezed
# on import); the head's convs.{i} are ConvModules (conv without bias, BN, ReLU), and fusion_conv reads the
# stages concatenated shallowest first, ours deepest first (its four column blocks reversed).
_MM_BLOCK = r"backbone\.layers\.(\d)\.1\.(\d+)\."
MMSEG_KEYS = KeyMap("mmseg", (
    (r"backbone\.layers\.(\d)\.0\.projection\.(\w+)", r"backbone.stages.\1.patch_embed.proj.\2"),
    (r"backbone\.layers\.(\d)\.0\.norm\.(\w+)", r"backbone.stages.\1.patch_embed.norm.\2"),
    (_MM_BLOCK + r"norm(1|2)\.(\w+)", _OUR_BLOCK + r"norm\3.\4"),
    (_MM_BLOCK + r"attn\.attn\.in_proj_(weight|bias)",
     (_OUR_BLOCK + r"attn.q.\3", _OUR_BLOCK + r"attn.kv.\3#0", _OUR_BLOCK + r"attn.kv.\3#1")),
    (_MM_BLOCK + r"attn\.attn\.out_proj\.(\w+)", _OUR_BLOCK + r"attn.proj.\3"),
    (_MM_BLOCK + r"attn\.(sr|norm)\.(\w+)", _OUR_BLOCK + r"attn.\3.\4"),
    (_MM_BLOCK + r"ffn\.layers\.0\.(\w+)", _OUR_BLOCK + r"mlp.fc1.\3"),
    (_MM_BLOCK + r"ffn\.layers\.1\.(\w+)", _OUR_BLOCK + r"mlp.dwconv.\3"),
    (_MM_BLOCK + r"ffn\.layers\.4\.(\w+)", _OUR_BLOCK + r"mlp.fc2.\3"),
    (r"backbone\.layers\.(\d)\.2\.(\w+)", r"backbone.stages.\1.norm.\2"),
    *conv_norm(r"decode_head\.convs\.(\d)", r"head.linear_c.\1"),
    *conv_norm(r"decode_head\.fusion_conv", "head.linear_fuse"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.linear_pred.\1"),
), reversed_blocks=((r"head\.linear_fuse\.0\.weight", 1, 4),),
   note="mmsegmentation MixVisionTransformer + SegformerHead")
# What makes a variant mmseg's: LayerNorm eps 1e-6 throughout (the MiT's norm_cfg default), the stage
# projections with BN and ReLU, and a 256-wide decoder for every size (its configs keep the B0 base's
# channels=256; the paper's B2-B5 use 768).
_MMSEG = dict(norm_layer=partial(nn.LayerNorm, eps=1e-6), decoder_stage_norm=True, decoder_dim=256)

# The paper's variants (Section 4.1, Table 1): B1-B5 share widths and differ in depth; B0 is narrower.


# B2-B5 repeat the blocks of B1 more often (3-40 per stage) with a wider decoder; in numerical tests two per
# stage, as B0 and B1 have, cover every block and a block feeding a block.
_TWO_BLOCKS_PER_STAGE = {"depths": (2, 2, 2, 2)}


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=CHECKPOINT_KEYS)
def segformer_b0(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B0 (3.8M parameters with 150 classes)."""
    args = dict(embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2), decoder_dim=256)
    return SegFormer(num_classes, **{**args, **kwargs})


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=CHECKPOINT_KEYS)
def segformer_b1(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B1 (13.7M parameters with 150 classes)."""
    args = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2), decoder_dim=256)
    return SegFormer(num_classes, **{**args, **kwargs})


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=CHECKPOINT_KEYS, test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b2(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B2 (27.5M parameters with 150 classes)."""
    args = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 4, 6, 3), decoder_dim=768)
    return SegFormer(num_classes, **{**args, **kwargs})


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=CHECKPOINT_KEYS, test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b3(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B3 (47.3M parameters with 150 classes)."""
    args = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 4, 18, 3), decoder_dim=768)
    return SegFormer(num_classes, **{**args, **kwargs})


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=CHECKPOINT_KEYS, test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b4(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B4 (64.1M parameters with 150 classes)."""
    args = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 8, 27, 3), decoder_dim=768)
    return SegFormer(num_classes, **{**args, **kwargs})


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=CHECKPOINT_KEYS, test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b5(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B5 (84.7M parameters with 150 classes)."""
    args = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 6, 40, 3), decoder_dim=768)
    return SegFormer(num_classes, **{**args, **kwargs})


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=(MMSEG_KEYS,))
def segformer_b0_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B0 as mmsegmentation builds it (its segformer_mit-b0 checkpoints load here)."""
    return segformer_b0(num_classes, **{**_MMSEG, **kwargs})


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=(MMSEG_KEYS,))
def segformer_b1_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B1 as mmsegmentation builds it (its segformer_mit-b1 checkpoints load here)."""
    return segformer_b1(num_classes, **{**_MMSEG, **kwargs})


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=(MMSEG_KEYS,), test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b2_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B2 as mmsegmentation builds it (its segformer_mit-b2 checkpoints load here; decoder 256 wide)."""
    return segformer_b2(num_classes, **{**_MMSEG, **kwargs})


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=(MMSEG_KEYS,), test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b3_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B3 as mmsegmentation builds it (its segformer_mit-b3 checkpoints load here; decoder 256 wide)."""
    return segformer_b3(num_classes, **{**_MMSEG, **kwargs})


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=(MMSEG_KEYS,), test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b4_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B4 as mmsegmentation builds it (its segformer_mit-b4 checkpoints load here; decoder 256 wide)."""
    return segformer_b4(num_classes, **{**_MMSEG, **kwargs})


@register_model("segformer", size_divisor=32, output_stride=4, checkpoints=(MMSEG_KEYS,), test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b5_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B5 as mmsegmentation builds it (its segformer_mit-b5 checkpoints load here; decoder 256 wide)."""
    return segformer_b5(num_classes, **{**_MMSEG, **kwargs})
