"""The contract every model follows, and the small blocks several families share.

A backbone returns a list of feature maps and exposes their channel counts as ``out_channels``; a head takes
that list and returns logits at a stated stride; ``SegmentationModel`` upsamples them to the input size.
Auxiliary heads (deep supervision used in training) live in ``aux_heads`` and run only when asked for, so an
exported graph never contains them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_conv_bn(m: nn.Module) -> None:
    """Kaiming-normal (fan-out) conv weights, zero biases, unit BatchNorm: the initialisation of torchvision's
    VGG and ResNet and of most segmentation reference code (``model.apply(init_conv_bn)``). It keeps
    activations at scale through deep plain ReLU stacks, where PyTorch's default shrinks them layer by layer."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) -> norm -> activation, the unit most CNN segmenters are built from."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        norm_layer: type[nn.Module] | None = nn.BatchNorm2d,
        act_layer: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=norm_layer is None)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if act_layer is not None:
            layers.append(act_layer(inplace=True) if act_layer in (nn.ReLU, nn.ReLU6) else act_layer())
        super().__init__(*layers)


class SegmentationModel(nn.Module):
    """backbone -> head -> bilinear upsampling to the input size.

    ``forward(images)`` returns logits ``(N, num_classes, H, W)``. ``forward(images, return_aux=True)``
    also returns the auxiliary heads' logits (each upsampled to the input size), for training.
    ``aux_indices[i]`` says which backbone feature ``aux_heads[i]`` reads. ``align_corners``: the upsampling's
    (mmsegmentation's segmentor resizes the logits with its decode head's option, False unless a config sets it:
    mmseg/models/segmentors/encoder_decoder.py, 0.x; decode_head.py ``predict_by_feat``, 1.x).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_classes: int,
        aux_heads: list[nn.Module] | None = None,
        aux_indices: list[int] | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.aux_heads = nn.ModuleList(aux_heads or [])
        self.aux_indices = list(aux_indices or [])
        if len(self.aux_heads) != len(self.aux_indices):
            raise ValueError("aux_heads and aux_indices must have the same length")

    def forward(self, images: torch.Tensor, return_aux: bool = False):
        size = images.shape[-2:]
        features = self.backbone(images)
        logits = self.upsample_logits(self.head(features), size)
        if not return_aux:
            return logits
        aux = [self.upsample_logits(h(features[i]), size) for h, i in zip(self.aux_heads, self.aux_indices)]
        return logits, aux

    def upsample_logits(self, logits: torch.Tensor, size) -> torch.Tensor:
        """(B, K, h, w) -> (B, K, *size): bilinear, with the model's ``align_corners``."""
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)
