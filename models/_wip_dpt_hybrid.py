"""WORK IN PROGRESS, not registered (the leading underscore keeps models/__init__.py from importing it):
DPT-Hybrid (models/dpt.py, ``HybridViT``). Forward, export at dynamic H/W, fp32 and fp16 parity hold; the CPU
INT8 placement fails inside ONNX Runtime's quantizer: GroupNorm exports as Reshape -> InstanceNormalization ->
Reshape -> Mul -> Add, the exporter merges the thirteen identical InstanceNormalization bias constants into one
initializer, and ``quantize_static`` raises "Quantization parameter shared mode is not supported for weight
yet". Registering it needs an export-side fix (one rewrite giving each InstanceNormalization its own scale and
bias, or leaving InstanceNormalization out of the CPU placement), not a model change.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .backbones.resnet import ResNet
from .backbones.vit import VisionTransformer
from .base import init_conv_bn
from .dpt import DPT, ReadoutViT, _SMALL_VIT


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


# What its registration would be: register_model("dpt", size_divisor=32, output_stride=1, test_kwargs=TEST_KWARGS).
TEST_KWARGS = dict(vit=dict(_SMALL_VIT, out_indices=(0, 1)), stage_blocks=(1, 1, 1),
                   reassemble_channels=(None, None, 48, 64), features=32, resnet_width=32)


def dpt_hybrid_r50(num_classes: int = 19, vit: dict | None = None, readout: str = "project",
                   stage_blocks: Sequence[int] = (3, 4, 9), resnet_width: int = 64,
                   reassemble_channels: Sequence[int | None] = (None, None, 768, 768),
                   features: int = 256) -> nn.Module:
    """DPT-Hybrid: ResNet-50 stages 1-3 + ViT-B/16 blocks, levels from ResNet stages 1, 2 and blocks 9, 12."""
    args = dict(embed_dim=768, depth=12, num_heads=12, img_size=384, out_indices=(8, 11))
    backbone = VisionTransformer(**{**args, **(vit or {}), "final_norm": False})
    encoder = HybridViT(backbone, readout, stage_blocks, resnet_width)
    return DPT(encoder, num_classes, reassemble_channels, features)
