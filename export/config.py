"""pipeline.yaml, loaded once into typed objects.

Validation is driven by the dataclass annotations below, so a field's type is declared once. Every error
names the path of the offending value and what is allowed: ``models[1].precisions[0]: 'int4' is not one of
fp32, fp16, int8``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import yaml

from data import CITYSCAPES_CLASSES

from .errors import UserError

Precision = Literal["fp32", "fp16", "int8"]
Backend = Literal["onnxruntime", "tensorrt", "openvino"]  # openvino: opt-in, x86 CPUs
CpuInt8Placement = Literal["all_ops", "conv_matmul"]  # export/compile/precision.py says what each quantizes
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
CPU_INT8_PLACEMENTS: tuple[str, ...] = typing.get_args(CpuInt8Placement)

CITYSCAPES_PALETTE = [
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
    [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
    [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32],
]


@dataclass
class InputSize:
    """The sizes (H, W) a model is built for. ``size`` is what parity, calibration and check run at and the
    TensorRT profile's opt shape; ``min``/``max`` bound the TensorRT profile (ONNX Runtime takes any size
    that is a multiple of the model's size divisor)."""

    size: list[int] = field(default_factory=lambda: [256, 512])
    min: Optional[list[int]] = None
    max: Optional[list[int]] = None


@dataclass
class ModelConfig:
    name: str
    precisions: list[Precision] = field(default_factory=lambda: ["fp32", "fp16", "int8"])
    # Optional with weights that carry their classes (mmseg meta, Hugging Face id2label); otherwise 19.
    num_classes: Optional[int] = None
    classes: Optional[list[str]] = None  # default: the checkpoint's, else Cityscapes' 19 names when 19 classes
    palette: Optional[list[list[int]]] = None
    # A checkpoint (state dict, mmseg .pth, Hugging Face folder or .safetensors, hf:<repo id> from the local
    # cache; export/compile/checkpoints.py); None: deterministic random initialisation from `seed`
    weights: Optional[str] = None
    # The bilinear resizes' align_corners (mmseg's decode-head option; its Cityscapes *_769x769_* configs set
    # true). None: the checkpoint's config's where it carries one, else false; a value that disagrees with it is
    # an error, and true is taken only by the families that have such files (ModelSpec.takes_align_corners).
    align_corners: Optional[bool] = None
    seed: int = 0
    input: InputSize = field(default_factory=InputSize)
    mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])  # RGB, 0-255 scale
    std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    # Bake normalization (uint8 NHWC frames in) and argmax (uint8 class map out) into the engine.
    embed_pre_post: bool = False


@dataclass
class Calibration:
    images: Optional[str] = None  # a folder of images; INT8 refuses to build without it
    max_images: int = 16
    method: Literal["minmax", "entropy", "percentile"] = "minmax"


@dataclass
class Accuracy:
    """Precision must not silently cost accuracy. With ``data`` (a labelled folder, any layout ``export check
    --data`` reads), INT8 graphs are scored against the labels and, when they lose more than ``budget_miou``
    mIoU points against PyTorch, the most sensitive layers (or, in ONNX Runtime's CPU placement, whole op types
    such as every Add) are kept in float, at most ``max_fallback`` of them (export/compile/accuracy_guard.py).
    ``fp16_guard`` keeps in FP32 the nodes whose values come near FP16's range on the calibration images."""

    data: Optional[str] = None
    layout: Literal["auto", "cityscapes", "ade20k", "voc", "plain"] = "auto"
    limit: int = 20  # evaluation images (each sensitivity step re-scores them)
    budget_miou: float = 0.5
    max_fallback: int = 8
    fp16_guard: bool = True


@dataclass
class Threshold:
    """Parity of an engine with PyTorch, measured at build. ``None`` disables that bound."""

    max_abs_error: Optional[float] = None
    min_pixel_agreement: Optional[float] = None


@dataclass
class Parity:
    num_inputs: int = 3
    fp32: Threshold = field(default_factory=lambda: Threshold(1e-3, 0.999))
    fp16: Threshold = field(default_factory=lambda: Threshold(None, 0.98))
    int8: Threshold = field(default_factory=lambda: Threshold(None, 0.90))


@dataclass
class Check:
    images: Optional[str] = None  # None: generated images
    num_images: int = 4
    warmup: int = 2
    iterations: int = 10
    threads: int = 0  # 0: every core


@dataclass
class OnnxRuntimeConfig:
    threads: int = 0  # intra-op threads; 0: every core
    optimization_level: Literal["basic", "extended"] = "extended"  # offline, saved in the engine (portable)
    load_optimization_level: Literal["basic", "extended", "all"] = "all"  # at load, on the device
    # Where INT8 engines put Q/DQ (CPU_INT8_PLACEMENTS; export/compile/precision.py): auto builds every
    # placement, times them here and keeps the fastest that holds the accuracy budget and parity
    # (export/compile/int8_placement.py); a placement's name builds only that one.
    int8_placement: Literal["auto", CpuInt8Placement] = "auto"

    def session(self) -> dict:
        """The settings an engine's session is built and loaded with (the manifest's ``session``; the cache key
        of every ONNX Runtime engine). ``int8_placement`` shapes only the INT8 graph, whose key has it."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "int8_placement"}


@dataclass
class OpenVINOConfig:
    """The opt-in ``openvino`` backend (engines/openvino.py): inference precision is always f32."""

    threads: int = 0  # INFERENCE_NUM_THREADS; 0: every core


@dataclass
class TensorRTConfig:
    check_versions: list[str] = field(default_factory=lambda: ["10.3", "11.1"])
    workspace_mib: int = 2048
    dla_core: Optional[int] = None
    version_compatible: bool = False
    hardware_compatibility: Optional[Literal["ampere_plus"]] = None
    builder_optimization_level: Optional[int] = None
    timing_cache: str = "timing.cache"  # relative to the output folder


@dataclass
class Batch:
    """Frames per engine call. The exported graph's N is symbolic: ONNX Runtime engines take any batch, a
    TensorRT profile is built for ``min``..``max`` and tuned at ``opt``, and Triton batches requests up to
    ``max`` (its ``max_batch_size``). Parity is also checked on one batch of several frames."""

    min: int = 1
    opt: int = 4
    max: int = 8


@dataclass
class Triton:
    """``python -m export triton``: the model repository's scheduling (Triton's model_config.proto)."""

    preferred_batch_size: list[int] = field(default_factory=lambda: [4])  # batches the scheduler waits to form
    max_queue_delay_us: int = 2000  # how long a request may wait for others to join its batch
    dynamic_batching: bool = True
    gpu_instances: int = 1  # model instances per GPU (KIND_GPU) for TensorRT plans
    cpu_instances: int = 1  # instances (KIND_CPU) for ONNX Runtime engines


@dataclass
class DeepStream:
    """``python -m export deepstream``: what nvinfer's config needs beyond the manifest."""

    segmentation_threshold: float = 0.0  # nvinfer: a pixel below this confidence is no class
    gpu_id: int = 0


@dataclass
class Pipeline:
    models: list[ModelConfig]
    out_dir: str = "build"
    backends: list[Backend] = field(default_factory=lambda: ["onnxruntime", "tensorrt"])
    calibration: Calibration = field(default_factory=Calibration)
    accuracy: Accuracy = field(default_factory=Accuracy)
    parity: Parity = field(default_factory=Parity)
    check: Check = field(default_factory=Check)
    onnxruntime: OnnxRuntimeConfig = field(default_factory=OnnxRuntimeConfig)
    openvino: OpenVINOConfig = field(default_factory=OpenVINOConfig)
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    batch: Batch = field(default_factory=Batch)
    triton: Triton = field(default_factory=Triton)
    deepstream: DeepStream = field(default_factory=DeepStream)
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def resolve(self, path: str | None) -> Path | None:
        """A path from the file, taken relative to the file's folder."""
        return None if path is None else (self.base_dir / path)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            raise UserError(f"{path}: expected {_type_name(tp)}, got null")
        try:
            return _convert(value, non_none[0], path)
        except UserError as exc:
            if typing.get_origin(non_none[0]) in (list, Literal) or dataclasses.is_dataclass(non_none[0]):
                raise
            raise UserError(f"{path}: expected {_type_name(tp)}, got {value!r}") from exc
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise UserError(f"{path}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    ok = (isinstance(value, bool) if tp is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) if tp is float else
          isinstance(value, int) and not isinstance(value, bool) if tp is int else isinstance(value, tp))
    if not ok:
        raise UserError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{path or 'pipeline'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise UserError(f"{where}{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{sub}: missing; expected {_type_name(hints[name])}")
    return cls(**kwargs)


def _validate(p: Pipeline) -> None:
    from models import MODELS  # late: keeps config importable without building models

    from .compile.compat import known_tensorrt_versions
    from .compile.onnx_export import MAX_BATCH
    from .compile.pre_post import MAX_CLASSES

    for i, v in enumerate(p.tensorrt.check_versions):
        if v not in known_tensorrt_versions():
            raise UserError(f"tensorrt.check_versions[{i}]: {v!r} is not one of {', '.join(known_tensorrt_versions())}")
    b = p.batch
    if not 1 <= b.min <= b.opt <= b.max <= MAX_BATCH:
        raise UserError(f"batch: need 1 <= min <= opt <= max <= {MAX_BATCH} (the exported graph's bound), got "
                        f"min {b.min}, opt {b.opt}, max {b.max}")
    for i, n in enumerate(p.triton.preferred_batch_size):
        if not 1 <= n <= b.max:
            raise UserError(f"triton.preferred_batch_size[{i}]: {n} is not between 1 and batch.max ({b.max})")
    for key in ("max_queue_delay_us", "gpu_instances", "cpu_instances"):
        if getattr(p.triton, key) < (0 if key == "max_queue_delay_us" else 1):
            raise UserError(f"triton.{key}: {getattr(p.triton, key)} is out of range")
    if not p.models:
        raise UserError("models: empty; name at least one model (python -m export list shows them)")
    for i, m in enumerate(p.models):
        where = f"models[{i}]"
        if m.name not in MODELS:
            raise UserError(f"{where}.name: unknown model {m.name!r}; known: {' '.join(sorted(MODELS))}")
        for key in ("size", "min", "max"):
            hw = getattr(m.input, key)
            if hw is not None and (len(hw) != 2 or min(hw) <= 0):
                raise UserError(f"{where}.input.{key}: expected [height, width] of positive integers, got {hw}")
            divisor = MODELS[m.name].size_divisor
            if hw is not None and (hw[0] % divisor or hw[1] % divisor):
                raise UserError(f"{where}.input.{key}: {hw} is not a multiple of {divisor}, which {m.name} needs")
        lo, opt, hi = m.input.min or m.input.size, m.input.size, m.input.max or m.input.size
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise UserError(f"{where}.input: need min <= size <= max in each dimension, got {lo}, {opt}, {hi}")
        if len(m.mean) != 3 or len(m.std) != 3 or min(m.std) <= 0:
            raise UserError(f"{where}: mean and std need 3 values (RGB) and std > 0")
        _from_weights(m, p)
        if m.classes is not None and len(m.classes) != m.num_classes:
            raise UserError(f"{where}.classes: {len(m.classes)} names for num_classes {m.num_classes}")
        if m.palette is not None and (len(m.palette) != m.num_classes or any(len(c) != 3 for c in m.palette)):
            raise UserError(f"{where}.palette: need {m.num_classes} [R, G, B] colours")
        if len(set(m.precisions)) != len(m.precisions):
            raise UserError(f"{where}.precisions: {m.precisions} repeats a precision")
        if m.embed_pre_post and m.num_classes > MAX_CLASSES:
            raise UserError(f"{where}.embed_pre_post: {m.num_classes} classes do not fit the engine's uint8 class map "
                            f"(at most {MAX_CLASSES}); set embed_pre_post: false")


def _from_weights(m: ModelConfig, pipeline: Pipeline) -> None:
    """Fill num_classes, classes, palette and align_corners that pipeline.yaml leaves out from the checkpoint
    where it carries them; with neither, 19 classes (Cityscapes') and align_corners false."""
    from .compile.weights import resolve_align_corners  # torch and the models, only when validating

    checkpoint = None
    if m.weights is not None and None in (m.num_classes, m.classes, m.palette, m.align_corners):
        from .compile.checkpoints import read_checkpoint

        ref = m.weights if m.weights.startswith("hf:") else str(pipeline.resolve(m.weights))
        checkpoint = read_checkpoint(ref)
        if checkpoint.classes is not None and m.num_classes not in (None, len(checkpoint.classes)):
            from .compile.weights import check_classes

            check_classes(m, checkpoint)
        if checkpoint.classes is not None:
            m.num_classes = len(checkpoint.classes)
            m.classes = m.classes if m.classes is not None else checkpoint.classes
            if m.palette is None and checkpoint.palette is not None and len(checkpoint.palette) == m.num_classes:
                m.palette = checkpoint.palette
    if m.num_classes is None:
        m.num_classes = len(m.classes) if m.classes is not None else 19
    # An explicit value is checked against the checkpoint where the model is built (load_model), as the classes.
    m.align_corners = resolve_align_corners(m.name, m.align_corners, checkpoint)


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate ``path``; every problem is a UserError naming the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass --config with the path of your pipeline.yaml") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot be read as YAML ({str(exc).splitlines()[0]})") from None
    pipeline = _build(Pipeline, data, "")
    pipeline.base_dir = path.resolve().parent
    _validate(pipeline)
    return pipeline


def class_names(m: ModelConfig) -> list[str]:
    if m.classes is not None:
        return list(m.classes)
    if m.num_classes == len(CITYSCAPES_CLASSES):
        return list(CITYSCAPES_CLASSES)
    return [f"class_{i}" for i in range(m.num_classes)]


def palette(m: ModelConfig) -> list[list[int]]:
    if m.palette is not None:
        return [list(c) for c in m.palette]
    if m.num_classes == len(CITYSCAPES_PALETTE) and m.classes is None:
        return [list(c) for c in CITYSCAPES_PALETTE]
    rng = np.random.default_rng(m.num_classes)  # deterministic colours for a user-defined class list
    return rng.integers(0, 256, size=(m.num_classes, 3)).tolist()
