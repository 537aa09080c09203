"""data: each dataset layout read from tiny fixtures written here, every dataset error as one line that
names the file, and the synthetic street scenes (deterministic, labelled, every class, not solvable by
colour alone)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import (ADE20K_CLASSES, CITYSCAPES_CLASSES, SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, VOC_CLASSES,
                         DataError, detect_layout, open_dataset, render_scene, voc_colormap, write_dataset)

H, W = 16, 24


# Fixture writers ----------------------------------------------------------------------------------------
def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_ids(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), ids.astype(np.uint8))
    return path


def write_palette_png(path: Path, indices: np.ndarray, palette: np.ndarray) -> Path:
    """A real palette ('P' mode) PNG, as VOC ships its masks; cv2 cannot write one, so this writes the chunks."""
    h, w = indices.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + row.astype(np.uint8).tobytes() for row in indices)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
                     + chunk(b"PLTE", palette.astype(np.uint8).tobytes()) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def ids_with(values: list[int]) -> np.ndarray:
    """An (H, W) label image that holds every value in ``values``, each in its own run of pixels."""
    flat = np.resize(np.asarray(values, np.uint8), H * W)
    return flat.reshape(H, W)


def cityscapes(root: Path, label_ids: np.ndarray, count: int = 2, split: str = "val") -> Path:
    for i in range(count):
        stem = f"aachen_000000_{i:06d}"
        write_rgb(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", image(i))
        write_ids(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", label_ids)
        write_rgb(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_color.png", image(9))  # not a mask we read
    return root


def ade20k(root: Path, annotation: np.ndarray, count: int = 2) -> Path:
    base = root / "ADEChallengeData2016"
    for i in range(count):
        write_rgb(base / "images" / "validation" / f"ADE_val_{i:08d}.jpg", image(i))
        write_ids(base / "annotations" / "validation" / f"ADE_val_{i:08d}.png", annotation)
    write_rgb(base / "images" / "training" / "ADE_train_00000000.jpg", image(5))
    write_ids(base / "annotations" / "training" / "ADE_train_00000000.png", annotation)
    return root


def voc(root: Path, indices: np.ndarray, count: int = 2, val: list[str] | None = None) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    for i in range(count):
        write_rgb(base / "JPEGImages" / f"2007_{i:06d}.jpg", image(i))
        write_palette_png(base / "SegmentationClass" / f"2007_{i:06d}.png", indices, voc_colormap())
    write_rgb(base / "JPEGImages" / "2008_000099.jpg", image(7))  # detection-only: no mask, not in the set
    if val is not None:
        (base / "ImageSets" / "Segmentation").mkdir(parents=True)
        (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(val) + "\n")
    return root


def plain(root: Path, masks: list[np.ndarray], classes: list[str] | None = None) -> Path:
    for i, mask in enumerate(masks):
        write_rgb(root / "images" / f"frame_{i}.png", image(i))
        write_ids(root / "masks" / f"frame_{i}.png", mask)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


# Layouts ------------------------------------------------------------------------------------------------
# The official table (cityscapesscripts/helpers/labels.py): labelId -> trainId, 255 for the rest.
OFFICIAL = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path):
    stored = ids_with(list(range(34)) + [255])
    root = cityscapes(tmp_path / "cityscapes", stored)
    assert detect_layout(root) == "cityscapes"
    ds = open_dataset(root)  # split None: val
    assert (ds.layout, ds.name, len(ds), ds.num_classes) == ("cityscapes", "cityscapes", 2, 19)
    assert ds.classes == list(CITYSCAPES_CLASSES) and ds.classes[13] == "car"
    rgb, label = ds[1]
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3) and label.dtype == np.uint8 and label.shape == (H, W)
    np.testing.assert_array_equal(rgb, image(1))  # PNG: lossless, and RGB order kept
    expected = np.vectorize(lambda v: OFFICIAL.get(int(v), 255))(stored)
    np.testing.assert_array_equal(label, expected)
    image_path, mask_path = ds.paths(0)
    assert image_path.name == "aachen_000000_000000_leftImg8bit.png"
    assert mask_path.name == "aachen_000000_000000_gtFine_labelIds.png"


def test_cityscapes_split_and_limit(tmp_path):
    root = cityscapes(tmp_path / "cs", ids_with([7]), count=3, split="train")
    assert len(open_dataset(root, split="train")) == 3
    assert len(open_dataset(root, split="train", limit=2)) == 2
    with pytest.raises(DataError, match="splits here: train"):
        open_dataset(root)  # no val split


def test_ade20k_shifts_classes_down_and_other_to_ignore(tmp_path):
    root = ade20k(tmp_path / "ade", ids_with([0, 1, 2, 150]))
    assert detect_layout(root) == "ade20k"
    for where in (root, root / "ADEChallengeData2016"):  # the unpacked folder or its parent
        ds = open_dataset(where)
        assert (ds.layout, len(ds), ds.num_classes) == ("ade20k", 2, 150)
        _, label = ds[0]
        np.testing.assert_array_equal(label, ids_with([255, 0, 1, 149]))
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == 150
    assert (ADE20K_CLASSES[0], ADE20K_CLASSES[12], ADE20K_CLASSES[149]) == ("wall", "person", "flag")
    assert len(open_dataset(root, split="train")) == 1


def test_voc_decodes_palette_pngs_and_the_border(tmp_path):
    cmap = voc_colormap()
    assert cmap[0].tolist() == [0, 0, 0] and cmap[1].tolist() == [128, 0, 0] and cmap[255].tolist() == [224, 224, 192]
    indices = ids_with([0, 1, 15, 20, 255])
    root = voc(tmp_path / "voc", indices, count=3)
    assert detect_layout(root) == "voc"
    ds = open_dataset(root)  # no split file: every image with a mask
    assert (ds.layout, ds.name, len(ds), ds.classes) == ("voc", "VOC2012", 3, list(VOC_CLASSES))
    rgb, label = ds[2]
    np.testing.assert_array_equal(label, indices)
    assert rgb.shape == (H, W, 3)


def test_voc_split_file_and_index_masks(tmp_path):
    root = voc(tmp_path / "voc", ids_with([0, 7]), count=3, val=["2007_000001"])
    ds = open_dataset(root)  # split None: val.txt
    assert len(ds) == 1 and ds.paths(0)[0].name == "2007_000001.jpg"
    # Single-channel class-id masks (as SBD's augmented set ships them) read as the indices themselves.
    mask = ds.paths(0)[1]
    write_ids(mask, ids_with([255, 3]))
    np.testing.assert_array_equal(ds[0][1], ids_with([255, 3]))
    with pytest.raises(DataError, match="train.txt does not exist; splits here: val"):
        open_dataset(root, split="train")


def test_plain_layout_with_and_without_class_names(tmp_path):
    masks = [ids_with([0, 1, 255]), ids_with([2, 0])]
    root = plain(tmp_path / "named", masks, ["road", "car", "sky"])
    assert detect_layout(root) == "plain"
    ds = open_dataset(root)
    assert (ds.layout, ds.name, len(ds), ds.classes) == ("plain", "named", 2, ["road", "car", "sky"])
    for i, mask in enumerate(masks):
        rgb, label = ds[i]
        np.testing.assert_array_equal(rgb, image(i))
        np.testing.assert_array_equal(label, mask)
    unnamed = open_dataset(plain(tmp_path / "unnamed", masks))
    assert unnamed.classes == ["class_0", "class_1", "class_2"]  # up to the largest id in the masks


def test_auto_detection_needs_a_known_layout(tmp_path):
    (tmp_path / "stuff" / "photos").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        detect_layout(tmp_path / "stuff")
    assert_one_line(exc, "stuff")
    root = plain(tmp_path / "p", [ids_with([0])], ["a"])
    with pytest.raises(DataError, match="unknown dataset layout 'coco'; known: auto cityscapes ade20k voc plain"):
        open_dataset(root, layout="coco")


# Errors: one line, naming the file ----------------------------------------------------------------------
def assert_one_line(exc, *names: str) -> None:
    message = str(exc.value)
    assert "\n" not in message, message
    for name in names:
        assert name in message, message


def test_missing_folders(tmp_path):
    with pytest.raises(DataError) as exc:
        open_dataset(tmp_path / "nowhere")
    assert_one_line(exc, "nowhere", "does not exist")
    (tmp_path / "half" / "images").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        open_dataset(tmp_path / "half")
    assert_one_line(exc, str(tmp_path / "half" / "masks"), "does not exist")


def test_no_images(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(DataError) as exc:
        open_dataset(tmp_path / "empty")
    assert_one_line(exc, "no images", str(tmp_path / "empty" / "images"))


def test_images_without_masks_and_masks_without_images(tmp_path):
    root = plain(tmp_path / "p", [ids_with([0])] * 5, ["a"])
    for i in range(1, 5):
        (root / "masks" / f"frame_{i}.png").unlink()
    with pytest.raises(DataError) as exc:
        open_dataset(root)
    assert_one_line(exc, "4 files (frame_1.png, frame_2.png, frame_3.png, ...)", "no mask")

    root = plain(tmp_path / "q", [ids_with([0])] * 2, ["a"])
    (root / "images" / "frame_1.png").unlink()
    with pytest.raises(DataError) as exc:
        open_dataset(root)
    assert_one_line(exc, "frame_1.png", "has no image")

    root = cityscapes(tmp_path / "cs", ids_with([7]))
    (root / "gtFine" / "val" / "aachen" / "aachen_000000_000001_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError) as exc:
        open_dataset(root)
    assert_one_line(exc, "aachen_000000_000001_leftImg8bit.png", "has no mask")


def test_unreadable_image_and_mask(tmp_path):
    root = plain(tmp_path / "p", [ids_with([0])] * 2, ["a"])
    (root / "images" / "frame_0.png").write_bytes(b"not a png")
    (root / "masks" / "frame_1.png").write_bytes(b"")
    ds = open_dataset(root)
    with pytest.raises(DataError) as exc:
        ds[0]
    assert_one_line(exc, "frame_0.png", "cannot decode image")
    with pytest.raises(DataError) as exc:
        ds[1]
    assert_one_line(exc, "frame_1.png", "cannot decode mask")


def test_image_and_mask_of_different_sizes(tmp_path):
    root = plain(tmp_path / "p", [ids_with([0])], ["a"])
    write_ids(root / "masks" / "frame_0.png", np.zeros((H, W + 2), np.uint8))
    with pytest.raises(DataError) as exc:
        open_dataset(root)[0]
    assert_one_line(exc, "frame_0.png", f"is {W + 2}x{H} but image", f"is {W}x{H}")


@pytest.mark.parametrize("layout", ["cityscapes", "ade20k", "voc", "plain"])
def test_label_values_out_of_range(tmp_path, layout):
    if layout == "cityscapes":
        ds, bad = open_dataset(cityscapes(tmp_path / "d", ids_with([7, 40]))), "40"
    elif layout == "ade20k":
        ds, bad = open_dataset(ade20k(tmp_path / "d", ids_with([1, 151]))), "151"
    elif layout == "voc":  # index 21 is a palette colour, but VOC has classes 0..20 only
        ds, bad = open_dataset(voc(tmp_path / "d", ids_with([0, 21]))), "21"
    else:
        ds, bad = open_dataset(plain(tmp_path / "d", [ids_with([0, 3])], ["a", "b", "c"])), "3"
    with pytest.raises(DataError) as exc:
        ds[0]
    assert_one_line(exc, ds.paths(0)[1].name, f"label value {bad}")


def test_voc_colour_outside_the_palette(tmp_path):
    root = voc(tmp_path / "d", ids_with([0]), count=1)
    mask = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000000.png"
    write_rgb(mask, np.full((H, W, 3), (1, 2, 3), np.uint8))  # an RGB PNG in a colour VOC never uses
    with pytest.raises(DataError) as exc:
        open_dataset(root)[0]
    assert_one_line(exc, "2007_000000.png", "colour (1, 2, 3)", "not in the VOC palette")


def test_colour_masks_and_jpeg_masks_are_refused(tmp_path):
    root = plain(tmp_path / "p", [ids_with([0])], ["a"])
    write_rgb(root / "masks" / "frame_0.png", image(3))
    with pytest.raises(DataError) as exc:
        open_dataset(root)[0]
    assert_one_line(exc, "frame_0.png", "colour image")
    write_rgb(root / "masks" / "frame_0.jpg", image(3))
    with pytest.raises(DataError) as exc:
        open_dataset(root)
    assert_one_line(exc, "frame_0.jpg", "save masks as PNG")


# Synthetic scenes ---------------------------------------------------------------------------------------
def test_palette_and_classes():
    assert SYNTHETIC_CLASSES == ("road", "sidewalk", "building", "vegetation", "sky", "vehicle", "person", "pole",
                                 "traffic sign", "terrain")
    assert len(SYNTHETIC_PALETTE) == 10 and len(set(SYNTHETIC_PALETTE)) == 10
    assert SYNTHETIC_PALETTE[0] == (128, 64, 128) and SYNTHETIC_PALETTE[4] == (70, 130, 180)


def test_render_scene_is_deterministic_and_seeds_differ():
    a_img, a_lab = render_scene(7)
    b_img, b_lab = render_scene(7)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, c_lab = render_scene(8)
    assert (a_img != c_img).mean() > 0.5 and (a_lab != c_lab).mean() > 0.1


@pytest.mark.parametrize("size", [(256, 512), (64, 96), (96, 64)])
def test_render_scene_shapes_and_label_range(size):
    rgb, label = render_scene(3, size)
    assert rgb.shape == size + (3,) and rgb.dtype == np.uint8
    assert label.shape == size and label.dtype == np.uint8
    assert label.max() < len(SYNTHETIC_CLASSES)  # and so no 255 either: every pixel has a drawn class


def test_every_class_appears_in_most_scenes():
    present = np.zeros(len(SYNTHETIC_CLASSES), int)
    for seed in range(8):
        present += np.bincount(render_scene(seed, (128, 256))[1].ravel(), minlength=len(SYNTHETIC_CLASSES)) > 0
    assert present.min() >= 6, dict(zip(SYNTHETIC_CLASSES, present))


def test_colour_alone_does_not_give_the_labels():
    """A lookup table from quantized colour to the most frequent class, fitted on some scenes and scored on
    others, stays far from the labels: shape, texture and context are needed."""
    scenes = [render_scene(100 + i, (128, 256)) for i in range(12)]

    def keys(rgb):
        q = rgb.reshape(-1, 3).astype(np.int64) // 16
        return q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]

    table = np.zeros((4096, len(SYNTHETIC_CLASSES)), np.int64)
    for rgb, label in scenes[:6]:
        np.add.at(table, (keys(rgb), label.ravel()), 1)
    hits = [(table.argmax(1)[keys(rgb)] == label.ravel()).mean() for rgb, label in scenes[6:]]
    assert np.mean(hits) < 0.6, hits


def test_write_dataset_reads_back_as_a_plain_dataset(tmp_path):
    root = write_dataset(tmp_path / "synthetic", 3, size=(64, 128), seed=5)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert (root / "classes.txt").read_text().splitlines() == list(SYNTHETIC_CLASSES)
    ds = open_dataset(root)
    assert (ds.layout, len(ds), ds.classes) == ("plain", 3, list(SYNTHETIC_CLASSES))
    for i in range(3):
        rgb, label = ds[i]
        want_rgb, want_label = render_scene(5 + i, (64, 128))
        np.testing.assert_array_equal(rgb, want_rgb)
        np.testing.assert_array_equal(label, want_label)
    assert len(open_dataset(write_dataset(root, 2, size=(64, 128)))) == 2  # a smaller run replaces a larger one
