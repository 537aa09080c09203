"""SegNet (Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
Image Segmentation", TPAMI 2017, https://arxiv.org/abs/1511.00561).

The encoder is VGG16's thirteen convs with BatchNorm (models/backbones/vgg.py, ``vgg16_segnet``); the decoder
mirrors it stage by stage: upsample with the encoder's max-pooling indices (max unpooling: each value back
where its window's maximum was, zeros elsewhere), then as many 3x3 conv-BN-ReLU as the encoder stage has, the
last of each stage narrowing to the next stage's width (512, 512, 512 | 512, 512, 256 | 256, 256, 128 |
128, 64 | 64, classes: the decoder of the authors' Caffe model, SegNet-Tutorial's ``segnet_train.prototxt``).
The last conv scores the classes at full resolution, without norm or ReLU.

``upsampling`` picks any method of models/upsampling.py for the decoder (default ``max_unpool``, SegNet's);
the others are the comparison the paper's Sec. 4 draws (bed of nails is unpooling that ignores where the
maxima were; a transposed conv learns the upsampling, as FCN and DeconvNet do).

Deployment: no integer tensor crosses the graph; the unpooling is the custom op ``seg::max_unpool`` taking
the pooled map's source (the encoder's pre-pool map), lowered to strided slices and comparisons that TensorRT
accepts (it has no MaxUnpool and no MaxPool indices output).

Parameters: 29,447,189 at 21 classes (the layers above; BatchNorm without the conv biases the Caffe model
also carries). The paper's Table 6 lists 29.5M trainable parameters for SegNet; no stored copy of the paper
was at hand to check that figure, so the tests do not assert it.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones.vgg import vgg16_segnet
from .base import ConvNormAct, SegmentationModel
from .registry import register_model
from .upsampling import UPSAMPLING


class SegNetDecoder(nn.Module):
    """The decoder: per encoder stage, deepest first, upsample 2x then the mirrored convs. Takes the encoder's
    ``(features, sources)`` and returns logits at stride 1."""

    def __init__(self, channels: list[int], depths: tuple[int, ...], num_classes: int, upsampling: str = "max_unpool",
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling {upsampling!r}: expected one of {', '.join(UPSAMPLING)}")
        self.ups = nn.ModuleList()
        self.stages = nn.ModuleList()
        for i in reversed(range(len(channels))):
            width, out = channels[i], channels[i - 1] if i else None
            self.ups.append(UPSAMPLING[upsampling](width, 2))
            layers: list[nn.Module] = [ConvNormAct(width, width, 3, norm_layer=norm_layer) for _ in range(depths[i] - 1)]
            layers.append(ConvNormAct(width, out, 3, norm_layer=norm_layer) if out else nn.Conv2d(width, num_classes, 3, padding=1))
            self.stages.append(nn.Sequential(*layers))

    def forward(self, encoded: tuple[list[torch.Tensor], list[torch.Tensor]]) -> torch.Tensor:
        features, sources = encoded
        x = features[-1]  # (B, 512, H/32, W/32)
        for up, stage, source in zip(self.ups, self.stages, reversed(sources)):
            x = stage(up(x, source))  # (B, C_(i-1), H_i, W_i), the size of the map pool i reduced
        return x  # (B, num_classes, H, W)


@register_model("segnet", size_divisor=32, output_stride=1, custom_ops=("max_unpool",),
                test_kwargs={"channels": (8, 16, 32, 64, 64)})
def segnet(num_classes: int = 21, upsampling: str = "max_unpool", **kwargs) -> nn.Module:
    """SegNet: VGG16-BN encoder, mirrored decoder upsampling with the encoder's max-pooling indices."""
    encoder = vgg16_segnet(**kwargs)
    depths = tuple(len(stage) for stage in encoder.stages)
    head = SegNetDecoder(encoder.out_channels, depths, num_classes, upsampling)
    return SegmentationModel(encoder, head, num_classes)
