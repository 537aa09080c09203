"""PSPNet (Zhao, Shi, Qi, Wang & Jia, "Pyramid Scene Parsing Network", CVPR 2017,
https://arxiv.org/abs/1612.01105) on the dilated ResNet-50/101 with the deep stem (ResNetV1c, as the
authors' hszhao/semseg and mmsegmentation's configs; 64-64-128 wide, and 32-32-64 in the ``_v1c`` variants,
mmsegmentation's, which load its checkpoints; ``pspnet_r18_v1c`` is mmsegmentation's ResNetV1c-18 with heads of
128 and 64 channels), output stride 8, and the pyramid pooling head
(models/heads/psp.py: bins 1, 2, 3, 6). Deep supervision trains an FCN head on stage 3 (the paper's
auxiliary loss, weight 0.4), kept in ``aux_heads`` and out of the engine.

One engine serves any input size in its profile: the pyramid's adaptive average pooling is the custom op
``seg::adaptive_avg_pool``, lowered with PyTorch's own bin edges at every size, also where the feature size is
not a multiple of the bins (mmdeploy's rewrite bakes the traced size's kernel in, so its PSPNet engines are
static). Neither the paper nor the official releases state a parameter count.
"""
from __future__ import annotations

from torch import nn

from .backbones.resnet import DEPTHS, BasicBlock
from .heads.context import MMSEG_D8_CONFIG, MMSEG_DILATED_RESNET_KEYS, dilated_resnet_model
from .heads.psp import PSPHead
from .keymaps import KeyMap, conv_norm
from .registry import register_model


def _pspnet(depth: int, num_classes: int, head_channels: int | None = None, aux_channels: int | None = None,
            align_corners: bool = False, **backbone) -> nn.Module:
    def head(channels: list[int]) -> PSPHead:
        # by default 512 channels per level on 2048; the pyramid resizes with the model's align_corners, as mmseg's
        return PSPHead(channels[-1], num_classes, head_channels, align_corners=align_corners)

    if aux_channels is None:
        aux_channels = 256 * backbone.get("base_width", 64) // 64  # 256 on 1024
    return dilated_resnet_model(DEPTHS[depth], num_classes, head, aux_channels, align_corners=align_corners,
                                **backbone)


# Numerical tests: a quarter of the widths; every block kept.
_NARROW = {"base_width": 16, "stem_width": 16}
_NARROW_V1C = {"base_width": 16, "stem_width": 8}  # the stem half the base width, as V1c
_NARROW_R18 = {**_NARROW_V1C, "head_channels": 32, "aux_channels": 16}  # the heads a quarter of 128 and 64

# mmsegmentation's pspnet_r50-d8 / pspnet_r101-d8 checkpoints (configs/_base_/models/pspnet_r50-d8.py, 3f8d34e:
# ResNetV1c, PSPHead with channels 512 and pool scales 1, 2, 3, 6). PSPHead (mmseg/models/decode_heads/
# psp_head.py, 5563185 and the 0.x 0d003bc alike): psp_modules.{i} = (AdaptiveAvgPool2d, ConvModule 1x1),
# concatenated after the input in scale order as ours, then bottleneck (ConvModule 3x3) and conv_seg.
# Every variant has the table: the zoo's files (ResNetV1c's default stem, 32-32-64) fit the _v1c ones;
# pspnet_r50 / pspnet_r101 (64-64-128) take mmseg models trained with stem_channels=128, and a zoo file there fails
# naming the stem's shapes. The pspnet_r18-d8 files (configs/pspnet/pspnet_r18-d8_512x1024_80k_cityscapes.py,
# b4d3bf4, and its 769x769 twin) narrow the heads (decode 512 -> 128, auxiliary 256 -> 64) on BasicBlocks of the
# same key names: pspnet_r18_v1c.
MMSEG_KEYS = KeyMap("mmseg", (
    *MMSEG_DILATED_RESNET_KEYS,
    *conv_norm(r"decode_head\.psp_modules\.(\d)\.1", r"head.ppm.stages.\1"),
    *conv_norm(r"decode_head\.bottleneck", "head.bottleneck"),
    (r"decode_head\.conv_seg\.(\w+)", r"head.classifier.\1"),
), config=MMSEG_D8_CONFIG, note="mmsegmentation PSPHead on ResNetV1c (configs/_base_/models/pspnet_r50-d8.py)")


@register_model("pspnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("adaptive_avg_pool",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def pspnet_r50(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSPNet, dilated ResNet-50 (output stride 8), pyramid pooling with bins 1, 2, 3, 6."""
    return _pspnet(50, num_classes, **kwargs)


@register_model("pspnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW, custom_ops=("adaptive_avg_pool",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def pspnet_r101(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSPNet, dilated ResNet-101 (output stride 8), pyramid pooling with bins 1, 2, 3, 6."""
    return _pspnet(101, num_classes, **kwargs)


@register_model("pspnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW_R18, custom_ops=("adaptive_avg_pool",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def pspnet_r18_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSPNet on mmsegmentation's ResNetV1c-18 (deep stem 32-32-64; its BasicBlock dilates only the first 3x3
    conv), pyramid levels and fusion 128 wide, auxiliary head 64: its pspnet_r18-d8 checkpoints load here."""
    return _pspnet(18, num_classes, **{"stem_width": 32, "head_channels": 128, "aux_channels": 64,
                                       "block": BasicBlock, "dilate_conv2": False, **kwargs})


@register_model("pspnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW_V1C, custom_ops=("adaptive_avg_pool",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def pspnet_r50_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSPNet on mmsegmentation's ResNetV1c-50 (deep stem 32-32-64): its pspnet_r50-d8 checkpoints load here."""
    return _pspnet(50, num_classes, **{"stem_width": 32, **kwargs})


@register_model("pspnet", size_divisor=8, output_stride=8, test_kwargs=_NARROW_V1C, custom_ops=("adaptive_avg_pool",),
                checkpoints=(MMSEG_KEYS,), takes_align_corners=True)
def pspnet_r101_v1c(num_classes: int = 19, **kwargs) -> nn.Module:
    """PSPNet on mmsegmentation's ResNetV1c-101 (deep stem 32-32-64): its pspnet_r101-d8 checkpoints load here."""
    return _pspnet(101, num_classes, **{"stem_width": 32, **kwargs})
