"""HRNetV2, the high-resolution network (Sun et al., "Deep High-Resolution Representation Learning for Human
Pose Estimation", CVPR 2019; Wang et al., "Deep High-Resolution Representation Learning for Visual
Recognition", TPAMI 2020, https://arxiv.org/abs/1908.07919).

Instead of downsampling and recovering resolution, HRNet keeps a stride-4 branch for the whole network and
adds a lower-resolution branch at each stage:

- **Stem**: two 3x3 stride-2 convs (64 channels), so every branch starts at stride 4 or below.
- **Stage 1**: bottleneck blocks on the single stride-4 branch (width 64, 256 channels out).
- **Stages 2-4**: 2, 3 and 4 parallel branches at strides 4, 8, 16, 32 with widths C, 2C, 4C, 8C (HRNetV2-W18:
  C = 18; W48: C = 48). A stage is a sequence of high-resolution modules; each module runs basic blocks on
  every branch, then **multi-resolution fusion**: every output branch sums every input branch, brought to its
  resolution by strided 3x3 convs (downward) or a 1x1 conv and bilinear upsampling (upward). A transition
  between stages adds the new branch with a strided 3x3 conv on the lowest-resolution branch.

``forward`` returns the four branch outputs (strides 4, 8, 16, 32). HRNetV2's representation for
segmentation, "upsample every branch to stride 4 and concatenate", is ``concat_branches``: a function, not
part of the backbone, because heads differ in what they read (the HRNetV2 head and OCRNet read the
concatenation; other heads read the branches).

Configurations follow the official repositories (HRNet/HRNet-Semantic-Segmentation ``lib/config/
hrnet_config.py`` and ``experiments/cityscapes/seg_hrnet_w18_small_v{1,2}_*.yaml``): W18 and W48 have 4
bottlenecks in stage 1, 4 basic blocks per branch per module, and 1, 4 and 3 modules in stages 2, 3 and 4;
the small W18 variants are shallower (``hrnetv2_w18_small_v1`` / ``_v2``). Module names follow the official
code (``layer1``, ``transition1``-``3``, ``stage2``-``4``, ``branches``, ``fuse_layers``; the stem is ``stem``),
with the house's ``ConvNormAct`` (conv ``.0``, norm ``.1``), so fusion, transition and downsample keys equal the
official ones; by the official module structure, a checkpoint should load after renaming each ``convK``/``bnK``
pair to ``convK.0``/``convK.1`` and the stem's ``conv1``/``bn1``/``conv2``/``bn2`` to ``stem.0``/``stem.1`` (not
checked on files in mmsegmentation's layout, whose names ``MMSEG_HRNET_KEYS`` maps; tests/
test_checkpoints_mmseg_more.py).

Deployment notes: every upsampling is bilinear with ``align_corners=False`` and reads its target size from
the tensor it matches, so one exported graph serves any H and W; with ``align_corners=False`` the ONNX Resize
is ``half_pixel``, which TensorRT's resize layer implements directly. The official code's master branch
upsamples bilinearly without setting ``align_corners`` (False since PyTorch 0.4), its HRNet-OCR branch makes
it a config flag defaulting to True, and mmsegmentation's HRNet uses False; False here also matches
``SegmentationModel``'s final upsampling. Weights trained with True run here with slightly shifted
upsampling.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import ConvNormAct
from .resnet import Bottleneck


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN plus the input, then ReLU (He et al., CVPR 2016): the block of HRNet's branches, which
    keep their width, so the shortcut is always the identity."""

    def __init__(self, channels: int, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 3, norm_layer=norm_layer)
        self.conv2 = ConvNormAct(channels, channels, 3, norm_layer=norm_layer, act_layer=None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + x)


def _upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of ``x`` to ``like``'s H and W, read from the tensor so export stays dynamic."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class HighResolutionModule(nn.Module):
    """One HRNet module: ``num_blocks`` basic blocks on each branch, then multi-resolution fusion.

    Fusion of input branch j into output branch i: identity if j == i; a 1x1 conv-BN then bilinear upsampling
    if j is coarser (j > i); i - j strided 3x3 convs if j is finer (conv-BN-ReLU keeping j's channels, the
    last one conv-BN to i's channels). The sum of the contributions goes through ReLU.
    """

    def __init__(self, channels: list[int], num_blocks: int, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(c, norm_layer) for _ in range(num_blocks))) for c in channels
        )
        self.fuse_layers = nn.ModuleList()
        if len(channels) > 1:
            for i, c_out in enumerate(channels):
                self.fuse_layers.append(nn.ModuleList(
                    self._fusion(c_in, c_out, i - j, norm_layer) for j, c_in in enumerate(channels)
                ))
        self.act = nn.ReLU(inplace=True)

    @staticmethod
    def _fusion(c_in: int, c_out: int, steps_down: int, norm_layer: type[nn.Module]) -> nn.Module:
        if steps_down == 0:
            return nn.Identity()
        if steps_down < 0:  # coarser input: 1x1 conv here, the upsampling in forward (its size is dynamic)
            return ConvNormAct(c_in, c_out, 1, norm_layer=norm_layer, act_layer=None)
        convs = [ConvNormAct(c_in, c_in, 3, 2, norm_layer=norm_layer) for _ in range(steps_down - 1)]
        convs.append(ConvNormAct(c_in, c_out, 3, 2, norm_layer=norm_layer, act_layer=None))
        return nn.Sequential(*convs)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]  # (B, C_i, H_i, W_i) each
        if not self.fuse_layers:
            return xs
        out = []
        for i, fuse in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(fuse):
                if j < i:
                    y = y + layer(xs[j])  # strided convs: (B, C_i, H_i, W_i)
                elif j > i:
                    y = y + _upsample_to(layer(xs[j]), xs[i])  # 1x1 conv, then (B, C_i, H_i, W_i)
            out.append(self.act(y))
        return out


class HRNet(nn.Module):
    """HRNetV2 backbone: returns its four branches at strides 4, 8, 16, 32 with ``width * (1, 2, 4, 8)``
    channels.

    ``depths``: blocks in stage 1 (bottlenecks), then per branch per module in stages 2-4 (basic blocks).
    ``num_modules``: high-resolution modules in stages 2, 3, 4. ``stage1_width``: the bottleneck width of
    stage 1 (its output has 4x as many channels). Small values make a tiny network for tests.
    """

    def __init__(
        self,
        width: int = 18,
        depths: tuple[int, int, int, int] = (4, 4, 4, 4),
        num_modules: tuple[int, int, int] = (1, 4, 3),
        stem_width: int = 64,
        stage1_width: int = 64,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_modules) != 3:
            raise ValueError(f"depths={depths}, num_modules={num_modules}: expected 4 block counts (stages 1-4) "
                             f"and 3 module counts (stages 2-4)")
        self.stem = nn.Sequential(
            ConvNormAct(3, stem_width, 3, 2, norm_layer=norm_layer),
            ConvNormAct(stem_width, stem_width, 3, 2, norm_layer=norm_layer),
        )
        channels = [stage1_width * Bottleneck.expansion]
        self.layer1 = nn.Sequential(*(
            Bottleneck(stem_width if k == 0 else channels[0], stage1_width, norm_layer=norm_layer)
            for k in range(depths[0])
        ))
        transitions, stages = [], []
        for s, (depth, modules) in enumerate(zip(depths[1:], num_modules), start=2):
            widths = [width * 2**b for b in range(s)]
            transitions.append(self._transition(channels, widths, norm_layer))
            stages.append(nn.Sequential(*(HighResolutionModule(widths, depth, norm_layer) for _ in range(modules))))
            channels = widths
        self.transition1, self.transition2, self.transition3 = transitions
        self.stage2, self.stage3, self.stage4 = stages
        self.out_channels: list[int] = channels
        self.strides: list[int] = [4, 8, 16, 32]

    @staticmethod
    def _transition(c_prev: list[int], c_next: list[int], norm_layer: type[nn.Module]) -> nn.ModuleList:
        """Existing branches keep their input (or a 3x3 conv when the width changes, as after stage 1); the new
        branch is a 3x3 stride-2 conv on the coarsest existing one."""
        layers = nn.ModuleList()
        for i, c in enumerate(c_next):
            if i < len(c_prev):
                layers.append(nn.Identity() if c == c_prev[i] else ConvNormAct(c_prev[i], c, 3, norm_layer=norm_layer))
            else:  # a Sequential of one conv, as the official code (keys transitionK.i.0.*)
                layers.append(nn.Sequential(ConvNormAct(c_prev[-1], c, 3, 2, norm_layer=norm_layer)))
        return layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(self.stem(x))  # (B, 4 * stage1_width, H/4, W/4)
        xs = [x]
        for transition, stage in ((self.transition1, self.stage2), (self.transition2, self.stage3),
                                  (self.transition3, self.stage4)):
            xs = [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(transition)]  # one more branch
            xs = stage(xs)  # [(B, C * 2^i, H / 2^(i+2), W / 2^(i+2))]
        return xs


def concat_branches(features: list[torch.Tensor]) -> torch.Tensor:
    """HRNetV2's representation: every branch upsampled (bilinear) to the first one's size and concatenated,
    (B, sum of out_channels, H/4, W/4). The HRNetV2 segmentation head and OCRNet read this."""
    return torch.cat([features[0], *(_upsample_to(f, features[0]) for f in features[1:])], dim=1)


def hrnetv2_w18(**kwargs) -> HRNet:
    """HRNetV2-W18: branch widths 18, 36, 72, 144; keyword arguments as ``HRNet``'s."""
    return HRNet(**{"width": 18, **kwargs})


def hrnetv2_w48(**kwargs) -> HRNet:
    """HRNetV2-W48: branch widths 48, 96, 192, 384 (the official segmentation models' backbone)."""
    return HRNet(**{"width": 48, **kwargs})


def hrnetv2_w18_small_v1(**kwargs) -> HRNet:
    """HRNetV2-W18-Small-v1 of the official model zoo: branch widths 16, 32, 64, 128 (C = 16 despite the name),
    one stage-1 bottleneck of width 32, 2 blocks per branch, 1 module per stage."""
    return HRNet(**{"width": 16, "depths": (1, 2, 2, 2), "num_modules": (1, 1, 1), "stage1_width": 32, **kwargs})


def hrnetv2_w18_small_v2(**kwargs) -> HRNet:
    """HRNetV2-W18-Small-v2 of the official model zoo (mmsegmentation's ``hr18s``): widths as W18, 2 blocks per
    branch (2 stage-1 bottlenecks), 1, 3 and 2 modules in stages 2-4."""
    return HRNet(**{"width": 18, "depths": (2, 2, 2, 2), "num_modules": (1, 3, 2), **kwargs})


# mmsegmentation's HRNet (mmseg/models/backbones/hrnet.py, 034a5c8): the stem is conv1, bn1, conv2, bn2; blocks
# (mmseg's resnet BasicBlock / Bottleneck) convK + bnK; downsample, transition and fuse layers are Sequentials of
# (conv, bn[, relu]) at the same indices as ours (a coarser branch's Upsample, index 2, holds no tensor).
MMSEG_HRNET_KEYS: tuple[tuple[str, str], ...] = (
    *((rf"backbone\.conv{i + 1}\.(\w+)", rf"backbone.stem.{i}.0.\1") for i in range(2)),
    *((rf"backbone\.bn{i + 1}\.(\w+)", rf"backbone.stem.{i}.1.\1") for i in range(2)),
    (r"backbone\.(layer1\.\d+|stage\d\.\d+\.branches\.\d+\.\d+)\.conv(\d)\.weight", r"backbone.\1.conv\2.0.weight"),
    (r"backbone\.(layer1\.\d+|stage\d\.\d+\.branches\.\d+\.\d+)\.bn(\d)\.(\w+)", r"backbone.\1.conv\2.1.\3"),
    (r"backbone\.(layer1\.0\.downsample|transition\d|stage\d\.\d+\.fuse_layers)\.([\d.]+\w+)", r"backbone.\1.\2"),
)
