"""Backbones shared by the architectures. One protocol: ``forward(images)`` returns a list of feature maps,
``out_channels`` and ``strides`` (relative to the input) describe them, one entry per map."""
from .mit import MixTransformer
from .resnet import ResNet, resnet
from .vgg import VGG, vgg16
from .vit import VisionTransformer

__all__ = ["MixTransformer", "ResNet", "VGG", "VisionTransformer", "resnet", "vgg16"]
