"""Sliding-window inference (engines/tiling.py): mmsegmentation's grid, the averaging, an ONNX Runtime engine
tiled against PyTorch tiled the same way, and ``check --tile``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engines.base import EngineError
from engines.manifest import read_manifest
from engines.onnxruntime import OnnxRuntimeRunner
from engines.tiling import TiledRunner, Tiling, check_tiling, slide, windows
from export.__main__ import main
from helpers import cli, tiny_pipeline


def mmseg_windows(h_img: int, w_img: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple]:
    """The loops of mmseg's EncoderDecoder.slide_inference (mmseg/models/segmentors/encoder_decoder.py), as written."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            out.append((y1, y2, x1, x2))
    return out


@pytest.mark.parametrize("size", [(64, 64), (100, 150), (256, 512), (97, 211), (50, 150), (150, 40), (20, 30),
                                  (64, 65), (1, 1)])
@pytest.mark.parametrize("tile, stride", [((64, 64), (48, 48)), ((64, 96), (64, 96)), ((64, 96), (33, 17)),
                                          ((32, 64), (1, 1))])
def test_grid_is_mmsegs(size, tile, stride):
    got = windows(*size, Tiling(tile, stride))
    assert got == mmseg_windows(*size, tile, stride)
    covered = np.zeros(size, int)
    for y1, y2, x1, x2 in got:
        assert (y2 - y1, x2 - x1) == (min(tile[0], size[0]), min(tile[1], size[1]))  # smaller only where the frame is
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1


def test_grid_by_hand():
    """100 rows, 64-row tiles every 48: (100 - 64 + 47) // 48 + 1 = 2 tiles, the last moved up to end at 100."""
    assert windows(100, 64, Tiling((64, 64), (48, 48))) == [(0, 64, 0, 64), (36, 100, 0, 64)]
    assert windows(50, 30, Tiling((64, 64), (48, 48))) == [(0, 50, 0, 30)]  # smaller than a tile: the whole frame


def test_constant_logits_average_to_themselves():
    tiling = Tiling((64, 64), (40, 24))
    images = np.random.default_rng(0).normal(size=(1, 3, 100, 150)).astype(np.float32)
    seen = []

    def constant(tile):
        seen.append(tile.shape)
        return np.full((1, 5, *tile.shape[2:]), 2.5, np.float32)

    out = slide(images, constant, tiling)
    assert out.shape == (1, 5, 100, 150) and np.all(out == 2.5)
    assert set(seen) == {(1, 3, 64, 64)} and len(seen) == len(windows(100, 150, tiling))


def test_overlaps_are_the_mean_of_the_tiles_over_them():
    """Tile k says k everywhere: each pixel gets the mean of the numbers of the tiles that cover it."""
    tiling = Tiling((64, 64), (40, 24))
    tiles = windows(100, 150, tiling)
    calls = iter(range(len(tiles)))
    out = slide(np.zeros((1, 3, 100, 150), np.float32), lambda t: np.full((1, 1, 64, 64), next(calls), np.float32), tiling)
    total, count = np.zeros((100, 150)), np.zeros((100, 150))
    for k, (y1, y2, x1, x2) in enumerate(tiles):
        total[y1:y2, x1:x2] += k
        count[y1:y2, x1:x2] += 1
    np.testing.assert_allclose(out[0, 0], total / count, rtol=1e-6)
    assert len(np.unique(count)) > 2  # the case covers pixels under 1, 2 and 4 tiles


def test_small_frames_are_padded_to_the_tile_and_cropped_back():
    """A frame smaller than the tile: the engine sees a zero-padded tile (zero = the mean colour once
    normalized); the logits of the frame's own pixels come back."""
    images = np.arange(2 * 40 * 50, dtype=np.float32).reshape(1, 2, 40, 50) + 1

    def echo(tile):
        assert tile.shape == (1, 2, 64, 64)
        assert np.all(tile[:, :, 40:] == 0) and np.all(tile[:, :, :, 50:] == 0)
        return tile

    np.testing.assert_array_equal(slide(images, echo, Tiling((64, 64), (32, 32))), images)


def manifest(**input_overrides) -> dict:
    spec = {"name": "images", "size": [64, 64], "min": [64, 64], "max": [128, 256], "size_divisor": 32, "dynamic_hw": True}
    return {"model": "bisenetv2", "embed_pre_post": False, "input": {**spec, **input_overrides}}


@pytest.mark.parametrize("tile, overrides, message", [
    ((48, 64), {}, "multiples of 32"),
    ((64, 288), {}, "outside the sizes"),
    ((32, 64), {}, "outside the sizes"),
    ((96, 96), {"dynamic_hw": False}, "takes only 64x64"),
])
def test_tiles_the_engine_cannot_take_are_refused(tile, overrides, message):
    check_tiling(manifest(), Tiling((96, 256), (48, 128)), "e.onnx")  # within the profile: accepted
    with pytest.raises(EngineError, match=message):
        check_tiling(manifest(**overrides), Tiling(tile, (16, 16)), "e.onnx")


def test_an_engine_with_argmax_inside_is_refused():
    m = {**manifest(), "embed_pre_post": True}
    with pytest.raises(EngineError, match="rebuild bisenetv2 with embed_pre_post: false"):
        check_tiling(m, Tiling((64, 64), (32, 32)), "e.onnx")


# Engines ------------------------------------------------------------------------------------------------
TILE, STRIDE = "64x96", "48x40"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One fp32 ONNX Runtime engine with a dynamic profile (64x64 .. 128x128), 10 classes (the synthetic set's),
    and check images larger than a tile (100x150) with their labels."""
    from data import write_dataset

    folder = tmp_path_factory.mktemp("tiling")
    write_dataset(folder / "val", 2, size=(100, 150), seed=5)
    model = {"name": "bisenetv2", "num_classes": 10, "precisions": ["fp32"],
             "input": {"size": [64, 64], "min": [64, 64], "max": [128, 128]}}
    config = tiny_pipeline(folder, models=[model],
                           check={"images": "val/images", "num_images": 1, "warmup": 1, "iterations": 2, "threads": 1})
    assert main(["build", "--config", config]) == 0
    return folder, config, folder / "out" / "bisenetv2" / "onnxruntime" / "fp32.engine.onnx"


@pytest.mark.parametrize("size", [(100, 150), (50, 150), (40, 40)])
def test_engine_tiled_equals_pytorch_tiled(built, size):
    """The same frames through the engine and through the PyTorch model, in the same windows with the same
    padding and averaging: equal logits within fp32 round-off (frames larger and smaller than a tile)."""
    from data import render_scene
    from export.compile.weights import load_model
    from export.config import load_pipeline
    from export.images import preprocess

    _, config, path = built
    pipeline = load_pipeline(config)
    model, _ = load_model(pipeline.models[0], pipeline)
    m = read_manifest(path)
    x = preprocess(render_scene(11, size)[0], size, m["normalization"]["mean"], m["normalization"]["std"])
    tiling = Tiling.from_flags(TILE, STRIDE)
    with torch.no_grad():
        expected = slide(x, lambda t: model(torch.from_numpy(t)).numpy(), tiling)
    with TiledRunner(OnnxRuntimeRunner.from_engine(path, 1), tiling) as runner:
        got = runner.infer({"images": x})["logits"]
    assert got.shape == expected.shape == (1, 10, *size)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.999


def test_check_reports_whole_and_tiled_rows(built, tmp_path, capsys):
    _, config, _ = built
    report, md = tmp_path / "c.json", tmp_path / "c.md"
    assert main(["check", "--config", config, "--tile", TILE, "--stride", STRIDE, "--json", str(report),
                 "--report", str(md)]) == 0
    out = capsys.readouterr().out
    assert "tiled 64x96 stride 48x40 at 100x150" in out
    rows = json.loads(report.read_text())["rows"]
    assert [(r["precision"], r["mode"]) for r in rows] == [("fp32", "whole"), ("fp32", "tiled")]
    whole, tiled = rows
    assert whole["size"] == [64, 64] and tiled["size"] == [100, 150]
    assert tiled["tiling"] == {"tile": [64, 96], "stride": [48, 40]} and tiled["tiles_per_frame"] == 2 * 3
    assert tiled["pixel_agreement"] > 0.999 and tiled["max_abs_error"] < 1e-3
    assert tiled["engine"]["p50_ms"] > 0 and tiled["pytorch"]["p50_ms"] > 0
    assert {k for k in whole if k != "mode"} <= set(tiled)  # the same fields: the table renders both alike
    assert "Tiled rows" in md.read_text()


def test_check_data_reports_whole_vs_tiled_miou_and_speed(built, tmp_path, capsys):
    folder, config, _ = built
    report, md = tmp_path / "d.json", tmp_path / "d.md"
    assert main(["check", "--config", config, "--data", str(folder / "val"), "--tile", TILE, "--stride", STRIDE,
                 "--json", str(report), "--report", str(md)]) == 0
    out = capsys.readouterr().out
    assert "tiled mIoU" in out
    result = json.loads(report.read_text())
    assert [r["source"] for r in result["rows"]] == ["pytorch", "fp32 onnxruntime"]  # whole rows as before
    assert result["settings"]["tiling"]["tile"] == [64, 96]
    tiled = result["tiled"]
    assert [r["source"] for r in tiled] == ["pytorch", "fp32 onnxruntime"]
    for r, whole in zip(tiled, result["rows"]):
        assert r["mode"] == "tiled" and 0 <= r["accuracy"]["miou"] <= 1
        assert r["accuracy"]["labelled_pixels"] == 2 * 100 * 150  # scored at the images' own size
        assert r["whole"]["miou"] == whole["accuracy"]["miou"] and r["speed"]["batch_1"]["p50_ms"] > 0
    assert tiled[1]["agreement"]["pixel_agreement"] > 0.999 and abs(tiled[1]["delta_miou_points"]) < 0.5
    assert "## Whole vs tiled" in md.read_text()


@pytest.mark.parametrize("args, code, message", [
    (["--tile", "64"], 2, "--tile: expected HEIGHTxWIDTH"),
    (["--tile", "64x64", "--stride", "80x32"], 2, "--stride 80x32 is larger than --tile 64x64"),
    (["--stride", "32x32"], 2, "--stride only applies with --tile"),
    (["--tile", "48x64"], 1, "takes sizes that are multiples of 32"),
    (["--tile", "256x64"], 1, "outside the sizes"),
])
def test_bad_tile_is_one_clear_line(built, capsys, args, code, message):
    _, config, _ = built
    if code == 2:
        with pytest.raises(SystemExit) as exc:
            main(["check", "--config", config, *args])
        assert exc.value.code == 2
    else:
        assert main(["check", "--config", config, *args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert "error: " in lines[-1] and message in lines[-1], lines
    assert len([line for line in lines if "error" in line]) == 1


def test_bad_tile_from_the_shell_has_no_traceback(built):
    _, config, _ = built
    result = cli("check", "--config", config, "--tile", "256x64")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --tile 256x64 is outside the sizes")
