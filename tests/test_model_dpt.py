"""DPT (models/dpt.py): its parameter count and one graph serving several sizes. Forward, export, the TensorRT op tables
and fp32/fp16/int8 parity of every variant's small configuration are in test_conformance.py."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.compile.onnx_export import export_onnx
from helpers import make_deterministic
from models import count_parameters, create_model, get_spec

def test_dpt_parameter_count() -> None:
    """No count for DPT-Base (ViT-B/16) is published in the paper's text we found, the isl-org/DPT README or
    mmsegmentation's configs/dpt/README.md; this pins the architecture: the ViT-B/16 at 384 without its final
    norm (85.8M) and the reassemble/fusion/head at 256 features with 150 classes."""
    with torch.device("meta"):
        assert count_parameters(create_model("dpt_vit_b16", num_classes=150)) == 111_177_558


@pytest.mark.parametrize("name", ["dpt_vit_b16"])
def test_one_graph_serves_several_sizes(name: str, tmp_path) -> None:
    """Exported at 64 x 64, the graph computes PyTorch's logits at 64 x 96 and 96 x 64 (position embeddings
    resized, DPT's resampling and x2 upsampling following the input)."""
    spec = get_spec(name)
    model = make_deterministic(create_model(name, num_classes=5, **spec.test_kwargs))
    graph = export_onnx(model, tmp_path / "model.onnx", (64, 64), spec.size_divisor, spec.dynamic_hw)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    for size in [(64, 96), (96, 64)]:
        images = torch.randn(1, 3, *size)
        with torch.no_grad():
            reference = model(images).numpy()
        (result,) = session.run(None, {"images": images.numpy()})
        assert result.shape == (1, 5, *size)
        assert np.abs(result - reference).max() <= 1e-5 * np.abs(reference).max(), size
