"""mIoU of a graph on the labelled set ``accuracy.data`` names, against PyTorch's: what the build's INT8
accuracy budget is held to (export/compile/accuracy_guard.py) and what benchmarks compare schemes by."""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import torch

import engines.onnxruntime as ort_engine
from engines.base import Runner
from data import DataError, open_dataset

from ..config import ModelConfig, Pipeline
from ..compile.plugins import runnable_on_onnxruntime
from ..errors import UserError
from ..images import preprocess
from .metrics import label_miou


def evaluation_set(pipeline: Pipeline, cfg: ModelConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """accuracy.data at the model's input size: (H,W,3) uint8 RGB frames and (H,W) label maps."""
    acc = pipeline.accuracy
    try:
        dataset = open_dataset(pipeline.resolve(acc.data), acc.layout, limit=acc.limit)
        if dataset.num_classes != cfg.num_classes:
            raise UserError(f"accuracy.data {acc.data} has {dataset.num_classes} classes, {cfg.name} "
                            f"has num_classes={cfg.num_classes}")
        items = [dataset[i] for i in range(len(dataset))]
    except DataError as exc:
        raise UserError(f"accuracy.data: {exc}") from None
    h, w = cfg.input.size
    frames = [cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) if img.shape[:2] != (h, w) else img
              for img, _ in items]
    labels = [cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST) for _, lab in items]
    return frames, labels


class AccuracyScorer:
    """PyTorch's mIoU (``reference``, points) on accuracy.data, and ``score(graph)``: a graph's, run by ONNX
    Runtime; ``simulate_qdq`` runs Q/DQ in FP32 as TensorRT computes it (engines/onnxruntime.py). A built engine
    is scored by its own runner (``score_runner``)."""

    def __init__(self, pipeline: Pipeline, cfg: ModelConfig, model: torch.nn.Module) -> None:
        self.frames, self.labels = evaluation_set(pipeline, cfg)
        self.images = [preprocess(f, tuple(cfg.input.size), cfg.mean, cfg.std) for f in self.frames]
        self.num_classes, self.threads = cfg.num_classes, pipeline.onnxruntime.threads
        with torch.no_grad():
            self.reference = self.miou(model(torch.from_numpy(x)).argmax(1)[0].numpy() for x in self.images)

    def miou(self, predictions) -> float:
        return label_miou(predictions, self.labels, self.num_classes)

    def score(self, graph: onnx.ModelProto, simulate_qdq: bool = False) -> float:
        graph = runnable_on_onnxruntime(graph)  # TensorRT plugin nodes run as their decomposition
        return self.score_runner(ort_engine.OnnxRuntimeRunner(graph.SerializeToString(), self.threads,
                                                              simulate_qdq=simulate_qdq))

    def score_runner(self, runner: Runner, pre_post: bool = False) -> float:
        """The mIoU of a fresh runner's predictions; ``pre_post``: it takes uint8 frames and returns classes."""
        with runner:
            if pre_post:
                return self.miou(runner.infer({"frames": f[None]})["classes"][0] for f in self.frames)
            return self.miou(runner.infer({"images": x})["logits"].argmax(1)[0] for x in self.images)
