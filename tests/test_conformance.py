"""One conformance test set over every registered model: forward shape, finite output, export with dynamic
N (parity runs a batch of two) and H/W, and ONNX Runtime parity in fp32, fp16 and int8 (both placements) at small sizes, each variant built with
its registry entry's ``test_kwargs`` (narrower or shallower, every block kind kept); full sizes are
instantiated in test_model_families.py (parameter counts)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.onnxruntime import OnnxRuntimeRunner
from export.compile.compat import check_tensorrt_compat
from export.measure.metrics import compare
from export.compile.onnx_export import export_onnx
from export.ops import DOMAIN, EXPORT_OPS
from engines.cpu import SATURATION_FREE_WEIGHT
from export.compile.precision import int8_weight_max, to_fp16, to_int8
from export.compile.plugins import runnable_on_onnxruntime
from export.compile.rewrites import apply_rewrites
from helpers import calibration_batches, make_deterministic
from models import MODELS, create_model, get_spec



PLAIN = (bool, int, float, str, tuple, type(None))


def _signature(module: torch.nn.Module) -> tuple:
    """A module's type, plain settings (widths, eps, modes, flags) and own tensor shapes, with its children's
    signatures; in a Sequential or ModuleList a run of identical blocks counts once, so networks that differ
    only in how often a block repeats (ResNet-50/101, MiT and ViT depths) have one signature."""
    own = (type(module).__qualname__,
           tuple(sorted((k, repr(v)) for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, PLAIN))),
           tuple((k, tuple(v.shape)) for k, v in module.named_parameters(recurse=False)),
           tuple((k, tuple(v.shape)) for k, v in module.named_buffers(recurse=False)))
    children = [(n, _signature(c)) for n, c in module.named_children()]
    if isinstance(module, (torch.nn.Sequential, torch.nn.ModuleList)):
        runs: list[tuple] = []
        for _, child in children:
            if not runs or runs[-1] != child:
                runs.append(child)
        return own, tuple(runs)
    return own, tuple(children)


def _distinct(names: list[str]) -> list[str]:
    """One variant for each distinct small network (the registry's ``test_kwargs``): SegFormer B1-B5, Segmenter
    T/S/B/L, DPT-B/L, OCRNet-W18/W48 and each ResNet-50/101 pair build the same blocks at test size, differing
    at most in depth; the set checks the one with the fewest modules."""
    groups: dict[tuple, list[tuple[int, str]]] = {}
    for name in names:
        with torch.device("meta"):
            model = create_model(name, num_classes=5, **get_spec(name).test_kwargs)
        groups.setdefault(_signature(model), []).append((sum(1 for _ in model.modules()), name))
    return sorted(min(group)[1] for group in groups.values())


NAMES = _distinct(sorted(MODELS))
EXPORT_SIZE = (64, 64)
CHECK_SIZE = (64, 96)  # another size than the export's: the graph must really be dynamic


def build(name: str) -> torch.nn.Module:
    """The variant's small configuration with the same weights in every run and on every worker: the INT8
    bounds below are checked on one fixed network per variant, not on whichever one a process drew."""
    torch.manual_seed(0)
    return make_deterministic(create_model(name, num_classes=5, **get_spec(name).test_kwargs))


@pytest.fixture(scope="module", params=NAMES)
def exported(request, tmp_path_factory):
    name = request.param
    spec = get_spec(name)
    model = build(name)
    graph = export_onnx(model, tmp_path_factory.mktemp(name) / "model.onnx", EXPORT_SIZE, spec.size_divisor,
                        spec.dynamic_hw)
    size = CHECK_SIZE if spec.dynamic_hw else EXPORT_SIZE
    pair = calibration_batches(size, 6)[4:]
    inputs = [np.concatenate(pair), pair[1]]  # a batch of two frames and one alone: N is symbolic
    with torch.no_grad():
        references = [model(torch.from_numpy(x)).numpy() for x in inputs]
    return name, graph, inputs, references, calibration_batches(size, 4)


def run(graph, inputs, simulate_qdq=False):
    # A TensorRT plugin node runs as its decomposition here (export/compile/plugins.py).
    with OnnxRuntimeRunner(runnable_on_onnxruntime(graph).SerializeToString(), simulate_qdq=simulate_qdq) as runner:
        return [runner.infer({"images": x})["logits"] for x in inputs]


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_finite(name):
    model = build(name)
    with torch.no_grad():
        out = model(torch.randn(2, 3, *EXPORT_SIZE))
    assert out.shape == (2, 5, *EXPORT_SIZE)
    assert torch.isfinite(out).all()


def test_export_contract(exported):
    name, graph, *_ = exported
    # The custom ops the registry entry declares are exactly the seg nodes of the graph.
    declared = {EXPORT_OPS[op].onnx_name for op in get_spec(name).custom_ops}
    assert {n.op_type for n in graph.graph.node if n.domain == DOMAIN} == declared
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in dims[2:]) == get_spec(name).dynamic_hw
    assert dims[0].dim_param, "the batch dimension must be symbolic"


@pytest.mark.parametrize("version", ["10.3", "11.1"])
def test_tensorrt_graph_passes_the_op_tables(exported, version):
    """The graph a TensorRT build parses (custom ops lowered for TensorRT) uses only what the oldest and the
    newest supported release accept (export/compile/data/tensorrt_onnx_ops.yaml)."""
    _, graph, *_ = exported
    assert check_tensorrt_compat(apply_rewrites(graph, "tensorrt")[0], version) == []


def test_fp32_parity(exported):
    _, graph, inputs, references, _ = exported
    lowered, _ = apply_rewrites(graph, "onnxruntime")
    result = compare(run(lowered, inputs), references)
    assert result["rel_l2_error"] < 1e-5
    assert result["pixel_agreement"] > 0.999


def test_fp16_parity(exported):
    _, graph, inputs, references, _ = exported
    fp16 = to_fp16(apply_rewrites(graph, "onnxruntime")[0])
    assert any(t.data_type == 10 for t in fp16.graph.initializer), "no FP16 weights: the conversion did nothing"
    result = compare(run(fp16, inputs), references)
    assert result["rel_l2_error"] < 5e-3
    assert result["pixel_agreement"] > 0.98


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_int8_parity(exported, target):
    """The bounds are the quantization's own error, and hold on every CPU because of how each graph is run:

    - onnxruntime: by ONNX Runtime's integer kernels, the engine itself. Its weights fit 7 bits, so no x86
      kernel saturates and every CPU computes the same integers (bit-identical logits on VNNI/AMX and on
      emulated AVX2: test_int8_cpus.py). With 8-bit weights, AVX2 without VNNI took SegFormer-B0 here from
      0.044 to 0.164 relative error.
    - tensorrt: with Q/DQ simulated in FP32, as TensorRT's int32 accumulation computes it; not by this CPU's
      kernels, which on AVX2 saturate (0.109 instead of 0.026 for the same graph)."""
    _, graph, inputs, references, calibration = exported
    int8 = to_int8(apply_rewrites(graph, target)[0], calibration, target)  # around TensorRT plugin nodes too
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    if target == "tensorrt":
        assert check_tensorrt_compat(int8, "10.3") == []  # symmetric, zero point 0, no custom ops left
    else:
        assert int8_weight_max(int8) <= SATURATION_FREE_WEIGHT
    result = compare(run(int8, inputs, simulate_qdq=target == "tensorrt"), references)
    assert np.isfinite(result["max_abs_error"])
    assert result["rel_l2_error"] < 0.15
    assert result["pixel_agreement"] > 0.85
