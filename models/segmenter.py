"""Segmenter: a plain ViT encoder and a mask-transformer decoder.

Strudel, Garcia, Laptev, Schmid. "Segmenter: Transformer for Semantic Segmentation." ICCV 2021.
https://arxiv.org/abs/2105.05633 (reference code: https://github.com/rstrudel/segmenter)

The encoder is the shared ViT (models/backbones/vit.py) at patch 16, its last block's output after the final
LayerNorm, as a (B, C, H/16, W/16) map; its position embeddings are resized inside the graph, so one export
serves every size divisible by 16. The decoder (Section 3.2, "Mask Transformer") projects the patch tokens to
``d_model``, appends K learned class embeddings, runs ``n_layers`` transformer blocks over patches and classes
together, L2-normalises both, and scores every patch against every class (masks = patches @ classes^T), then
normalises the K scores of each patch with a LayerNorm ("mask norm").

Parameter names follow the reference code (``decoder.{proj_dec, cls_emb, blocks, decoder_norm, proj_patch,
proj_classes, mask_norm}``, here under ``head.``; the encoder's under ``backbone.``, its ImageNet ``head``
left out), and LayerNorm eps is PyTorch's 1e-5 as there. The reference decoder blocks have dropout 0.1; the
shared ViT block has none, which changes training only.

Deployment notes: the L2 normalisation exports as ReduceL2 (kept FP32 by export/compile/precision.py) and a
division; the mask norm is one LayerNormalization over the class axis (kept FP32). Everything is standard
ONNX at dynamic H/W.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.vit import Block, VisionTransformer, mmseg_layer_keys, mmseg_vit_keys
from .base import SegmentationModel
from .keymaps import KeyMap
from .registry import register_model


class MaskTransformer(nn.Module):
    """The mask-transformer decoder; returns class masks (B, K, H/p, W/p) at the encoder's stride.

    ``num_heads`` defaults to ``d_model // 64``, as the reference code sets it (T: 3, S: 6, B: 12, L: 16).
    """

    def __init__(self, in_channels: int, num_classes: int, d_model: int, n_layers: int = 2,
                 num_heads: int | None = None, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        num_heads = num_heads or max(d_model // 64, 1)
        self.num_classes = num_classes
        self.proj_dec = nn.Linear(in_channels, d_model)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, d_model))
        rates = [drop_path_rate * i / max(n_layers - 1, 1) for i in range(n_layers)]
        self.blocks = nn.ModuleList(Block(d_model, num_heads, mlp_ratio, True, rates[i], norm_eps)
                                    for i in range(n_layers))
        self.decoder_norm = nn.LayerNorm(d_model, eps=norm_eps)
        # Bias-free projections stored as (in, out) matrices, the reference code's layout.
        self.proj_patch = nn.Parameter(d_model**-0.5 * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(d_model**-0.5 * torch.randn(d_model, d_model))
        self.mask_norm = nn.LayerNorm(num_classes, eps=norm_eps)
        self._init_weights()

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]  # (B, C, h, w)
        b, _, h, w = x.shape
        x = self.proj_dec(x.flatten(2).transpose(1, 2))  # (B, hw, D)
        x = torch.cat([x, self.cls_emb.expand(b, -1, -1)], dim=1)  # (B, hw + K, D)
        for block in self.blocks:
            x = block(x)  # (B, hw + K, D)
        x = self.decoder_norm(x)
        k = self.num_classes
        patches = x[:, :-k] @ self.proj_patch  # (B, hw, D)
        classes = x[:, -k:] @ self.proj_classes  # (B, K, D)
        masks = class_masks(patches, classes)  # (B, hw, K)
        masks = self.mask_norm(masks)
        return masks.transpose(1, 2).reshape(b, k, h, w)  # (B, K, h, w)

    def _init_weights(self) -> None:
        """The reference code's: truncated-normal linears (std 0.02), zero biases, class embeddings std 0.02."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)


def class_masks(patches: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every patch embedding (B, N, D) with every class embedding (B, K, D): (B, N, K).

    F.normalize divides by max(norm, 1e-12), the reference's plain division guarded against a zero vector."""
    return F.normalize(patches, dim=-1) @ F.normalize(classes, dim=-1).transpose(1, 2)


class Segmenter(SegmentationModel):
    """ViT encoder + mask transformer; ``forward(images)`` returns logits at the input size (the masks
    upsampled bilinearly from stride 16, as the reference does). ``encoder`` keyword arguments go to
    ``VisionTransformer`` (embed_dim, depth, num_heads, img_size, patch_size, drop_path_rate, ...);
    ``decoder_eps`` is the decoder's LayerNorm eps, the encoder's unless given."""

    def __init__(self, num_classes: int = 19, n_layers: int = 2, decoder_heads: int | None = None,
                 decoder_eps: float | None = None, **encoder) -> None:
        backbone = VisionTransformer(**{**dict(patch_size=16, norm_eps=1e-5), **encoder})
        width = backbone.out_channels[-1]
        eps = backbone.norm.eps if decoder_eps is None else decoder_eps
        head = MaskTransformer(width, num_classes, width, n_layers, decoder_heads, norm_eps=eps)
        super().__init__(backbone, head, num_classes)


# The paper's variants (Table 1; the reference code's segm/config.yml): ViT-Tiny/Small/Base/Large at patch 16,
# the decoder at the encoder's width with 2 layers. Trained at 512 x 512 on ADE20K (640 x 640 for Large), which
# fixes the position-embedding grid (32 x 32, 40 x 40), not the sizes the graph accepts.

# Numerical tests: two encoder blocks, two decoder blocks, width 64 (decoder heads 64 // 64 = 1, set to 2 so
# the multi-head split is exercised), at a 4 x 4 training grid.
_SMALL = {"embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_heads": 2, "img_size": 64}


@register_model("segmenter", size_divisor=16, output_stride=16, test_kwargs=_SMALL)
def segmenter_vit_t(num_classes: int = 19, **kwargs) -> nn.Module:
    """Segmenter Seg-T-Mask/16: ViT-Tiny + mask transformer (6.7M parameters with 150 classes)."""
    args = dict(embed_dim=192, depth=12, num_heads=3, img_size=512)
    return Segmenter(num_classes, **{**args, **kwargs})


@register_model("segmenter", size_divisor=16, output_stride=16, test_kwargs=_SMALL)
def segmenter_vit_s(num_classes: int = 19, **kwargs) -> nn.Module:
    """Segmenter Seg-S-Mask/16: ViT-Small + mask transformer (26.0M parameters with 150 classes)."""
    args = dict(embed_dim=384, depth=12, num_heads=6, img_size=512)
    return Segmenter(num_classes, **{**args, **kwargs})


@register_model("segmenter", size_divisor=16, output_stride=16, test_kwargs=_SMALL)
def segmenter_vit_b(num_classes: int = 19, **kwargs) -> nn.Module:
    """Segmenter Seg-B-Mask/16: ViT-Base + mask transformer (102.5M parameters with 150 classes)."""
    args = dict(embed_dim=768, depth=12, num_heads=12, img_size=512)
    return Segmenter(num_classes, **{**args, **kwargs})


@register_model("segmenter", size_divisor=16, output_stride=16, test_kwargs=_SMALL)
def segmenter_vit_l(num_classes: int = 19, **kwargs) -> nn.Module:
    """Segmenter Seg-L-Mask/16: ViT-Large + mask transformer at 640 x 640 (333.2M parameters with 150 classes)."""
    args = dict(embed_dim=1024, depth=24, num_heads=16, img_size=640)
    return Segmenter(num_classes, **{**args, **kwargs})


# ------------------------------------------------------------------------------ mmsegmentation's Segmenter
# mmsegmentation's Segmenter (configs/segmenter/segmenter_vit-{t,s,b,l}_mask_8xb1-160k_ade20k-512x512.py, 3f8d34e
# and superliuweilin/mmsegmentation 003df15 for S and L, on configs/_base_/models/segmenter_vit-b16_mask.py 7d7a3e3;
# mmseg/models/decode_heads/segmenter_mask_head.py 0ab294f; backbones/vit.py 886c189) is the paper's network with
# rstrudel's decoder, but its encoder's LayerNorms have eps 1e-6 (backbone_norm_cfg) where rstrudel's have 1e-5, its
# decoder's keep nn.LayerNorm's 1e-5 (the head's norm_cfg dict(type='LN')), and its ViT resizes the position grid
# bicubically (interpolate_mode 'bicubic', rstrudel's bilinearly): the _mmseg variants below, whose resize is
# "bicubic_matmul". At the training size (512, L: 640; mmseg tests by 512/640 sliding windows) no resize happens in
# mmseg and ours is the identity. The decoder maps name for name (dec_proj, cls_emb, layers.{i} as the encoder's,
# decoder_norm, mask_norm) except patch_proj and classes_proj: bias-free Linears whose (out, in) weights are our
# (in, out) matrices transposed. BaseDecodeHead's conv_seg, built by every mmseg head and unused by this one's
# forward, is left out. The final resize (EncoderDecoder, align_corners=False) is SegmentationModel's.
MMSEG_KEYS = KeyMap("mmseg", (
    *mmseg_vit_keys(r"backbone", "backbone"),
    *mmseg_layer_keys(r"decode_head\.layers", "head.blocks"),
    (r"decode_head\.dec_proj\.(\w+)", r"head.proj_dec.\1"),
    (r"decode_head\.cls_emb", "head.cls_emb"),
    (r"decode_head\.decoder_norm\.(\w+)", r"head.decoder_norm.\1"),
    (r"decode_head\.patch_proj\.weight", "head.proj_patch"),
    (r"decode_head\.classes_proj\.weight", "head.proj_classes"),
    (r"decode_head\.mask_norm\.(\w+)", r"head.mask_norm.\1"),
), drop=(r"decode_head\.conv_seg\.\w+",), transposed=(r"head\.proj_(patch|classes)",),
   note="mmsegmentation Segmenter (configs/_base_/models/segmenter_vit-b16_mask.py)")
_MMSEG = dict(norm_eps=1e-6, decoder_eps=1e-5, pos_embed_mode="bicubic_matmul")


@register_model("segmenter", size_divisor=16, output_stride=16, test_kwargs=_SMALL, checkpoints=(MMSEG_KEYS,))
def segmenter_vit_t_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """Seg-T-Mask/16 as mmsegmentation builds it (its segmenter_vit-t_mask ADE20K checkpoint loads here)."""
    return segmenter_vit_t(num_classes, **{**_MMSEG, **kwargs})


@register_model("segmenter", size_divisor=16, output_stride=16, test_kwargs=_SMALL, checkpoints=(MMSEG_KEYS,))
def segmenter_vit_s_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """Seg-S-Mask/16 as mmsegmentation builds it (its segmenter_vit-s_mask ADE20K checkpoint loads here)."""
    return segmenter_vit_s(num_classes, **{**_MMSEG, **kwargs})


@register_model("segmenter", size_divisor=16, output_stride=16, test_kwargs=_SMALL, checkpoints=(MMSEG_KEYS,))
def segmenter_vit_b_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """Seg-B-Mask/16 as mmsegmentation builds it (its segmenter_vit-b_mask ADE20K checkpoint loads here)."""
    return segmenter_vit_b(num_classes, **{**_MMSEG, **kwargs})


@register_model("segmenter", size_divisor=16, output_stride=16, test_kwargs=_SMALL, checkpoints=(MMSEG_KEYS,))
def segmenter_vit_l_mmseg(num_classes: int = 19, **kwargs) -> nn.Module:
    """Seg-L-Mask/16 at 640 as mmsegmentation builds it (its segmenter_vit-l_mask ADE20K checkpoint loads here)."""
    return segmenter_vit_l(num_classes, **{**_MMSEG, **kwargs})
