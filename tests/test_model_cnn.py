"""Family checks of the CNN architectures (sliding window, FCN, the upsampling methods and SegNet, U-Net,
DeepLab v1, PSPNet); forward, export, TensorRT op tables and parity in every precision are in the conformance
test. Published parameter counts are checked at full size on the meta device (shapes only), each with its
source beside it; where none is published, none is asserted."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.onnxruntime import OnnxRuntimeRunner
from export.compile.compat import check_tensorrt_compat
from export.compile.onnx_export import export_onnx
from export.compile.rewrites import apply_rewrites
from export.measure.metrics import compare
from helpers import make_deterministic
from models import count_parameters, create_model, get_spec
from models.unet import _simulate, overlap_tile
from models.upsampling import UPSAMPLING, BedOfNails, MaxUnpool, NearestUpsample, TransposedConvUpsample


def full_size_parameters(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return count_parameters(create_model(name, **kwargs))


# --- sliding window ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("window", [3, 5, 7, 9])
def test_sliding_window_and_its_fully_convolutional_form_give_the_same_labels(window):
    naive = make_deterministic(create_model("sliding_window", num_classes=5, window=window, width=8))
    shared = create_model("sliding_window_fcn", num_classes=5, window=window, width=8).eval()
    shared.load_state_dict(naive.state_dict())
    images = torch.randn(2, 3, 20, 28)
    with torch.no_grad():
        a, b = naive(images), shared(images)
    assert a.shape == b.shape == (2, 5, 20, 28)
    assert torch.equal(a.argmax(1), b.argmax(1))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_sliding_window_labels_each_pixel_from_its_own_window():
    """The naive model's label of pixel (i, j) is the patch classifier's on the window centred there."""
    model = make_deterministic(create_model("sliding_window", num_classes=4, window=5, width=8))
    images = torch.randn(1, 3, 9, 11)
    padded = F.pad(images, (2,) * 4)
    with torch.no_grad():
        dense = model(images)
        for i, j in [(0, 0), (4, 7), (8, 10)]:
            alone = model.head(padded[..., i:i + 5, j:j + 5])  # (1, 4, 1, 1)
            torch.testing.assert_close(dense[..., i, j], alone[..., 0, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [1, 4])
def test_sliding_window_needs_an_odd_window_of_three_or_more(window):
    with pytest.raises(ValueError, match=f"window={window}: expected an odd size"):
        create_model("sliding_window", window=window)


# --- upsampling methods -----------------------------------------------------------------------------------

def test_bed_of_nails_puts_each_value_at_the_top_left_of_its_cell():
    x = torch.randn(2, 3, 4, 5)
    for scale in (2, 3):
        y = BedOfNails(3, scale)(x)
        assert y.shape == (2, 3, 4 * scale, 5 * scale)
        assert torch.equal(y[..., ::scale, ::scale], x)
        y[..., ::scale, ::scale] = 0
        assert not y.any()


def test_nearest_repeats_each_value_over_its_cell():
    x = torch.randn(1, 2, 3, 4)
    expected = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    assert torch.equal(NearestUpsample(2, 2)(x), expected)


def test_max_unpool_equals_pytorchs_pair():
    source = torch.randint(0, 3, (2, 3, 8, 10)).float()  # few levels: ties are common
    pooled, indices = F.max_pool2d(source, 2, 2, return_indices=True)
    values = torch.randn_like(pooled)
    assert torch.equal(MaxUnpool(3)(values, source), F.max_unpool2d(values, indices, 2, 2, output_size=(8, 10)))
    with pytest.raises(ValueError, match="source"):
        MaxUnpool(3)(values)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_transposed_conv_starts_as_bilinear_interpolation(scale):
    """Away from the border (where the transposed conv sees zeros and interpolation clamps), FCN's bilinear
    initialisation is exactly ``F.interpolate(mode="bilinear", align_corners=False)``."""
    x = torch.randn(1, 3, 6, 7)
    with torch.no_grad():
        y = TransposedConvUpsample(3, scale)(x)
    expected = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    assert y.shape == expected.shape
    inner = slice(scale, -scale)
    torch.testing.assert_close(y[..., inner, inner], expected[..., inner, inner], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="even scale"):
        TransposedConvUpsample(3, 3)


@pytest.mark.parametrize("upsampling", sorted(UPSAMPLING))
def test_segnet_deploys_with_every_upsampling_method(upsampling, tmp_path):
    """Each method in a SegNet decoder: one dynamic graph, TensorRT's op tables pass, ONNX Runtime = PyTorch."""
    spec = get_spec("segnet")
    model = make_deterministic(create_model("segnet", num_classes=4, upsampling=upsampling, **spec.test_kwargs))
    graph = export_onnx(model, tmp_path / "segnet.onnx", (64, 64), spec.size_divisor, True)
    for version in ("10.3", "11.1"):
        assert check_tensorrt_compat(apply_rewrites(graph, "tensorrt")[0], version) == []
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(images).numpy()
    with OnnxRuntimeRunner(apply_rewrites(graph, "onnxruntime")[0].SerializeToString()) as runner:
        got = runner.infer({"images": images.numpy()})["logits"]
    assert compare([got], [expected])["rel_l2_error"] < 1e-5


def test_unknown_upsampling_lists_the_known_ones():
    with pytest.raises(ValueError, match="expected one of bed_of_nails, nearest, max_unpool, transposed_conv"):
        create_model("segnet", upsampling="bicubic")


# --- FCN ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_parameters_match_the_paper(name):
    """FCN (CVPR 2015) Table 1: FCN-VGG16, 134M parameters (21 classes, PASCAL VOC), a rounded figure."""
    assert round(full_size_parameters(name, num_classes=21) / 1e6) == 134


@pytest.mark.parametrize("name, skips", [("fcn32s", 0), ("fcn16s", 1), ("fcn8s", 2)])
def test_fcn_fuses_pool4_and_pool3_scores(name, skips):
    """The skip scores start at zero (the paper, Sec. 4.2: training starts from the coarser net's output) and
    are in the forward: once trained (here: set at random), each changes the output and gets a gradient."""
    model = create_model(name, num_classes=3, **get_spec(name).test_kwargs).eval()
    head = model.head
    assert len(head.score_pools) == skips
    assert all(not p.any() for p in head.score_pools.parameters())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
        for p in head.score_pools.parameters():
            p.normal_()
    after = model(images)
    assert torch.equal(before, after) == (skips == 0)
    after.square().sum().backward()
    assert all(p.grad is not None and p.grad.any() for p in head.score_pools.parameters())


# --- U-Net --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["unet", "unet_padded"])
def test_unet_parameters_from_the_papers_layer_list(name):
    """31,030,658: the paper's (MICCAI 2015, Fig. 1) layer list with 1 input channel and 2 classes, convs
    with biases; the paper states no count itself. Padding adds no parameters."""
    assert full_size_parameters(name, num_classes=2, in_channels=1) == 31_030_658


def test_unet_tile_arithmetic_is_the_papers():
    assert _simulate(572, 4) == 388  # the paper's tile, Fig. 1: 572 x 572 in, 388 x 388 out
    assert _simulate(570, 4) is None  # a pooled map would be odd
    assert overlap_tile(4) == (94, 2)  # 94 px of mirror padding a side, 2 px cropped from each side after


def test_original_unet_mirrors_the_border_and_crops_to_the_input():
    model = make_deterministic(create_model("unet", num_classes=3, base_width=8))  # four levels, full depth
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (1, 3, 96, 128)
    # The network itself is valid-conv: 94 px of mirror a side in, the input plus 2 px a side out.
    with torch.no_grad():
        raw = model.head(model.backbone(F.pad(images, (94,) * 4, mode="reflect")))
    assert raw.shape == (1, 3, 100, 132)
    torch.testing.assert_close(raw[..., 2:-2, 2:-2], logits)


# --- DeepLab v1 ---------------------------------------------------------------------------------------------

def test_deeplabv1_largefov_matches_the_paper():
    """DeepLab v1 (ICLR 2015) Table 2: DeepLab-CRF-LargeFOV, 3x3 fc6 at input stride 12, 1024 channels, 20.5M
    parameters (21 classes)."""
    assert round(full_size_parameters("deeplabv1_largefov", num_classes=21) / 1e6, 1) == 20.5
    model = create_model("deeplabv1_largefov", num_classes=21)
    fc6 = model.backbone.fc[0][0]
    assert (fc6.kernel_size, fc6.dilation, fc6.out_channels) == ((3, 3), (12, 12), 1024)
    assert model.backbone.strides[-1] == 8


# --- PSPNet -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pspnet_graph(tmp_path_factory):
    spec = get_spec("pspnet_r50")
    model = make_deterministic(create_model("pspnet_r50", num_classes=4, **spec.test_kwargs))
    graph = export_onnx(model, tmp_path_factory.mktemp("pspnet") / "pspnet.onnx", (64, 64), spec.size_divisor, True)
    return model, graph


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_one_pspnet_engine_serves_sizes_the_bins_do_not_divide(pspnet_graph, target):
    """Exported once at 64x64; run at 96x96 (features 12x12: bins 1, 2, 3, 6 all divide) and at 72x88 (9x11:
    2 and 6 divide neither side, 3 only one), equal to PyTorch at each. The TensorRT-lowered graph is run by
    ONNX Runtime here (the same graph a TensorRT build parses)."""
    model, graph = pspnet_graph
    lowered = apply_rewrites(graph, target)[0]
    with OnnxRuntimeRunner(lowered.SerializeToString()) as runner:
        for size in [(96, 96), (72, 88)]:
            images = torch.randn(1, 3, *size)
            with torch.no_grad():
                expected = model(images).numpy()
            got = runner.infer({"images": images.numpy()})["logits"]
            assert got.shape == expected.shape == (1, 4, *size)
            result = compare([got], [expected])
            assert result["rel_l2_error"] < 1e-5, (size, result)
            assert np.isfinite(got).all()
