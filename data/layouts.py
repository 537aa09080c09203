"""Labelled datasets on disk, in the layouts people have: Cityscapes, ADE20K, Pascal VOC, and a plain one.

Every layout reads as the same thing: ``dataset[i]`` is an RGB uint8 image (H, W, 3) and a uint8 label
(H, W) of train ids, 255 = ignore. What each layout stores and how it becomes train ids:

    cityscapes  leftImg8bit/<split>/<city>/*_leftImg8bit.png, gtFine/<split>/<city>/*_gtFine_labelIds.png;
                the 34 labelIds map to the 19 train ids of the benchmark, the rest to 255.
    ade20k      [ADEChallengeData2016/]images/<training|validation>/*.jpg, annotations/<same>/*.png;
                0 ("other") becomes 255, 1..150 become 0..149.
    voc         [VOCdevkit/VOC2012/]JPEGImages/*.jpg, SegmentationClass/*.png (palette PNGs),
                ImageSets/Segmentation/<split>.txt; 21 classes, the border colour is 255.
    plain       images/*, masks/* (uint8 class-id PNGs, matched by file stem), classes.txt (one name a line);
                with a split, images/<split>/ and masks/<split>/.

``split=None`` means the validation split of the layout that has one (cityscapes ``val``, ade20k
``validation``, voc ``val`` when ImageSets/Segmentation/val.txt exists, else every labelled image); the
plain layout has no splits unless its folders do. Everything that is wrong with a dataset is a
``DataError`` with a one-line message that names the file and says what to do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

IGNORE = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless only: JPEG would blend class ids at every edge
LAYOUTS = ("cityscapes", "ade20k", "voc", "plain")

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# labelId -> trainId, from cityscapesscripts/helpers/labels.py; every other labelId is ignored.
CITYSCAPES_TRAIN_IDS: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

# The SceneParsing benchmark's 150 classes (objectInfo150), first name of each, in annotation order 1..150.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC palette, (n, 3) uint8 RGB: index i's bits interleaved into the top bits of R, G, B
    (so 0 is black, 1 dark red, 255 the (224, 224, 192) of object borders)."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, rgb = i, [0, 0, 0]
        for bit in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << bit
            c >>= 3
        cmap[i] = rgb
    return cmap


class DataError(ValueError):
    """A dataset that cannot be read as asked: the message is one line naming the file and what to do."""


# Labels -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Labels:
    """How a layout's stored label values become train ids."""

    lut: np.ndarray  # (256,) uint8: stored value -> train id, 255 = ignore
    valid: np.ndarray  # (256,) bool: the stored values a mask may hold
    expected: str  # the valid values in words, for messages
    fix: str  # what to do about a mask outside them
    palette: np.ndarray | None = None  # VOC: masks may be colour PNGs whose colours are these (256, 3) RGB

    def decode(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.ndim == 3:
            raw = raw[..., :3]  # an alpha channel carries no class
            if self.palette is not None:
                raw = _palette_indices(raw, self.palette, path)
            elif (raw == raw[..., :1]).all():  # grey class ids saved as RGB
                raw = raw[..., 0]
            else:
                raise DataError(f"mask {path} is a colour image; expected one channel of {self.expected}; "
                                "save masks as one-channel PNGs of class ids")
        if raw.dtype != np.uint8:
            top = int(raw.max()) if raw.size else 0
            if top > 255:
                raise DataError(f"mask {path} has label value {top}, outside {self.expected}; "
                                "save masks as 8-bit class ids")
            raw = raw.astype(np.uint8)
        ok = self.valid[raw]
        if not ok.all():
            y, x = np.argwhere(~ok)[0]
            raise DataError(f"mask {path} has label value {int(raw[y, x])} at (x={x}, y={y}), outside "
                            f"{self.expected}; {self.fix}")
        return self.lut[raw]


def _palette_indices(bgr: np.ndarray, palette: np.ndarray, path: Path) -> np.ndarray:
    """A palette PNG as cv2 decodes it (colours, BGR) back to its palette indices."""
    keys = (bgr[..., 2].astype(np.int32) << 16) | (bgr[..., 1].astype(np.int32) << 8) | bgr[..., 0]
    pal = (palette[:, 0].astype(np.int32) << 16) | (palette[:, 1].astype(np.int32) << 8) | palette[:, 2]
    order = np.argsort(pal)
    where = np.minimum(np.searchsorted(pal[order], keys), len(pal) - 1)
    found = pal[order][where] == keys
    if not found.all():
        y, x = np.argwhere(~found)[0]
        b, g, r = (int(v) for v in bgr[y, x])
        raise DataError(f"mask {path} has colour ({r}, {g}, {b}) at (x={x}, y={y}), which is not in the VOC "
                        "palette; masks must be the palette PNGs of SegmentationClass (or class-id PNGs)")
    return order[where].astype(np.uint8)


def _labels(mapping: dict[int, int], expected: str, fix: str, palette: np.ndarray | None = None,
            ignore_stored: bool = True) -> _Labels:
    lut = np.full(256, IGNORE, np.uint8)
    valid = np.zeros(256, bool)
    for stored, train in mapping.items():
        lut[stored], valid[stored] = train, True
    valid[IGNORE] = ignore_stored
    return _Labels(lut, valid, expected, fix, palette)


def _plain_labels(num_classes: int | None) -> _Labels:
    if num_classes is None:  # no classes.txt: every value but 255 is a class
        return _labels({v: v for v in range(255)}, "class ids 0..254 or 255 (ignore)", "save masks as class ids")
    return _labels({v: v for v in range(num_classes)},
                   f"class ids 0..{num_classes - 1} (classes.txt names {num_classes}) or 255 (ignore)",
                   "fix the mask, or name the class in classes.txt")


# The dataset --------------------------------------------------------------------------------------------
class SegmentationDataset:
    """Image and label pairs of one layout: ``dataset[i]`` -> (RGB uint8 (H, W, 3), uint8 (H, W) train ids
    with 255 = ignore). Files are read on access, so opening a large dataset is cheap."""

    def __init__(self, name: str, layout: str, classes: list[str] | Callable[[], list[str]],
                 samples: list[tuple[Path, Path]], labels: _Labels) -> None:
        self.name, self.layout = name, layout
        self._classes, self._samples, self._labels = classes, samples, labels

    @property
    def classes(self) -> list[str]:
        """Class names in train-id order. A plain dataset without classes.txt names them ``class_<id>``
        up to the largest id in its masks, which reads every mask once."""
        if callable(self._classes):
            self._classes = self._classes()
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self._samples[i]
        image = cv2.cvtColor(_read(image_path, "image", cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION),
                             cv2.COLOR_BGR2RGB)
        label = self._labels.decode(_read(mask_path, "mask", cv2.IMREAD_UNCHANGED), mask_path)
        if image.shape[:2] != label.shape:
            raise DataError(f"mask {mask_path} is {label.shape[1]}x{label.shape[0]} but image {image_path} is "
                            f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size")
        return image, label

    def paths(self, i: int) -> tuple[Path, Path]:
        """The (image, mask) files of item ``i``."""
        return self._samples[i]

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.name!r}, layout={self.layout!r}, {len(self)} images)"


def _read(path: Path, what: str, flags: int) -> np.ndarray:
    # Through imdecode, so non-ASCII paths work everywhere. IMREAD_IGNORE_ORIENTATION: datasets label the
    # stored pixels (as PIL reads them), not the EXIF-rotated view.
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {what} {path} ({exc.strerror}); check that it exists and is readable") from None
    array = cv2.imdecode(data, flags) if data.size else None
    if array is None:
        raise DataError(f"cannot decode {what} {path}; it is empty or not an image: replace or remove it")
    return array


# Layouts ------------------------------------------------------------------------------------------------
def detect_layout(root: str | Path) -> str:
    """Which of ``LAYOUTS`` the folder ``root`` holds, from the folders it contains."""
    root = _existing(root)
    if (root / "leftImg8bit").is_dir() or (root / "gtFine").is_dir():
        return "cityscapes"
    if _ade_root(root) is not None:
        return "ade20k"
    if _voc_root(root) is not None:
        return "voc"
    if (root / "images").is_dir() or (root / "masks").is_dir():
        return "plain"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    has = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "") if entries else "nothing"
    raise DataError(f"cannot tell the dataset layout of {root} (it has {has}); expected leftImg8bit/ and gtFine/ "
                    "(cityscapes), images/ and annotations/ (ade20k), JPEGImages/ and SegmentationClass/ (voc), "
                    "or images/ and masks/ (plain)")


def open_dataset(root: str | Path, layout: str = "auto", split: str | None = None,
                 limit: int | None = None) -> SegmentationDataset:
    """The labelled dataset in ``root``: ``layout`` one of ``LAYOUTS`` or "auto"; ``split`` as in the module
    docstring; ``limit`` keeps the first images in sorted order."""
    root = _existing(root)
    if layout == "auto":
        layout = detect_layout(root)
    openers = {"cityscapes": _open_cityscapes, "ade20k": _open_ade20k, "voc": _open_voc, "plain": _open_plain}
    if layout not in openers:
        raise DataError(f"unknown dataset layout {layout!r}; known: auto {' '.join(LAYOUTS)}")
    dataset = openers[layout](root, split)
    if limit is not None:
        dataset._samples = dataset._samples[:max(0, int(limit))]
    return dataset


def _existing(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist" + (" (it is a file)" if root.exists() else "")
                        + "; check the path")
    return root


def _folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder {path} does not exist; check the dataset root or the split")
    return path


def _split_folder(parent: Path, split: str, what: str) -> Path:
    if not (parent / split).is_dir():
        present = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        hint = f"splits here: {', '.join(present)}; pass one as split" if present else "check the dataset root"
        raise DataError(f"{what} folder {parent / split} does not exist; {hint}")
    return parent / split


def _files(folder: Path, suffixes: tuple[str, ...], pattern: str = "*") -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in suffixes and p.is_file())


def _pair(images: dict[str, Path], masks: dict[str, Path], image_dir: Path, mask_dir: Path,
          need_masks_for_images: bool = True) -> list[tuple[Path, Path]]:
    """Images and masks matched by key; any key on one side only is an error naming the first few."""
    if need_masks_for_images:
        lonely = [images[k] for k in sorted(images.keys() - masks.keys())]
        if lonely:
            raise DataError(f"{_few(lonely)} in {image_dir} {'has' if len(lonely) == 1 else 'have'} no mask in "
                            f"{mask_dir}; add the masks or remove the images")
    lonely = [masks[k] for k in sorted(masks.keys() - images.keys())]
    if lonely:
        raise DataError(f"{_few(lonely)} in {mask_dir} {'has' if len(lonely) == 1 else 'have'} no image in "
                        f"{image_dir}; add the images or remove the masks")
    return [(images[k], masks[k]) for k in sorted(masks.keys() & images.keys())]


def _few(paths: list[Path], n: int = 3) -> str:
    names = ", ".join(p.name for p in paths[:n])
    return names if len(paths) <= n else f"{len(paths)} files ({names}, ...)"


def _no_images(folder: Path, what: str) -> DataError:
    return DataError(f"no {what} in {folder}; put the dataset's files there or point at the right root")


def _open_cityscapes(root: Path, split: str | None) -> SegmentationDataset:
    split = split or "val"
    image_dir = _split_folder(_folder(root / "leftImg8bit", "cityscapes image"), split, "cityscapes image")
    mask_dir = _split_folder(_folder(root / "gtFine", "cityscapes label"), split, "cityscapes label")
    # Keyed by city/prefix: aachen/aachen_000000_000019
    images = {f"{p.parent.name}/{p.name[:-len('_leftImg8bit.png')]}": p
              for p in _files(image_dir, (".png",), "*/*_leftImg8bit.png")}
    masks = {f"{p.parent.name}/{p.name[:-len('_gtFine_labelIds.png')]}": p
             for p in _files(mask_dir, (".png",), "*/*_gtFine_labelIds.png")}
    if not images:
        raise _no_images(image_dir, "<city>/*_leftImg8bit.png images")
    samples = _pair(images, masks, image_dir, mask_dir)
    # Every labelId 0..33 may occur; those outside the benchmark's 19 classes become 255.
    labels = _labels({label_id: CITYSCAPES_TRAIN_IDS.get(label_id, IGNORE) for label_id in range(34)},
                     "Cityscapes labelIds 0..33 or 255", "masks must be the *_gtFine_labelIds.png files of gtFine")
    return SegmentationDataset(root.name, "cityscapes", list(CITYSCAPES_CLASSES), samples, labels)


def _ade_root(root: Path) -> Path | None:
    for candidate in (root, root / "ADEChallengeData2016"):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    return None


def _open_ade20k(root: Path, split: str | None) -> SegmentationDataset:
    base = _ade_root(root)
    if base is None:
        raise DataError(f"{root} has no ADEChallengeData2016/ nor images/ and annotations/ folders; "
                        "point at the unpacked ADEChallengeData2016 folder")
    split = {None: "validation", "val": "validation", "train": "training"}.get(split, split)
    image_dir = _split_folder(base / "images", split, "ade20k image")
    mask_dir = _split_folder(base / "annotations", split, "ade20k annotation")
    images = {p.stem: p for p in _files(image_dir, (".jpg", ".jpeg", ".png"))}
    masks = {p.stem: p for p in _files(mask_dir, (".png",))}
    if not images:
        raise _no_images(image_dir, "*.jpg images")
    samples = _pair(images, masks, image_dir, mask_dir)
    labels = _labels({0: IGNORE, **{v: v - 1 for v in range(1, 151)}}, "ADE20K classes 0..150 (0 = other)",
                     "masks must be the annotations/ PNGs of ADEChallengeData2016", ignore_stored=False)
    return SegmentationDataset(base.name, "ade20k", list(ADE20K_CLASSES), samples, labels)


def _voc_root(root: Path) -> Path | None:
    if (root / "SegmentationClass").is_dir() or (root / "JPEGImages").is_dir():
        return root
    # VOCdevkit/ or its parent: the newest year that has segmentation masks.
    for candidate in sorted([*root.glob("VOC*"), *root.glob("VOCdevkit/VOC*")], reverse=True):
        if (candidate / "SegmentationClass").is_dir():
            return candidate
    return None


def _open_voc(root: Path, split: str | None) -> SegmentationDataset:
    base = _voc_root(root) or root
    image_dir = _folder(base / "JPEGImages", "voc image")
    mask_dir = _folder(base / "SegmentationClass", "voc mask")
    split_dir = base / "ImageSets" / "Segmentation"
    if split is None and (split_dir / "val.txt").is_file():
        split = "val"
    masks = {p.stem: p for p in _files(mask_dir, (".png",))}
    images = {p.stem: p for p in _files(image_dir, (".jpg", ".jpeg", ".png"))}
    if split is None:
        # Detection-only images have no mask and are not part of the segmentation set.
        if not masks:
            raise _no_images(mask_dir, "*.png masks")
        samples = _pair({k: v for k, v in images.items() if k in masks}, masks, image_dir, mask_dir)
    else:
        listing = split_dir / f"{split}.txt"
        if not listing.is_file():
            present = sorted(p.stem for p in split_dir.glob("*.txt")) if split_dir.is_dir() else []
            raise DataError(f"voc split file {listing} does not exist; "
                            + (f"splits here: {', '.join(present)}" if present else "pass split=None for every mask"))
        stems = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        if not stems:
            raise DataError(f"voc split file {listing} lists no images; list one image name per line")
        lost = [image_dir / f"{s}.jpg" for s in stems if s not in images]
        if lost:
            raise DataError(f"{_few(lost)} listed in {listing} {'is' if len(lost) == 1 else 'are'} missing from "
                            f"{image_dir}; add the images or fix the split file")
        lost = [mask_dir / f"{s}.png" for s in stems if s not in masks]
        if lost:
            raise DataError(f"{_few(lost)} listed in {listing} {'is' if len(lost) == 1 else 'are'} missing from "
                            f"{mask_dir}; add the masks or fix the split file")
        samples = [(images[s], masks[s]) for s in stems]
    labels = _labels({v: v for v in range(len(VOC_CLASSES))}, "VOC classes 0..20 or 255 (border)",
                     "masks must be the palette PNGs of SegmentationClass (or class-id PNGs)", palette=voc_colormap())
    return SegmentationDataset(base.name, "voc", list(VOC_CLASSES), samples, labels)


def _open_plain(root: Path, split: str | None) -> SegmentationDataset:
    image_dir = _folder(root / "images", "image")
    mask_dir = _folder(root / "masks", "mask")
    if split is not None:
        image_dir = _split_folder(image_dir, split, "image")
        mask_dir = _split_folder(mask_dir, split, "mask")
    images = _by_stem(_files(image_dir, IMAGE_SUFFIXES), image_dir)
    all_masks = _files(mask_dir, IMAGE_SUFFIXES)
    lossy = [p for p in all_masks if p.suffix.lower() not in MASK_SUFFIXES]
    if lossy:
        raise DataError(f"{_few(lossy)} in {mask_dir} {'is' if len(lossy) == 1 else 'are'} lossy (JPEG/WebP), "
                        "which blends class ids at edges; save masks as PNG")
    masks = _by_stem(all_masks, mask_dir)
    if not images:
        raise _no_images(image_dir, f"images ({' '.join(IMAGE_SUFFIXES)})")
    samples = _pair(images, masks, image_dir, mask_dir)

    names_file = root / "classes.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if not names:
            raise DataError(f"{names_file} names no classes; write one class name a line, in class-id order")
        labels = _plain_labels(len(names))
        return SegmentationDataset(root.name, "plain", names, samples, labels)

    dataset = SegmentationDataset(root.name, "plain", [], samples, _plain_labels(None))

    def scan() -> list[str]:  # up to the largest id in the masks opened (after ``limit``)
        top = -1
        for _, mask_path in dataset._samples:
            raw = dataset._labels.decode(_read(mask_path, "mask", cv2.IMREAD_UNCHANGED), mask_path)
            present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256)[:IGNORE])
            top = max(top, int(present[-1]) if present.size else -1)
        return [f"class_{i}" for i in range(top + 1)]

    dataset._classes = scan
    return dataset


def _by_stem(paths: list[Path], folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in paths:
        if p.stem in found:
            raise DataError(f"{found[p.stem].name} and {p.name} in {folder} share the name {p.stem!r}; "
                            "images and masks are matched by name, so keep one")
        found[p.stem] = p
    return found
