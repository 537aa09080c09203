"""VGG16 for segmentation (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, https://arxiv.org/abs/1409.1556, configuration D): thirteen 3x3 convolutions in five
stages of 2, 2, 3, 3, 3 layers and widths 64, 128, 256, 512, 512, each stage closed by 2x2 stride-2 max pooling.
``forward`` returns the five pooled maps, pool1 ... pool5 (strides 2 ... 32), and fc7 when fc6/fc7 are built;
``out_channels`` and ``strides`` describe them. One backbone serves three architectures:

- **FCN-32s/16s/8s** (Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation",
  CVPR 2015) reads pool3, pool4 and fc7 (``features[2]``, ``features[3]``, ``features[-1]``), with the
  classifier's fc6/fc7 recast as convolutions: ``vgg16_fcn``.
- **SegNet** (Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
  Image Segmentation", TPAMI 2017) puts BatchNorm after every conv, drops fc6/fc7 and max-unpools with the
  encoder's pooling indices: ``vgg16_segnet``, whose ``forward`` also returns, per pool, the map that pool
  reduced (``return_sources``), from which ``models.ops.max_unpool`` recovers where each maximum was.
- **DeepLab-LargeFOV** (Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully
  Connected CRFs", ICLR 2015) runs at output stride 8: ``vgg16_largefov``.

**Output stride.** ``output_stride`` 16 or 8 turns pool5, or pool4 and pool5, into 3x3 stride-1 pooling with
padding 1 (which keeps the size, as in DeepLab's prototxt), and every conv after such a pool is dilated by the
stride it gave up (8: conv5 at dilation 2). ``strides`` reports the resulting strides, e.g. 2, 4, 8, 8, 8.

**fc6/fc7 live here, not in the heads**, because their ImageNet weights come with VGG (torchvision's
``classifier.0`` reshaped to a 7x7 conv is fc6, ``classifier.3`` is fc7) and because FCN and DeepLab differ in
them only by numbers: ``fc_channels`` (4096; LargeFOV 1024), ``fc_kernel_size`` (7; LargeFOV 3) and
``fc_dilation`` (by default 32 / output_stride, the dilation at which fc6 sees what it saw in the classifier,
DeepLab's "input stride 4" at stride 8; LargeFOV sets 12). Each is followed by ReLU and dropout. A head then
adds only its classifier. ``fc_channels=None`` (the default) builds neither.

**Not reproduced from the Caffe originals**, to keep every map at exactly ``input / stride`` for inputs that
the stride divides: FCN's 100-pixel padding of conv1_1 and the crops it forces (fc6 is padded to keep its
size instead); Caffe's round-up (ceil) pooling (floor here, as in torchvision); DeepLab's 3x3 stride-2 pool1-3
(2x2 here: same output size, same weights, no parameters). Parameters come in torchvision's ``features``
order (conv, [norm,] ReLU per layer), so its vgg16 checkpoint maps over by position; its vgg16_bn also keeps
a bias on each conv before BatchNorm, which ``ConvNormAct`` drops as redundant (4,224 parameters at full width):
a loader folds it into the norm's running mean (``running_mean - bias``), which gives the same outputs.

**Deployment.** The forward is Conv, ReLU and MaxPool only, with SegNet too: TensorRT's ONNX parser rejects
MaxPool's Indices output and has no MaxUnpool (onnx-tensorrt operators.md), so no integer indices leave the
encoder. The decoder's custom op ``max_unpool(values, source)`` takes the pooled map's source instead and
finds each window's first maximum itself, which is what PyTorch's indices say.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import ConvNormAct, init_conv_bn

# Stride of pools 1-5 and dilation of stages 1-5 for each output stride.
_SCHEDULES = {
    8: ((2, 2, 2, 1, 1), (1, 1, 1, 1, 2)),
    16: ((2, 2, 2, 2, 1), (1, 1, 1, 1, 1)),
    32: ((2, 2, 2, 2, 2), (1, 1, 1, 1, 1)),
}
VGG16_DEPTHS = (2, 2, 3, 3, 3)
VGG16_CHANNELS = (64, 128, 256, 512, 512)

class VGG(nn.Module):
    """A VGG backbone returning its five pooled maps (and fc7 when ``fc_channels`` is set).

    ``return_sources=True`` makes ``forward`` return ``(features, sources)``, ``sources[i]`` being the map pool
    i+1 reduced (stage i+1's output, before pooling); it needs ``output_stride=32``, where every pool is the
    2x2 stride-2 one a decoder can unpool. ``norm_layer=None`` gives convs with bias and no norm (VGG, FCN, DeepLab);
    ``nn.BatchNorm2d`` gives SegNet's encoder.
    """

    def __init__(
        self,
        depths: tuple[int, ...] = VGG16_DEPTHS,
        channels: tuple[int, ...] = VGG16_CHANNELS,
        output_stride: int = 32,
        norm_layer: type[nn.Module] | None = None,
        return_sources: bool = False,
        fc_channels: int | None = None,
        fc_kernel_size: int = 7,
        fc_dilation: int | None = None,
        fc_dropout: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if output_stride not in _SCHEDULES:
            raise ValueError(f"output_stride={output_stride}: expected one of {', '.join(map(str, _SCHEDULES))}")
        if len(depths) != 5 or len(channels) != 5:
            raise ValueError(f"depths {depths} and channels {channels}: expected five stages each, one per pool")
        if return_sources and output_stride != 32:
            raise ValueError(f"return_sources with output_stride={output_stride}: max unpooling needs "
                             "output_stride=32 (five 2x2 stride-2 pools, as SegNet's decoder unpools them)")
        pool_strides, dilations = _SCHEDULES[output_stride]
        self.return_sources = return_sources
        self.stages = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.out_channels: list[int] = []
        self.strides: list[int] = []
        previous, total = in_channels, 1
        for depth, width, pool_stride, dilation in zip(depths, channels, pool_strides, dilations):
            layers = []
            for j in range(depth):
                layers.append(ConvNormAct(previous if j == 0 else width, width, 3, dilation=dilation,
                                          norm_layer=norm_layer))
            previous = width
            self.stages.append(nn.Sequential(*layers))
            # A stride-1 pool keeps the size (3x3, padding 1), as DeepLab does, instead of vanishing.
            self.pools.append(nn.MaxPool2d(2, 2) if pool_stride == 2 else nn.MaxPool2d(3, 1, 1))
            total *= pool_stride
            self.out_channels.append(width)
            self.strides.append(total)

        self.fc = None
        if fc_channels is not None:
            dilation = 32 // output_stride if fc_dilation is None else fc_dilation
            if dilation * (fc_kernel_size - 1) % 2:
                raise ValueError(f"fc6 of kernel {fc_kernel_size} at dilation {dilation} cannot keep the map's "
                                 "size (dilation * (kernel - 1) is odd); choose an odd kernel or an even dilation")
            self.fc = nn.Sequential(
                ConvNormAct(previous, fc_channels, fc_kernel_size, dilation=dilation, norm_layer=norm_layer),  # fc6
                nn.Dropout(fc_dropout),
                ConvNormAct(fc_channels, fc_channels, 1, norm_layer=norm_layer),  # fc7
                nn.Dropout(fc_dropout),
            )
            self.out_channels.append(fc_channels)
            self.strides.append(total)
        self.apply(init_conv_bn)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = images
        features: list[torch.Tensor] = []
        sources: list[torch.Tensor] = []
        for stage, pool in zip(self.stages, self.pools):
            x = stage(x)  # (B, C_i, H_i, W_i): the map this stage's pool reduces, H_i = H / s_(i-1)
            sources.append(x)
            x = pool(x)  # (B, C_i, H / s_i, W / s_i)
            features.append(x)
        if self.fc is not None:
            x = self.fc(x)  # (B, C_fc, H / s_5, W / s_5)
            features.append(x)
        return (features, sources) if self.return_sources else features


def vgg16(**kwargs) -> VGG:
    """VGG16 (configuration D) without fc6/fc7; keyword arguments as ``VGG``'s."""
    return VGG(**kwargs)


def vgg16_fcn(**kwargs) -> VGG:
    """FCN's VGG16: fc6 as a 7x7 conv 512 -> 4096 and fc7 as a 1x1 conv 4096 -> 4096 (each ReLU, dropout 0.5)."""
    return VGG(**{"fc_channels": 4096, "fc_kernel_size": 7, **kwargs})


def vgg16_largefov(**kwargs) -> VGG:
    """DeepLab-LargeFOV's VGG16: output stride 8, fc6 a 3x3 conv at dilation 12 to 1024 channels, fc7 1x1."""
    return VGG(**{"output_stride": 8, "fc_channels": 1024, "fc_kernel_size": 3, "fc_dilation": 12, **kwargs})


def vgg16_segnet(**kwargs) -> VGG:
    """SegNet's encoder: VGG16 with BatchNorm after every conv, returning each pool's source map too."""
    return VGG(**{"norm_layer": nn.BatchNorm2d, "return_sources": True, **kwargs})
