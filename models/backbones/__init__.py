"""Backbones shared by the architectures. One protocol: ``forward(images)`` returns a list of feature maps,
``out_channels`` and ``strides`` (relative to the input) describe them, one entry per map."""
from .hrnet import HRNet, concat_branches
from .mit import MixTransformer
from .resnet import ResNet, resnet
from .vgg import VGG, vgg16
from .vit import VisionTransformer

__all__ = ["HRNet", "MixTransformer", "ResNet", "VGG", "VisionTransformer", "concat_branches", "resnet", "vgg16"]
