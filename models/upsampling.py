"""The four ways a decoder enlarges a feature map, as modules with one call signature,
``module(x, source=None) -> (B, C, s*h, s*w)``, so a decoder can take any of them (``UPSAMPLING``):

- **bed of nails** (``BedOfNails``): each value at the top-left of its s x s cell, zeros elsewhere; no
  parameters, pure data movement (Unsqueeze/Concat/Reshape in ONNX, so exact in every precision).
- **nearest neighbour** (``NearestUpsample``): each value copied over its cell (ONNX Resize, nearest).
- **max unpooling** (``MaxUnpool``): SegNet's (Badrinarayanan et al., TPAMI 2017): each value back at the
  position of its window's maximum in ``source``, the map the encoder pooled, zeros elsewhere. Through the
  custom op ``seg::max_unpool`` (models/ops/max_unpool.py), since TensorRT has no MaxUnpool.
- **transposed convolution** (``TransposedConvUpsample``): learned, kernel 2s, stride s, padding s/2, which
  gives exactly s*h x s*w; initialised to bilinear interpolation per channel, as FCN (Long et al., CVPR 2015)
  initialises its "deconvolution" layers.

These are the four "in-network upsampling" methods of Stanford CS231n's lecture on detection and
segmentation (2017, lecture 11); only the last has weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops.max_unpool import max_unpool


class BedOfNails(nn.Module):
    """(B, C, h, w) -> (B, C, s*h, s*w), x at (s*i, s*j), zeros elsewhere."""

    def __init__(self, channels: int | None = None, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.scale
        zeros = torch.zeros_like(x).unsqueeze(-1).expand(b, c, h, w, s - 1)
        x = torch.cat([x.unsqueeze(-1), zeros], dim=-1).reshape(b, c, h, 1, w * s)  # each value then s-1 zeros
        zeros = torch.zeros_like(x).expand(b, c, h, s - 1, w * s)
        return torch.cat([x, zeros], dim=3).reshape(b, c, h * s, w * s)  # each row then s-1 rows of zeros


class NearestUpsample(nn.Module):
    """(B, C, h, w) -> (B, C, s*h, s*w), each value repeated over its s x s cell."""

    def __init__(self, channels: int | None = None, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class MaxUnpool(nn.Module):
    """(B, C, h, w) and the pooled map's source (B, C, H, W), H in {2h, 2h + 1} -> (B, C, H, W)."""

    def __init__(self, channels: int | None = None, scale: int = 2) -> None:
        super().__init__()
        if scale != 2:
            raise ValueError(f"MaxUnpool scale={scale}: only 2x2 stride-2 pooling is unpooled (scale=2)")

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        if source is None:
            raise ValueError("MaxUnpool needs the encoder map that was pooled (source=...)")
        return max_unpool(x, source)


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """(channels, channels, size, size) weights of a transposed conv that interpolates each channel bilinearly
    on its own (zeros between channels): FCN's ``upsample_filt`` initialisation."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor  # (size,)
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = filt[:, None] * filt[None, :]
    return weight


class TransposedConvUpsample(nn.ConvTranspose2d):
    """(B, C, h, w) -> (B, C, s*h, s*w): a learned transposed conv, no bias, initialised bilinear."""

    def __init__(self, channels: int, scale: int = 2) -> None:
        if scale % 2:
            raise ValueError(f"TransposedConvUpsample scale={scale}: use an even scale (kernel 2s, padding s/2 "
                             "give exactly s times the size only then)")
        super().__init__(channels, channels, 2 * scale, scale, scale // 2, bias=False)
        self.scale = scale
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(channels, 2 * scale))

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


UPSAMPLING: dict[str, type[nn.Module]] = {
    "bed_of_nails": BedOfNails,
    "nearest": NearestUpsample,
    "max_unpool": MaxUnpool,
    "transposed_conv": TransposedConvUpsample,
}
