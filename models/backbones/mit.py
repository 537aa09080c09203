"""MiT, the Mix Transformer encoder of SegFormer (Xie et al., "SegFormer: Simple and Efficient Design for
Semantic Segmentation with Transformers", NeurIPS 2021, https://arxiv.org/abs/2105.15203).

Four stages at strides 4, 8, 16 and 32. Each stage embeds overlapping patches with a strided convolution,
then runs pre-norm transformer blocks whose self-attention shortens the key/value sequence by a reduction
ratio R (a strided convolution), and whose feed-forward network (Mix-FFN) carries position information
through a 3x3 depth-wise convolution instead of position embeddings, so any input size works.

Deployment notes: normalisation is ``nn.LayerNorm`` over the last dimension, which the ONNX exporter emits as
one LayerNormalization node (opset >= 17); attention is plain MatMul + Softmax; every reshape reads its sizes
from the tensor, so one exported graph serves any H and W divisible by 32.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


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

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)  # (B, C, H, W)
        _, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        return self.norm(x), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a sequence shortened R^2 times.

    The reduction is a conv with kernel and stride R followed by LayerNorm, so the cost is O(N^2 / R^2).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
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
            self.norm = norm_layer(dim)

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

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, norm_layer)
        self.norm2 = norm_layer(dim)
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
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, patch_size, stride, norm_layer)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, mlp_ratio, sr_ratio, drop_paths[i], norm_layer) for i in range(depth)
        )
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.patch_embed(x)  # (B, HW, C)
        for block in self.blocks:
            x = block(x, h, w)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)  # (B, C, H, W)


class MixTransformer(nn.Module):
    """The MiT encoder: four stages at strides 4, 8, 16, 32; returns their feature maps. ``norm_layer`` builds
    every LayerNorm from its width (nn.LayerNorm, eps 1e-5, as the Hugging Face port; mmsegmentation's MiT uses
    eps 1e-6 throughout)."""

    def __init__(
        self,
        embed_dims: tuple[int, ...] = (64, 128, 320, 512),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        in_channels: int = 3,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
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
                    norm_layer=norm_layer,
                )
            )
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(embed_dims)
        self.strides = [4, 8, 16, 32]
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
