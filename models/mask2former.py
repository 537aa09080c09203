"""Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation", CVPR 2022),
semantic segmentation.

ResNet-50 or -101 (7x7 stem, stride 32) -> the multi-scale deformable attention pixel decoder
(MSDeformAttnPixelDecoder: 6 Deformable DETR encoder layers over strides 8, 16, 32, then an FPN lateral to stride
4 -> mask features) -> the masked-attention transformer decoder (100 queries, 9 layers each attending to one of
the three scales in turn, masked by the previous layer's mask prediction) -> semantic inference: per pixel, the
sum over queries of class probabilities (softmax without the no-object class) times mask probabilities.
Multi-scale deformable attention is the custom op ``models.ops.msda`` (Zhu et al., Deformable DETR, ICLR 2021).
Layer sizes follow the authors' configs (facebookresearch/Mask2Former configs/ade20k/semantic-segmentation/
Base-ADE20K-SemanticSegmentation.yaml and maskformer2_R50_bs16_160k.yaml).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.resnet import mmseg_v1c_keys, resnet
from .base import SegmentationModel
from .keymaps import KeyMap
from .ops.msda import multiscale_deformable_attention
from .registry import register_model


def sine_position_embedding(x: torch.Tensor, num_pos_feats: int) -> torch.Tensor:
    """DETR's normalized sine position embedding of a (N, C, H, W) map (no padding mask): (1, 2*num_pos_feats, H, W)."""
    h, w = x.shape[-2:]
    eps, scale = 1e-6, 2 * math.pi
    y = (torch.arange(h, device=x.device, dtype=x.dtype) + 1) / (h + eps) * scale  # (H,)
    xx = (torch.arange(w, device=x.device, dtype=x.dtype) + 1) / (w + eps) * scale  # (W,)
    dim_t = torch.arange(num_pos_feats, device=x.device, dtype=x.dtype)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_x, pos_y = xx[:, None] / dim_t, y[:, None] / dim_t  # (W, F), (H, F)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)  # (W, F)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)  # (H, F)
    pos = torch.cat((pos_y[:, None, :].expand(-1, w, -1), pos_x[None, :, :].expand(h, -1, -1)), dim=2)  # (H, W, 2F)
    return pos.permute(2, 0, 1).unsqueeze(0)  # (1, 2F, H, W)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR, eq. 3): each query samples ``points`` locations per
    head and level around its reference point, at offsets and with weights predicted from the query."""

    def __init__(self, dim: int = 256, levels: int = 3, heads: int = 8, points: int = 4) -> None:
        super().__init__()
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Deformable DETR's initialisation: offsets start on a ring of directions, one per head.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        for i in range(self.points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> torch.Tensor:
        """query (N, Lq, C); reference_points (N, Lq, L, 2) in [0, 1]; value (N, S, C) -> (N, Lq, C)."""
        n, lq, c = query.shape
        m, lv, p = self.heads, self.levels, self.points
        value = self.value_proj(value).reshape(n, -1, m, c // m)  # (N, S, M, D)
        offsets = self.sampling_offsets(query).reshape(n, lq, m, lv, p, 2)
        weights = self.attention_weights(query).reshape(n, lq, m, lv * p).softmax(-1).reshape(n, lq, m, lv, p)
        normalizer = spatial_shapes.flip(-1).to(query.dtype)  # (L, 2): (W_l, H_l)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = multiscale_deformable_attention(value, spatial_shapes, level_start_index, locations, weights)  # (N, Lq, C)
        return self.output_proj(out)


class DeformableEncoderLayer(nn.Module):
    """Deformable DETR encoder layer: deformable self-attention over all levels, FFN, both post-norm."""

    def __init__(self, dim: int, ffn_dim: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1, self.linear2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index):
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


def encoder_reference_points(features: list[torch.Tensor], levels: int) -> torch.Tensor:
    """Each position's centre, normalized to [0, 1], for every level (no padding: valid ratios 1): (1, S, L, 2)."""
    points = []
    for f in features:
        h, w = f.shape[-2:]
        ys = (torch.arange(h, device=f.device, dtype=f.dtype) + 0.5) / h
        xs = (torch.arange(w, device=f.device, dtype=f.dtype) + 0.5) / w
        ref = torch.stack((xs[None, :].expand(h, w), ys[:, None].expand(h, w)), -1)  # (H, W, 2): (x, y)
        points.append(ref.reshape(1, -1, 2))
    return torch.cat(points, 1)[:, :, None, :].expand(-1, -1, levels, -1)  # (1, S, L, 2)


def level_sizes(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """spatial_shapes (L, 2) and level_start_index (L,) of the flattened maps, computed from their shapes."""
    shapes = torch.tensor([[f.shape[-2], f.shape[-1]] for f in features], device=features[0].device)  # (L, 2)
    sizes = shapes.prod(1)
    return shapes, torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former's pixel decoder: the three coarsest backbone maps projected to ``dim`` and refined by a
    deformable encoder; an FPN lateral adds the finest backbone map. Returns the mask features (stride 4)
    and the encoder's maps, coarsest first (the transformer decoder's memory)."""

    def __init__(self, in_channels: list[int], dim: int = 256, mask_dim: int = 256, layers: int = 6,
                 heads: int = 8, points: int = 4, ffn_dim: int = 1024) -> None:
        super().__init__()
        self.levels = len(in_channels) - 1
        # Coarsest first, as in the original (input_proj[0] reads res5).
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1), nn.GroupNorm(32, dim)) for c in reversed(in_channels[1:]))
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.level_embed = nn.Parameter(torch.randn(self.levels, dim) * 0.02)
        self.encoder = nn.ModuleList(DeformableEncoderLayer(dim, ffn_dim, self.levels, heads, points)
                                     for _ in range(layers))
        self.lateral_conv = nn.Sequential(nn.Conv2d(in_channels[0], dim, 1, bias=False), nn.GroupNorm(32, dim))
        self.output_conv = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.GroupNorm(32, dim),
                                         nn.ReLU(inplace=True))
        self.mask_features = nn.Conv2d(dim, mask_dim, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = [proj(f) for proj, f in zip(self.input_proj, reversed(features[1:]))]  # coarsest first, (N, C, H_l, W_l)
        n, c = maps[0].shape[:2]
        src = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)  # (N, S, C)
        pos = torch.cat([(sine_position_embedding(m, c // 2).flatten(2).transpose(1, 2) + self.level_embed[i])
                         for i, m in enumerate(maps)], 1)  # (1, S, C)
        spatial_shapes, level_start_index = level_sizes(maps)
        reference_points = encoder_reference_points(maps, self.levels)  # (1, S, L, 2)
        for layer in self.encoder:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index)
        outs, start = [], 0
        for m in maps:
            h, w = m.shape[-2:]
            outs.append(src[:, start:start + h * w].transpose(1, 2).reshape(n, c, h, w))  # (N, C, H_l, W_l)
            start = start + h * w
        y = self.lateral_conv(features[0])  # (N, C, H/4, W/4)
        y = self.output_conv(y + F.interpolate(outs[-1], size=y.shape[-2:], mode="bilinear", align_corners=False))
        return self.mask_features(y), outs


class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameters (q, k, v and output projections), written as
    MatMul + Softmax (see models/backbones/mit.py); ``mask`` is added to the logits."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, lq, c = q.shape
        m = self.heads

        def split(x):
            return x.reshape(n, -1, m, c // m).transpose(1, 2)  # (N, M, L, D)

        q, k, v = split(self.q(q)), split(self.k(k)), split(self.v(v))
        logits = (q * (c // m) ** -0.5) @ k.transpose(-2, -1)  # (N, M, Lq, Lk)
        if mask is not None:
            logits = logits + mask
        return self.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(n, lq, c))


class MaskedAttentionDecoderLayer(nn.Module):
    """Masked cross-attention to one scale, self-attention among the queries, FFN; each post-norm."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attn, self.norm1 = Attention(dim, heads), nn.LayerNorm(dim)
        self.self_attn, self.norm2 = Attention(dim, heads), nn.LayerNorm(dim)
        self.linear1, self.linear2, self.norm3 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim), nn.LayerNorm(dim)

    def forward(self, x, query_pos, memory, memory_pos, mask):
        x = self.norm1(x + self.cross_attn(x + query_pos, memory + memory_pos, memory, mask))
        q = x + query_pos
        x = self.norm2(x + self.self_attn(q, q, x))
        return self.norm3(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Sequential):
    def __init__(self, dim: int, out_dim: int, layers: int) -> None:
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks.append(nn.Linear(dim, out_dim if i == layers - 1 else dim))
            if i < layers - 1:
                blocks.append(nn.ReLU(inplace=True))
        super().__init__(*blocks)


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former's transformer decoder, semantic inference: learnable queries, 9 layers cycling through the
    three scales (coarsest first), each layer's cross-attention masked to where the previous prediction's
    mask is above 0.5. Returns (N, num_classes, H/4, W/4) semantic scores."""

    # Masked positions get a large negative logit rather than -inf: the same softmax (exp underflows to 0 in
    # FP32 and FP16), without infinities for the quantizer's calibration.
    MASKED = -1e4

    def __init__(self, num_classes: int, dim: int = 256, heads: int = 8, ffn_dim: int = 2048, layers: int = 9,
                 queries: int = 100, levels: int = 3) -> None:
        super().__init__()
        self.heads, self.levels = heads, levels
        self.layers = nn.ModuleList(MaskedAttentionDecoderLayer(dim, heads, ffn_dim) for _ in range(layers))
        self.query_feat, self.query_embed = nn.Embedding(queries, dim), nn.Embedding(queries, dim)
        self.level_embed = nn.Embedding(levels, dim)
        self.decoder_norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)  # + the no-object class
        self.mask_embed = MLP(dim, dim, 3)

    def predict(self, x, mask_features, size):
        """Class logits (N, Q, K+1), mask logits (N, Q, H/4, W/4), and the attention mask for a level of ``size``."""
        x = self.decoder_norm(x)
        classes = self.class_embed(x)
        n, q = x.shape[:2]
        masks = (self.mask_embed(x) @ mask_features.flatten(2)).reshape(n, q, *mask_features.shape[-2:])
        small = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).flatten(2)  # (N, Q, HW_l)
        masked = small.sigmoid() < 0.5
        masked = masked & ~masked.all(-1, keepdim=True)  # a query masked everywhere attends everywhere
        attn_mask = masked.to(x.dtype) * self.MASKED  # (N, Q, HW_l)
        return classes, masks, attn_mask[:, None]  # mask broadcast over heads

    def forward(self, mask_features: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
        n, c = mask_features.shape[:2]
        memory = [m.flatten(2).transpose(1, 2) + self.level_embed.weight[i] for i, m in enumerate(maps)]  # (N, HW_l, C)
        memory_pos = [sine_position_embedding(m, c // 2).flatten(2).transpose(1, 2) for m in maps]  # (1, HW_l, C)
        x = self.query_feat.weight[None].expand(n, -1, -1)  # (N, Q, C)
        query_pos = self.query_embed.weight[None]
        classes, masks, mask = self.predict(x, mask_features, maps[0].shape[-2:])
        for i, layer in enumerate(self.layers):
            level = i % self.levels
            x = layer(x, query_pos, memory[level], memory_pos[level], mask)
            classes, masks, mask = self.predict(x, mask_features, maps[(i + 1) % self.levels].shape[-2:])
        probs = classes.softmax(-1)[..., :-1]  # (N, Q, K): the no-object class dropped
        scores = probs.transpose(1, 2) @ masks.sigmoid().flatten(2)  # (N, K, HW/16)
        return scores.reshape(n, -1, *mask_features.shape[-2:])


class Mask2FormerHead(nn.Module):
    """Pixel decoder -> masked-attention decoder: backbone features in, semantic scores at stride 4 out."""

    def __init__(self, in_channels: list[int], num_classes: int, dim: int = 256, encoder_layers: int = 6,
                 encoder_ffn: int = 1024, decoder_layers: int = 9, decoder_ffn: int = 2048, queries: int = 100,
                 heads: int = 8, points: int = 4) -> None:
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(in_channels, dim, dim, encoder_layers, heads, points, encoder_ffn)
        self.decoder = MaskedAttentionDecoder(num_classes, dim, heads, decoder_ffn, decoder_layers, queries)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        mask_features, maps = self.pixel_decoder(features)
        return self.decoder(mask_features, maps)  # (N, K, H/4, W/4)


# Checkpoints trained elsewhere. Hugging Face transformers' Mask2FormerForUniversalSegmentation (transformers
# 5.23.0, models/mask2former/modeling_mask2former.py) with a ResNet backbone (backbone_config a ResNetConfig,
# layer_type "bottleneck", stages 1-4 out: models/resnet/modeling_resnet.py, stride on the 3x3 conv as ours).
# Op for op ours: the same deformable pixel decoder (its encoder layers always sample 4 points at 3 levels), the
# same decoder (its config's decoder_layers counts one more than the layers it builds: 10 for the 9 here), the
# same masked attention (a query masked everywhere attends everywhere). Its cross-attention is an
# nn.MultiheadAttention (query, key and value stacked in in_proj_*: our q, k and v Linears); its self-attention
# keeps them apart. Its semantic output is ours before upsampling: softmax(class_queries_logits)[..., :-1]
# summed over queries with sigmoid(masks_queries_logits) at stride 4 (its image processor's
# post_process_semantic_segmentation instead resizes the mask logits to 384 x 384 before the sigmoid). The
# loss's no-object weights (criterion.empty_weight) are training-only. Mask2FormerConfig lists only "swin" in
# backbones_supported (a ResNet config builds, with a warning), and the facebook/mask2former-* checkpoints its
# docs name are Swin: those do not fit (no Swin here), and say so by their missing backbone keys.
_HF_PIXEL = r"model\.pixel_level_module\."
_HF_RESNET = _HF_PIXEL + r"encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\."
_HF_ENC = _HF_PIXEL + r"decoder\.encoder\.layers\.(\d+)\."
_HF_DEC = r"model\.transformer_module\.decoder\.layers\.(\d+)\."
_OUR_ENC, _OUR_DEC = r"head.pixel_decoder.encoder.\1.", r"head.decoder.layers.\1."
_NORM_PARTS = (("convolution", 0), ("normalization", 1))  # a ResNetConvLayer: conv then BatchNorm
HF_KEYS = KeyMap("huggingface", (
    *((_HF_PIXEL + rf"encoder\.embedder\.embedder\.{hf}\.(\w+)", rf"backbone.stem.0.{i}.\1") for hf, i in _NORM_PARTS),
    *((_HF_RESNET + rf"layer\.{j}\.{hf}\.(\w+)", rf"backbone.stages.\1.\2.conv{j + 1}.{i}.\3")
      for j in range(3) for hf, i in _NORM_PARTS),
    *((_HF_RESNET + rf"shortcut\.{hf}\.(\w+)", rf"backbone.stages.\1.\2.downsample.{i}.\3") for hf, i in _NORM_PARTS),
    (_HF_PIXEL + r"decoder\.level_embed", "head.pixel_decoder.level_embed"),
    (_HF_PIXEL + r"decoder\.input_projections\.(\d+)\.(\d)\.(\w+)", r"head.pixel_decoder.input_proj.\1.\2.\3"),
    (_HF_ENC + r"self_attn\.(\w+)\.(\w+)", _OUR_ENC + r"self_attn.\2.\3"),
    (_HF_ENC + r"self_attn_layer_norm\.(\w+)", _OUR_ENC + r"norm1.\2"),
    (_HF_ENC + r"fc(1|2)\.(\w+)", _OUR_ENC + r"linear\2.\3"),
    (_HF_ENC + r"final_layer_norm\.(\w+)", _OUR_ENC + r"norm2.\2"),
    (_HF_PIXEL + r"decoder\.adapter_1\.(\d)\.(\w+)", r"head.pixel_decoder.lateral_conv.\1.\2"),
    (_HF_PIXEL + r"decoder\.layer_1\.(\d)\.(\w+)", r"head.pixel_decoder.output_conv.\1.\2"),
    (_HF_PIXEL + r"decoder\.mask_projection\.(\w+)", r"head.pixel_decoder.mask_features.\1"),
    (r"model\.transformer_module\.queries_embedder\.weight", "head.decoder.query_embed.weight"),
    (r"model\.transformer_module\.queries_features\.weight", "head.decoder.query_feat.weight"),
    (r"model\.transformer_module\.level_embed\.weight", "head.decoder.level_embed.weight"),
    (_HF_DEC + r"cross_attn\.in_proj_(weight|bias)", _OUR_DEC + r"cross_attn.{q,k,v}.\2"),
    (_HF_DEC + r"cross_attn\.out_proj\.(\w+)", _OUR_DEC + r"cross_attn.proj.\2"),
    (_HF_DEC + r"cross_attn_layer_norm\.(\w+)", _OUR_DEC + r"norm1.\2"),
    (_HF_DEC + r"self_attn\.(q|k|v)_proj\.(\w+)", _OUR_DEC + r"self_attn.\2.\3"),
    (_HF_DEC + r"self_attn\.out_proj\.(\w+)", _OUR_DEC + r"self_attn.proj.\2"),
    (_HF_DEC + r"self_attn_layer_norm\.(\w+)", _OUR_DEC + r"norm2.\2"),
    (_HF_DEC + r"fc(1|2)\.(\w+)", _OUR_DEC + r"linear\2.\3"),
    (_HF_DEC + r"final_layer_norm\.(\w+)", _OUR_DEC + r"norm3.\2"),
    (r"model\.transformer_module\.decoder\.layernorm\.(\w+)", r"head.decoder.decoder_norm.\1"),
    # The mask MLP's Linears sit at 0, 1, 2 there, at 0, 2, 4 here (a ReLU between each pair).
    *((rf"model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.{j}\.0\.(\w+)",
       rf"head.decoder.mask_embed.{2 * j}.\1") for j in range(3)),
    (r"class_predictor\.(\w+)", r"head.decoder.class_embed.\1"),
), drop=(r"criterion\.empty_weight",),
   note="transformers Mask2FormerForUniversalSegmentation with a ResNet backbone")

# mmsegmentation 1.x's Mask2Former R-50 files (configs/mask2former/mask2former_r50_8xb2-90k_cityscapes-512x1024.py,
# mask2former_r50_8xb2-160k_ade20k-512x512.py, 11d1ed8): mmseg's plain ResNet-50 (deep_stem=False: a 7x7
# conv1 + bn1 stem, 64 wide, style 'pytorch', as ours), and mmseg's Mask2FormerHead (mmseg/models/decode_heads/
# mask2former_head.py, fa05a05), which is mmdet 3.x's (mmdet/models/dense_heads/mask2former_head.py) with its
# cls_embed rebuilt for num_classes + 1. The same network as ours, layer for layer: MSDeformAttnPixelDecoder
# (mmdet/models/layers/msdeformattn_pixel_decoder.py, 14e758a: input_convs coarsest first, 1x1 ConvModules with a
# bias and GN; level_encoding; one lateral and one output ConvModule, bias-free, GN; mask_feature), 6
# DeformableDetrTransformerEncoderLayers (mmcv's MultiScaleDeformableAttention, its value the query without
# position, as ours; FFN; norms[0], norms[1], post-norm), the same sine positions and (i + 0.5) / size reference
# points, and Mask2FormerTransformerDecoder (mmdet/models/layers/transformer/mask2former_layers.py, 19bceba; its
# layers detr_layers.py's, 7ece1f0): cross-attention, norms[0], self-attention, norms[1], FFN, norms[2], each an
# mmcv MultiheadAttention wrapping nn.MultiheadAttention (attn.in_proj_* stacks query, key, value), post_norm
# before every prediction, a query masked everywhere attending everywhere; decoder_input_projs are Identities
# (feat_channels = embed_dims, enforce_decoder_input_project=False) and hold no tensors. GN, BN and LayerNorm
# eps are torch's defaults there as here. Its predict upsamples the mask logits to the padded input before the
# sigmoid and the sum over queries; ours sums at stride 4 and upsamples the scores (as for Hugging Face above):
# the weights import exactly, the scores differ by where that resize sits.
# The R-101 files (mask2former_r101_8xb2-90k_cityscapes-512x1024.py, fa05a05, mask2former_r101_8xb2-160k_ade20k-
# 512x512.py, 7c8993c) set the backbone's depth to 101 (initialised from torchvision's resnet101) and change nothing
# else: mask2former_r101, the same table.
_MM_PIXEL = r"decode_head\.pixel_decoder\."
_MM_ENC = _MM_PIXEL + r"encoder\.layers\.(\d+)\."
_MM_DEC = r"decode_head\.transformer_decoder\.layers\.(\d+)\."
_FFN = ((r"ffn\.layers\.0\.0", "linear1"), (r"ffn\.layers\.1", "linear2"))  # mmcv's FFN: (Linear, act, drop), Linear
MMSEG_KEYS = KeyMap("mmseg", (
    *mmseg_v1c_keys(deep_stem=False),
    (_MM_PIXEL + r"input_convs\.(\d)\.conv\.(\w+)", r"head.pixel_decoder.input_proj.\1.0.\2"),
    (_MM_PIXEL + r"input_convs\.(\d)\.gn\.(\w+)", r"head.pixel_decoder.input_proj.\1.1.\2"),
    (_MM_PIXEL + r"level_encoding\.weight", "head.pixel_decoder.level_embed"),
    (_MM_ENC + r"self_attn\.(\w+)\.(\w+)", _OUR_ENC + r"self_attn.\2.\3"),
    *((_MM_ENC + rf"{mm}\.(\w+)", _OUR_ENC + rf"{ours}.\2") for mm, ours in _FFN),
    *((_MM_ENC + rf"norms\.{i}\.(\w+)", _OUR_ENC + rf"norm{i + 1}.\2") for i in range(2)),
    (_MM_PIXEL + r"lateral_convs\.0\.conv\.weight", "head.pixel_decoder.lateral_conv.0.weight"),
    (_MM_PIXEL + r"lateral_convs\.0\.gn\.(\w+)", r"head.pixel_decoder.lateral_conv.1.\1"),
    (_MM_PIXEL + r"output_convs\.0\.conv\.weight", "head.pixel_decoder.output_conv.0.weight"),
    (_MM_PIXEL + r"output_convs\.0\.gn\.(\w+)", r"head.pixel_decoder.output_conv.1.\1"),
    (_MM_PIXEL + r"mask_feature\.(\w+)", r"head.pixel_decoder.mask_features.\1"),
    *((_MM_DEC + rf"{a}\.attn\.in_proj_(weight|bias)", _OUR_DEC + rf"{a}.{{q,k,v}}.\2") for a in ("cross_attn", "self_attn")),
    *((_MM_DEC + rf"{a}\.attn\.out_proj\.(\w+)", _OUR_DEC + rf"{a}.proj.\2") for a in ("cross_attn", "self_attn")),
    *((_MM_DEC + rf"{mm}\.(\w+)", _OUR_DEC + rf"{ours}.\2") for mm, ours in _FFN),
    # norms[0] after the cross-attention, [1] after the self-attention, [2] after the FFN: ours norm1..3
    *((_MM_DEC + rf"norms\.{i}\.(\w+)", _OUR_DEC + rf"norm{i + 1}.\2") for i in range(3)),
    (r"decode_head\.transformer_decoder\.post_norm\.(\w+)", r"head.decoder.decoder_norm.\1"),
    (r"decode_head\.(query_embed|query_feat|level_embed)\.weight", r"head.decoder.\1.weight"),
    (r"decode_head\.cls_embed\.(\w+)", r"head.decoder.class_embed.\1"),
    # (Linear, ReLU, Linear, ReLU, Linear) there and here: the same indices
    (r"decode_head\.mask_embed\.(\d)\.(\w+)", r"head.decoder.mask_embed.\1.\2"),
), note="mmsegmentation Mask2FormerHead (mmdet's) on ResNet-50/101 (configs/mask2former/mask2former_r{50,101}_*.py)")
CHECKPOINT_KEYS = (HF_KEYS, MMSEG_KEYS)

_NARROW = {"base_width": 16, "stem_width": 16, "dim": 32, "encoder_layers": 1, "encoder_ffn": 64,
           "decoder_layers": 3, "decoder_ffn": 64, "queries": 10, "heads": 2, "points": 2}


def _mask2former(depth: int, num_classes: int, base_width: int, stem_width: int, **kwargs) -> nn.Module:
    backbone = resnet(depth, output_stride=32, deep_stem=False, base_width=base_width, stem_width=stem_width)
    return SegmentationModel(backbone, Mask2FormerHead(backbone.out_channels, num_classes, **kwargs), num_classes)


@register_model("mask2former", size_divisor=32, output_stride=4, test_kwargs=_NARROW,
                custom_ops=("multiscale_deformable_attention",), checkpoints=CHECKPOINT_KEYS)
def mask2former_r50(num_classes: int = 19, base_width: int = 64, stem_width: int = 64, **kwargs) -> nn.Module:
    """Mask2Former, ResNet-50 (7x7 stem), deformable pixel decoder (6 layers), 9-layer masked-attention
    decoder with 100 queries; semantic inference."""
    return _mask2former(50, num_classes, base_width, stem_width, **kwargs)


@register_model("mask2former", size_divisor=32, output_stride=4, test_kwargs=_NARROW,
                custom_ops=("multiscale_deformable_attention",), checkpoints=CHECKPOINT_KEYS)
def mask2former_r101(num_classes: int = 19, base_width: int = 64, stem_width: int = 64, **kwargs) -> nn.Module:
    """Mask2Former on ResNet-101 (7x7 stem), mask2former_r50's head: mmsegmentation's mask2former_r101 files load
    here."""
    return _mask2former(101, num_classes, base_width, stem_width, **kwargs)
