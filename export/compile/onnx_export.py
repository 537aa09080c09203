"""Stage 1: PyTorch -> ONNX with one input ``images`` (N,3,H,W) and one output ``logits``, N symbolic."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ..ops import DOMAIN, VERSION, translation_table
from ..errors import UserError

OPSET = 18  # >= 17 so LayerNormalization is a native node (FP16 TensorRT SegFormer is wrong without it).
MAX_BATCH = 64  # the exported graph's bound on N; engines are bounded by pipeline.yaml batch.max


def export_onnx(model: nn.Module, path: Path, sample_size: tuple[int, int], size_divisor: int,
                dynamic_hw: bool, max_size: tuple[int, int] = (4096, 4096), max_batch: int = MAX_BATCH) -> onnx.ModelProto:
    """Export ``model`` (eval mode) to ``path`` and return the loaded graph.

    The batch dimension N is symbolic (1 to ``max_batch``): ONNX Runtime engines take any batch, TensorRT's
    profile bounds it (pipeline.yaml ``batch``). With ``dynamic_hw`` the graph takes any H, W that are
    multiples of ``size_divisor`` (up to ``max_size``); otherwise it is fixed at ``sample_size``.
    """
    h, w = sample_size
    if h % size_divisor or w % size_divisor:
        raise UserError(f"input size {h}x{w} is not a multiple of {size_divisor}; choose sizes divisible by it")
    # The sample has two images: torch.export specializes a dimension traced at size 1 to the constant 1.
    images = torch.randn(2, 3, h, w)
    # By position, not by name: the network's forward may call its argument anything (x, img, ...).
    dims_of_input = {0: torch.export.Dim("batch", min=1, max=max_batch)}
    if dynamic_hw:
        dims = [size_divisor * torch.export.Dim(n, min=1, max=m // size_divisor) for n, m in zip("hw", max_size)]
        dims_of_input.update({2: dims[0], 3: dims[1]})
    dynamic_shapes = (dims_of_input,)
    model = model.eval()
    # The exporter is chatty (progress lines, deprecation warnings of its own internals); keep our output clean
    # and show its text only when it fails.
    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                model, (images,), dynamo=True, opset_version=OPSET, input_names=["images"],
                output_names=["logits"], dynamic_shapes=dynamic_shapes,
                custom_translation_table=translation_table(), external_data=False,
            )
        except Exception as exc:  # the exporter raises many types; all mean "this model did not export"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"ONNX export failed: {first}") from exc
    proto = program.model_proto
    _ensure_opset(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return proto


def _ensure_opset(proto: onnx.ModelProto) -> None:
    if not any(o.domain == DOMAIN for o in proto.opset_import) and any(n.domain == DOMAIN for n in proto.graph.node):
        proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, VERSION))
