"""Data for training and checking segmentation models: labelled datasets in the common on-disk layouts, and
synthetic street scenes with exact labels. Imports only numpy and OpenCV, so any layer may use it."""
from .layouts import (ADE20K_CLASSES, CITYSCAPES_CLASSES, CITYSCAPES_TRAIN_IDS, IGNORE, LAYOUTS, VOC_CLASSES,
                      DataError, SegmentationDataset, detect_layout, open_dataset, voc_colormap)
from .synthetic import CHECK_SEED, EVAL_SEED, SAMPLES_SEED, SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, render_scene, write_dataset

__all__ = [
    "ADE20K_CLASSES", "CITYSCAPES_CLASSES", "CITYSCAPES_TRAIN_IDS", "IGNORE", "LAYOUTS", "VOC_CLASSES",
    "DataError", "SegmentationDataset", "detect_layout", "open_dataset", "voc_colormap",
    "CHECK_SEED", "EVAL_SEED", "SAMPLES_SEED", "SYNTHETIC_CLASSES", "SYNTHETIC_PALETTE", "render_scene",
    "write_dataset",
]
