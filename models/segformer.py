"""SegFormer: a hierarchical Mix Transformer encoder and an all-MLP decoder.

Xie, Wang, Yu, Anandkumar, Alvarez, Luo. "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers." NeurIPS 2021. https://arxiv.org/abs/2105.15203

The encoder (MiT) has four stages at strides 4, 8, 16 and 32. Each stage embeds overlapping patches with a
strided convolution, then runs pre-norm transformer blocks whose self-attention shortens the key/value sequence
by a reduction ratio R (a strided convolution), and whose feed-forward network (Mix-FFN) carries position
information through a 3x3 depth-wise convolution instead of position embeddings, so any input size works.
The decoder projects every stage to one width, upsamples to stride 4, concatenates and fuses.

Deployment notes: normalisation is ``nn.LayerNorm`` over the last dimension, which the ONNX exporter emits as
one LayerNormalization node (opset >= 17); attention is plain MatMul + Softmax; every reshape reads its sizes
from the tensor, so one exported graph serves any H and W divisible by 32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import ConvNormAct, SegmentationModel
from .registry import register_model


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch for a random subset of samples (training only)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)  # (B, 1, ...)
        return x * mask / keep_prob


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch merging: a strided convolution whose kernel is larger than its stride, then LayerNorm."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)  # (B, C, H, W)
        _, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        return self.norm(x), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a sequence shortened R^2 times.

    The reduction is a conv with kernel and stride R followed by LayerNorm, so the cost is O(N^2 / R^2).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}; choose heads that divide it")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)  # (B, heads, N, d)

        if self.sr_ratio > 1:
            x = x.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
            x = self.sr(x).flatten(2).transpose(1, 2)  # (B, N / R^2, C)
            x = self.norm(x)
        kv = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)  # (2, B, heads, N', d)
        k, v = kv[0], kv[1]  # (B, heads, N', d)

        # Plain MatMul + Softmax rather than F.scaled_dot_product_attention: both export at opset 18 and agree,
        # but the SDPA lowering adds Shape/Slice/Reshape chains that a graph rewrite would have to see through.
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N')
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        return self.proj(x)


class MixFFN(nn.Module):
    """fc -> 3x3 depth-wise conv -> GELU -> fc. The depth-wise conv leaks position information (paper, Eq. 3)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)  # (B, N, C_hidden)
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, h, w)  # (B, C_hidden, H, W)
        x = self.dwconv(x).flatten(2).transpose(1, 2)  # (B, N, C_hidden)
        return self.fc2(self.act(x))  # (B, N, C)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + DropPath(Attn(LN(x))), then x + DropPath(MixFFN(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MiTStage(nn.Module):
    """One encoder stage: overlapping patch embedding, transformer blocks, LayerNorm."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        patch_size: int,
        stride: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        drop_paths: list[float],
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, patch_size, stride)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, mlp_ratio, sr_ratio, drop_paths[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.patch_embed(x)  # (B, HW, C)
        for block in self.blocks:
            x = block(x, h, w)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)  # (B, C, H, W)


class MixTransformer(nn.Module):
    """The MiT encoder: four stages at strides 4, 8, 16, 32; returns their feature maps."""

    def __init__(
        self,
        embed_dims: tuple[int, ...] = (64, 128, 320, 512),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        # Stochastic depth grows linearly over all blocks of all stages, as in the paper's training recipe.
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages = []
        for i, (dim, heads, depth, sr) in enumerate(zip(embed_dims, num_heads, depths, sr_ratios)):
            first = sum(depths[:i])
            stages.append(
                MiTStage(
                    in_channels=in_channels if i == 0 else embed_dims[i - 1],
                    dim=dim,
                    patch_size=7 if i == 0 else 3,
                    stride=4 if i == 0 else 2,
                    depth=depth,
                    num_heads=heads,
                    mlp_ratio=mlp_ratio,
                    sr_ratio=sr,
                    drop_paths=rates[first : first + depth],
                )
            )
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(embed_dims)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)  # (B, C_i, H / 2^(i+2), W / 2^(i+2))
            features.append(x)
        return features


def _init_weights(m: nn.Module) -> None:
    """The reference implementation's initialisation (truncated normal linears, fan-out convs)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class AllMLPDecoder(nn.Module):
    """The all-MLP head; returns logits at stride 4.

    Each stage is projected to ``embed_dim`` by a linear layer, upsampled to the stride-4 map, concatenated,
    fused by a 1x1 conv + BN + ReLU, and classified by a linear layer (a 1x1 conv).
    """

    output_stride = 4

    def __init__(
        self,
        in_channels: list[int],
        embed_dim: int,
        num_classes: int,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(c, embed_dim) for c in in_channels)
        self.linear_fuse = ConvNormAct(embed_dim * len(in_channels), embed_dim, 1, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        projected = []
        for x, linear in zip(features, self.linear_c):
            x = linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, E, H_i, W_i)
            projected.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))  # (B, E, H/4, W/4)
        # Deepest stage first, as in the reference code, so released checkpoints' fuse weights keep their layout.
        x = self.linear_fuse(torch.cat(projected[::-1], dim=1))  # (B, E, H/4, W/4)
        return self.linear_pred(self.dropout(x))  # (B, num_classes, H/4, W/4)


class SegFormer(SegmentationModel):
    """MiT encoder + all-MLP decoder; ``forward(images)`` returns logits at the input size."""

    def __init__(
        self,
        num_classes: int = 19,
        embed_dims: tuple[int, ...] = (64, 128, 320, 512),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        decoder_dim: int = 256,
        decoder_dropout: float = 0.1,
        in_channels: int = 3,
    ) -> None:
        backbone = MixTransformer(embed_dims, num_heads, depths, sr_ratios, mlp_ratio, drop_path_rate, in_channels)
        head = AllMLPDecoder(backbone.out_channels, decoder_dim, num_classes, decoder_dropout)
        super().__init__(backbone, head, num_classes)


# The paper's variants (Section 4.1, Table 1): B1-B5 share widths and differ in depth; B0 is narrower.


# B2-B5 repeat the blocks of B1 more often (3-40 per stage) with a wider decoder; in numerical tests two per
# stage, as B0 and B1 have, cover every block and a block feeding a block.
_TWO_BLOCKS_PER_STAGE = {"depths": (2, 2, 2, 2)}


@register_model("segformer", size_divisor=32)
def segformer_b0(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B0 (3.8M parameters with 150 classes)."""
    args = dict(embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2), decoder_dim=256)
    return SegFormer(num_classes, **{**args, **kwargs})


@register_model("segformer", size_divisor=32)
def segformer_b1(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B1 (13.7M parameters with 150 classes)."""
    args = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2), decoder_dim=256)
    return SegFormer(num_classes, **{**args, **kwargs})


@register_model("segformer", size_divisor=32, test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b2(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B2 (27.5M parameters with 150 classes)."""
    args = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 4, 6, 3), decoder_dim=768)
    return SegFormer(num_classes, **{**args, **kwargs})


@register_model("segformer", size_divisor=32, test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b3(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B3 (47.3M parameters with 150 classes)."""
    args = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 4, 18, 3), decoder_dim=768)
    return SegFormer(num_classes, **{**args, **kwargs})


@register_model("segformer", size_divisor=32, test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b4(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B4 (64.1M parameters with 150 classes)."""
    args = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 8, 27, 3), decoder_dim=768)
    return SegFormer(num_classes, **{**args, **kwargs})


@register_model("segformer", size_divisor=32, test_kwargs=_TWO_BLOCKS_PER_STAGE)
def segformer_b5(num_classes: int = 19, **kwargs) -> nn.Module:
    """SegFormer-B5 (84.7M parameters with 150 classes)."""
    args = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 6, 40, 3), decoder_dim=768)
    return SegFormer(num_classes, **{**args, **kwargs})
