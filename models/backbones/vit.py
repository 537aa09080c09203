"""ViT, the Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale", ICLR 2021, https://arxiv.org/abs/2010.11929), as a segmentation backbone the way
Segmenter (Strudel et al., "Segmenter: Transformer for Semantic Segmentation", ICCV 2021) and DPT (Ranftl et
al., "Vision Transformers for Dense Prediction", ICCV 2021) use it.

The image is cut into p x p patches (a convolution with kernel = stride = p, p = 16 or 8), a class token is
prepended, learned position embeddings are added, and pre-norm transformer blocks (LayerNorm -> multi-head
self-attention, LayerNorm -> MLP with GELU) run at one resolution throughout. ``out_indices`` picks the
blocks whose outputs are returned (Segmenter: the last; DPT-Base: 2, 5, 8, 11; DPT-Large: 5, 11, 17, 23),
each as a (B, C, H/p, W/p) map with the class token dropped (DPT's "ignore" readout). With ``final_norm``
the last block's output goes through the encoder's final LayerNorm first, as Segmenter's encoder does;
DPT reads the raw block outputs (``final_norm=False``).

Position embeddings are learned for one training grid (``img_size / patch_size``, e.g. 224/16 = 14 x 14, or
512/16 = 32 x 32 for Segmenter). ``forward`` resizes the grid part to the input's grid, read from the
tensor, so one exported graph serves every H and W divisible by ``patch_size``. The resize runs at every
size, the training grid included, where it is the identity (bicubic and bilinear with align_corners=False
sample each source point with weight exactly 1 there). It is not skipped there: torch.onnx.export(dynamo=True)
resolves an ``if size == grid`` test at the sample size, and a graph exported at the training size then
has no Resize, still declares H and W dynamic, and fails at every other size.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``), so timm checkpoints, and
Segmenter's and DPT's encoder weights once their prefix is stripped, load by name (the classifier ``head``
left out). LayerNorm eps is timm's 1e-6; Segmenter's own code uses PyTorch's default 1e-5 (``norm_eps``).

Deployment notes: LayerNorm exports as one LayerNormalization node (opset >= 17); attention is plain
MatMul + Softmax, as in mit.py; the position-embedding resize is one ONNX Resize whose output size is
computed from the input's shape. Bicubic maps to Resize mode "cubic", which TensorRT's documented ONNX
operator table does not list (export/compile/compat.py flags it); the default ``pos_embed_mode="bilinear"``
gives mode "linear", which it does. "bicubic_matmul" is the bicubic resize as two interpolation matrices (MatMul
and elementwise ops), for weights trained with bicubic resizing that must build with TensorRT.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .mit import DropPath

# How the position-embedding grid is resized: "bicubic" and "bilinear" by F.interpolate (one ONNX Resize);
# "bicubic_matmul" is the same bicubic as two interpolation matrices (see ``bicubic_matrix``).
POS_EMBED_MODES = ("bicubic", "bilinear", "bicubic_matmul")


def resize_pos_embed(grid: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resample a position-embedding grid ``(1, C, gh, gw)`` to ``size`` = (h, w).

    align_corners=False, as timm, mmsegmentation, Segmenter and DPT resize. No antialiasing: TensorRT's
    Resize does not support it (export/compile/compat.py). timm's run-time resize (``dynamic_img_size``) does
    antialias, and its antialiased bicubic kernel (a = -0.5) differs from plain bicubic (a = -0.75) even
    when enlarging, so "bicubic" here matches mmsegmentation's resize, not timm's, away from the training grid.
    "bicubic_matmul" computes mmsegmentation's bicubic resize without a cubic Resize node, which TensorRT's
    ONNX operator table does not list: ``A_h @ (grid @ A_w^T)``.
    """
    if mode == "bicubic_matmul":
        rows = bicubic_matrix(size[0], grid.shape[-2], grid.dtype, grid.device)  # (h, gh)
        cols = bicubic_matrix(size[1], grid.shape[-1], grid.dtype, grid.device)  # (w, gw)
        # The grid (a constant in the graph) is the first operand of its MatMul: INT8 quantizers take a constant
        # second operand for a weight and give it per-channel scales, which ONNX Runtime's 4-D QLinearMatMul
        # rejects.
        return rows @ (grid @ cols.transpose(0, 1))  # (1, C, h, w)
    return F.interpolate(grid, size=size, mode=mode, align_corners=False)


def bicubic_matrix(size: int, source: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (size, source) matrix of 1-D bicubic interpolation as F.interpolate(mode="bicubic",
    align_corners=False) computes it (PyTorch's aten/src/ATen/native/UpSample.h: source coordinate
    (i + 0.5) * source / size - 0.5, Keys' kernel with a = -0.75, the four taps clamped to the border).

    Built from Range, Floor, Equal and elementwise arithmetic on the output size, so the graph stays dynamic
    in H and W and uses only ops every supported TensorRT release parses. At size == source the taps' weights
    are exactly 0, 1, 0, 0: the matrix is the identity and the resize returns the grid unchanged."""
    a = -0.75
    x = (torch.arange(size, dtype=dtype, device=device) + 0.5) * (source / size) - 0.5  # (size,)
    x0 = torch.floor(x)
    t = x - x0

    def near(d: torch.Tensor) -> torch.Tensor:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: torch.Tensor) -> torch.Tensor:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    weights = torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=1)  # (size, 4)
    taps = (x0.unsqueeze(1) + torch.arange(-1, 3, dtype=dtype, device=device)).clamp(0, source - 1)  # (size, 4)
    hits = taps.unsqueeze(2) == torch.arange(source, dtype=dtype, device=device)  # (size, 4, source)
    return (weights.unsqueeze(2) * hits.to(dtype)).sum(dim=1)  # (size, source)


class PatchEmbed(nn.Module):
    """Non-overlapping patches: a convolution with kernel = stride = ``patch_size``."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, C, H/p, W/p)


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection (the weight layout of timm and Segmenter)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}; choose heads that divide it")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, d)
        # Plain MatMul + Softmax rather than F.scaled_dot_product_attention, for the reason given in mit.py.
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    """fc -> GELU -> fc, the transformer's feed-forward network."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, N, C)


class Block(nn.Module):
    """Pre-norm block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float,
                 norm_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """A ViT backbone returning the outputs of the blocks ``out_indices`` as maps at stride ``patch_size``.

    ``img_size`` is the training resolution: it fixes the position-embedding grid (``img_size //
    patch_size``) and so the weights' shape, not the sizes the network accepts (any H, W divisible by
    ``patch_size``). ``out_indices`` may count from the end (-1 is the last block). ``pos_embed_mode`` is how
    the grid is resized to other inputs: "bilinear" (the default) as Segmenter's and DPT's reference code do
    and TensorRT's documented Resize supports, or "bicubic" as mmsegmentation does (see ``resize_pos_embed``
    for timm), for weights trained that way.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        out_indices: Sequence[int] = (-1,),
        final_norm: bool = True,
        pos_embed_mode: str = "bilinear",
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}; "
                             f"choose a training size that is")
        if pos_embed_mode not in POS_EMBED_MODES:
            raise ValueError(f"pos_embed_mode '{pos_embed_mode}': expected one of {', '.join(POS_EMBED_MODES)}")
        indices = [i + depth if i < 0 else i for i in out_indices]
        if not indices or any(not 0 <= i < depth for i in indices) or indices != sorted(set(indices)):
            raise ValueError(f"out_indices {tuple(out_indices)}: expected increasing block indices in "
                             f"[{-depth}, {depth - 1}] for depth {depth}, e.g. (-1,) or (2, 5, 8, 11)")
        if final_norm and indices[-1] != depth - 1:
            raise ValueError(f"final_norm=True normalises the last block's output, but out_indices "
                             f"{tuple(out_indices)} does not return block {depth - 1}; pass final_norm=False "
                             f"or include it")

        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_prefix_tokens = 1 if class_token else 0
        self.pos_embed_mode = pos_embed_mode
        self.out_indices = indices
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        # The class token's embedding comes first, as in timm's (and Segmenter's, DPT's) checkpoints.
        num_positions = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        # Stochastic depth grows linearly over the blocks, as in timm and Segmenter.
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], norm_eps) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if final_norm else None
        self.out_channels = [embed_dim] * len(indices)
        self.strides = [patch_size] * len(indices)
        self._init_weights()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            # The strided conv would silently drop the last rows/columns, misaligning the upsampled logits.
            raise ValueError(f"input size {x.shape[-2]}x{x.shape[-1]} is not a multiple of patch_size {p}; "
                             f"pad or resize the image to a multiple of it")
        x = self.patch_embed(x)  # (B, C, h, w), h = H/p, w = W/p
        b, c, h, w = x.shape
        # The class token dropped (DPT's "ignore" readout), each sequence back on the grid.
        return [t[:, self.num_prefix_tokens:].transpose(1, 2).reshape(b, c, h, w)  # (B, C, h, w)
                for t in self.forward_tokens(x)]

    def forward_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The token sequences (B, P + hw, C) of the blocks ``out_indices``, prefix (class) token first, from
        embedded patches ``x`` (B, C, h, w): for heads that read the class token (DPT's "project" readout)
        and for patch embeddings other than ``patch_embed`` (DPT-Hybrid's ResNet stages)."""
        b, c, h, w = x.shape
        x = x + self._grid_pos_embed(h, w)  # (B, C, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, hw, C)
        if self.cls_token is not None:
            cls = self.cls_token + self.pos_embed[:, :1]  # (1, 1, C)
            x = torch.cat([cls.expand(b, -1, -1), x], dim=1)  # (B, 1 + hw, C)

        features = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x)  # (B, P + hw, C), P = num_prefix_tokens (the class token or none)
            if i in self.out_indices:
                features.append(self.norm(x) if self.norm is not None and i == last else x)
        return features

    def _grid_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """The patch positions' embeddings resized from the training grid to (h, w), as a (1, C, h, w) map."""
        gh, gw = self.grid_size
        grid = self.pos_embed[:, self.num_prefix_tokens:]  # (1, gh*gw, C)
        grid = grid.transpose(1, 2).reshape(1, -1, gh, gw)  # (1, C, gh, gw)
        return resize_pos_embed(grid, (h, w), self.pos_embed_mode)  # (1, C, h, w)

    def _init_weights(self) -> None:
        """timm's initialisation: truncated-normal position embeddings and linears, a near-zero class token."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


# The paper's Base and Large (Table 1) and DeiT's Tiny and Small (Touvron et al., ICML 2021, Table 1), as
# timm's vit_{tiny,small,base,large}_patch16_224 define them.


def vit_tiny(**kwargs) -> VisionTransformer:
    """ViT-Tiny: width 192, 12 blocks, 3 heads; keyword arguments as ``VisionTransformer``'s."""
    return VisionTransformer(**{**dict(embed_dim=192, depth=12, num_heads=3), **kwargs})


def vit_small(**kwargs) -> VisionTransformer:
    """ViT-Small: width 384, 12 blocks, 6 heads; keyword arguments as ``VisionTransformer``'s."""
    return VisionTransformer(**{**dict(embed_dim=384, depth=12, num_heads=6), **kwargs})


def vit_base(**kwargs) -> VisionTransformer:
    """ViT-Base: width 768, 12 blocks, 12 heads; keyword arguments as ``VisionTransformer``'s."""
    return VisionTransformer(**{**dict(embed_dim=768, depth=12, num_heads=12), **kwargs})


def vit_large(**kwargs) -> VisionTransformer:
    """ViT-Large: width 1024, 24 blocks, 16 heads; keyword arguments as ``VisionTransformer``'s."""
    return VisionTransformer(**{**dict(embed_dim=1024, depth=24, num_heads=16), **kwargs})


def mmseg_vit_keys(src: str, dst: str) -> tuple[tuple[str, str], ...]:
    """Key-map rules for mmsegmentation's VisionTransformer (mmseg/models/backbones/vit.py, 1.x 886c189 and 0.x
    00bf9f6: ``patch_embed.projection`` (mmseg/models/utils/embed.py's PatchEmbed), ``cls_token``, ``pos_embed``,
    ``layers.{i}`` (``mmseg_layer_keys``) and the final norm ``ln1``) at ``src`` (a pattern), ours a
    ``VisionTransformer`` at ``dst``."""
    return (
        (rf"{src}\.patch_embed\.projection\.(\w+)", rf"{dst}.patch_embed.proj.\1"),
        (rf"{src}\.cls_token", f"{dst}.cls_token"),
        (rf"{src}\.pos_embed", f"{dst}.pos_embed"),
        *mmseg_layer_keys(rf"{src}\.layers", f"{dst}.blocks"),
        (rf"{src}\.ln1\.(\w+)", rf"{dst}.norm.\1"),
    )


def mmseg_layer_keys(src: str, dst: str) -> tuple[tuple[str, str], ...]:
    """Rules for mmsegmentation's TransformerEncoderLayers at ``src``.{i} (backbones/vit.py; also the layers of
    Segmenter's mask head): ``ln1``, ``attn.attn`` (mmcv's MultiheadAttention around nn.MultiheadAttention, whose
    packed ``in_proj`` rows are query, key, value: our ``qkv`` as it is), ``ln2``, ``ffn.layers`` (mmcv's FFN:
    ``0.0`` the first Linear, ``1`` the second); ours ``Block``s at ``dst``.{i}."""
    layer, block = rf"{src}\.(\d+)\.", rf"{dst}.\1."
    return (
        (layer + r"ln1\.(\w+)", block + r"norm1.\2"),
        (layer + r"attn\.attn\.in_proj_(weight|bias)", block + r"attn.qkv.\2"),
        (layer + r"attn\.attn\.out_proj\.(\w+)", block + r"attn.proj.\2"),
        (layer + r"ln2\.(\w+)", block + r"norm2.\2"),
        (layer + r"ffn\.layers\.0\.0\.(\w+)", block + r"mlp.fc1.\2"),
        (layer + r"ffn\.layers\.1\.(\w+)", block + r"mlp.fc2.\2"),
    )
