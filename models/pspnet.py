"""PSPNet (Zhao, Shi, Qi, Wang & Jia, "Pyramid Scene Parsing Network", CVPR 2017,
https://arxiv.org/abs/1612.01105) on the dilated ResNet-50/101 with the deep stem (ResNetV1c, as the
authors' hszhao/semseg and mmsegmentation's configs), output stride 8, and the pyramid pooling head
(models/heads/psp.py: bins 1, 2, 3, 6). Deep supervision trains an FCN head on stage 3 (the paper's
auxiliary loss, weight 0.4), kept in ``aux_heads`` and out of the engine.

One engine serves any input size in its profile: the pyramid's adaptive average pooling is the custom op
``seg::adaptive_avg_pool``, lowered with PyTorch's own bin edges at every size, also where the feature size is
not a multiple of the bins (mmdeploy's rewrite bakes the traced size's kernel in, so its PSPNet engines are
static). Neither the paper nor the official releases state a parameter count.
"""
from __future__ import annotations

from torch import nn

from .backbones.resnet import DEPTHS
from .heads.context import dilated_resnet_model
from .heads.psp import PSPHead
from .registry import register_model


def _pspnet(depth: int, num_classes: int, **backbone) -> nn.Module:
    def head(channels: list[int]) -> PSPHead:
        return PSPHead(channels[-1], num_classes)  # 512 channels per level on 2048

    return dilated_resnet_model(DEPTHS[depth], num_classes, head, 256 * backbone.get("base_width", 64) // 64,
                                **backbone)  # the auxiliary head: 256 on 1024


# Numerical tests: a quarter of the widths; every block kept.
_NARROW = {"base_width": 16, "stem_width": 16}


@register_model("pspnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("adaptive_avg_pool",))
def pspnet_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSPNet, dilated ResNet-50 (output stride 8), pyramid pooling with bins 1, 2, 3, 6."""
    return _pspnet(50, num_classes, **kwargs)


@register_model("pspnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("adaptive_avg_pool",))
def pspnet_r101(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSPNet, dilated ResNet-101 (output stride 8), pyramid pooling with bins 1, 2, 3, 6."""
    return _pspnet(101, num_classes, **kwargs)
