"""TensorRT: build a plan from a precision-annotated ONNX graph, and run it on an NVIDIA GPU.

Targets TensorRT 10.3 (JetPack 6.1/6.2, the oldest) through 11.x with one code path, written against the
documented Python API (see docs/tensorrt.md and /work/shared/TENSORRT_NOTES.md for the sources). It has
never been run in this project's development machines or CI: they have no GPU and cannot install TensorRT.
Its tests (tests/test_tensorrt.py, marker ``tensorrt``) run only where TensorRT and a GPU exist.

Precision lives in the ONNX graph: every network is strongly typed (FP16 by Cast nodes, INT8 by Q/DQ
nodes), so no FP16/INT8 builder flags are set; TensorRT 11 removed them.

``tensorrt`` and ``pycuda`` are imported inside the functions that need them, so importing this module
costs nothing on a CPU-only machine. What the code decides (which plans load where, DLA precisions and placement,
the timing cache's file and merge, the optimization profile) is in plain functions that the CPU tests call; the
TensorRT calls around them are kept thin.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .base import EngineError, Runner
from .manifest import atomic_write, read_manifest, verify_engine_file

INPUT_NAME = "images"
HARDWARE_COMPATIBILITY = {"ampere_plus": "AMPERE_PLUS"}  # our name -> trt.HardwareCompatibilityLevel member
MAX_BUILDER_OPTIMIZATION_LEVEL = 5  # IBuilderConfig.builder_optimization_level: 0..5, TensorRT's default 3
OLDEST_TENSORRT = (10, 3)
REBUILD = "rebuild it with python -m export build --force"

Shape = tuple[int, int, int, int]


# ---------------------------------------------------------------------------------------------- availability

@functools.cache
def unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, in one line; None when ``tensorrt`` imports and a CUDA GPU is usable.

    Never raises, and is cached: call it as often as you like (tests use it as their skip reason).
    """
    try:
        import tensorrt as trt
    except ImportError:
        return f"TensorRT is not installed ({install_hint(on_jetson())})"
    except Exception as exc:  # the wheel is present but its libraries are not (e.g. libnvinfer missing)
        return f"TensorRT could not be imported: {_one_line(exc)}"
    version = getattr(trt, "__version__", "?")
    if _major_minor(version) < OLDEST_TENSORRT:
        return f"TensorRT {version} is too old; this project needs 10.3 or newer"
    try:
        import pycuda.driver as cuda
    except ImportError:
        return f"pycuda is not installed ({install_hint(on_jetson())})"
    except Exception as exc:
        return f"pycuda could not be imported: {_one_line(exc)}"
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda raises its own error types when there is no driver or device
        return f"no CUDA GPU found (CUDA could not be initialised: {_one_line(exc)})"
    if count == 0:
        return "no CUDA GPU found"
    return None


def on_jetson() -> bool:
    """Whether this is a Jetson (L4T, the OS of JetPack, writes /etc/nv_tegra_release); asked before TensorRT is
    importable, to say what to install."""
    return Path("/etc/nv_tegra_release").exists()


def install_hint(jetson: bool) -> str:
    """What to install for the TensorRT backend on this kind of machine, in one clause.

    On Jetson, TensorRT comes with JetPack (10.3 with JetPack 6.1/6.2, 10.13-10.16 with 7.x) and its Python bindings
    live in the system's site-packages; a wheel from PyPI would be another build for another CUDA. Elsewhere the
    TensorRT wheel must match the driver's CUDA major: the plain ``tensorrt`` package installs the CUDA 13 build
    (TensorRT 11.4 Installation Guide, pip), which a CUDA 12 driver cannot run, so pyproject.toml's extras pin
    ``tensorrt-cu12`` or ``tensorrt-cu13``.
    """
    if jetson:
        return ("on Jetson TensorRT comes with JetPack: make the venv with python3 -m venv --system-site-packages so "
                "JetPack's tensorrt is visible, then pip install -e '.[jetson]' for pycuda (built from source), and "
                "never pip install tensorrt there")
    return ("on a machine with an NVIDIA GPU: pip install -e '.[tensorrt-cu12]' with a CUDA 12 driver or "
            "'.[tensorrt-cu13]' with CUDA 13 (nvidia-smi's header shows the driver's CUDA version)")


def device_info() -> dict[str, str]:
    """TensorRT version, GPU (device 0) and platform engines are built for, for manifests: a plan is tied to all of
    them unless built version- or hardware-compatible, and to the platform always (see ``check_manifest``).
    Raises EngineError where TensorRT cannot run."""
    _require_tensorrt()
    import pycuda.driver as cuda
    import tensorrt as trt

    device = cuda.Device(0)
    major, minor = device.compute_capability()
    integrated = bool(device.get_attribute(cuda.device_attribute.INTEGRATED))  # Jetson (Tegra) iGPU: 1
    return {"tensorrt_version": trt.__version__, "gpu_name": device.name(),
            "compute_capability": f"{major}.{minor}", **host_platform(integrated)}


def host_platform(integrated_gpu: bool) -> dict[str, str]:
    """The platform half of ``device_info``: OS, CPU architecture and whether the GPU is a Jetson's integrated one
    or a discrete card. Serialized engines are not portable across platforms (Support Matrix, Engine Portability)."""
    return {"os": platform.system(), "cpu_arch": platform.machine(),
            "gpu_kind": "integrated" if integrated_gpu else "discrete"}


# Version-compatible plans across major versions: only these (built, runtime) pairs are documented
# ("TensorRT 10 version-compatible engines can run with a TensorRT 11 runtime, and TensorRT 8 version-compatible
# engines can run with a TensorRT 10 runtime. No other combination across major versions is supported.",
# TensorRT 11.4.1 Support Matrix, Engine Portability). Within a major, a plan runs on the same or a later version.
VERSION_COMPATIBLE_ACROSS_MAJORS = frozenset({(8, 10), (10, 11)})


def version_problem(built: str, runtime: str, version_compatible: bool) -> str | None:
    """Why a plan built with TensorRT ``built`` cannot be loaded by TensorRT ``runtime``; None when it can.

    Without version compatibility a plan loads only on the exact version that built it (TensorRT #2195, #2072:
    "Version tag does not match"). With it, "engines ... compatible with later TensorRT versions" and "engines built
    with newer versions ... do not work with older runtimes" (Developer Guide, Version Compatibility; 11.1
    Engine Compatibility): the runtime must be the same or later, compared to the patch and build number, in the
    same major or in a documented pair of majors (VERSION_COMPATIBLE_ACROSS_MAJORS).
    """
    b, r = _version(built), _version(runtime)
    if not version_compatible:
        return None if b == r else f"was built with TensorRT {built}, this machine has {runtime}"
    if r < b:
        return (f"was built version-compatible with TensorRT {built}, which runs on the same or later TensorRT "
                f"versions only, not on this machine's older {runtime}")
    if b[0] != r[0] and (b[0], r[0]) not in VERSION_COMPATIBLE_ACROSS_MAJORS:
        pairs = ", ".join(f"{x} -> {y}" for x, y in sorted(VERSION_COMPATIBLE_ACROSS_MAJORS))
        return (f"was built version-compatible with TensorRT {built}; across major versions TensorRT supports only "
                f"{pairs}, not {b[0]} -> {r[0]}")
    return None


def platform_problem(built: Mapping[str, str], here: Mapping[str, str]) -> str | None:
    """Why a plan built on platform ``built`` cannot run on ``here`` (device_info dicts); None when it can. No
    build option lifts this: "Serialized engines are not portable across platforms" (Support Matrix, Engine
    Portability, 10.x and 11.x), and a Jetson's integrated GPU and a discrete card are different platforms even with
    the same OS and CPU architecture (their TensorRT packages differ: JetPack's, or the SBSA/x86-64 builds)."""
    keys = ("os", "cpu_arch", "gpu_kind")
    if any(k not in built for k in keys):
        return "records no build platform (OS, CPU architecture, Jetson or discrete GPU): it predates these checks"
    if all(built[k] == here[k] for k in keys):
        return None
    return f"was built on {_platform_name(built)}, this machine is {_platform_name(here)}"


def gpu_problem(built: Mapping[str, str], here: Mapping[str, str], hardware_compatibility: str | None) -> str | None:
    """Why a plan built for the GPU ``built`` cannot run on the GPU ``here``; None when it can. Without hardware
    compatibility, only on the same GPU; with ``ampere_plus``, on any GPU of compute capability 8.0 or newer
    (NvInfer.h, HardwareCompatibilityLevel::kAMPERE_PLUS: "compatible with Ampere and newer GPUs")."""
    if hardware_compatibility == "ampere_plus":
        if _version(here["compute_capability"])[:2] < (8, 0):
            return (f"was built for Ampere or newer GPUs, this {here['gpu_name']} has compute capability "
                    f"{here['compute_capability']}")
        return None
    if (built.get("gpu_name"), built.get("compute_capability")) != (here["gpu_name"], here["compute_capability"]):
        return (f"was built for {built.get('gpu_name')} (compute capability {built.get('compute_capability')}), this "
                f"GPU is {here['gpu_name']} ({here['compute_capability']})")
    return None


def build_problem(options: "TensorRTOptions", device: Mapping[str, str]) -> str | None:
    """Why ``options`` cannot be built on ``device`` (a device_info dict); None when they can. ``ampere_plus`` "is
    only supported for engines built on NVIDIA Ampere and later GPUs" (NvInfer.h, kAMPERE_PLUS, 11.1; 10.3 says it of
    every level but kNONE)."""
    if options.hardware_compatibility == "ampere_plus" and _version(device["compute_capability"])[:2] < (8, 0):
        return (f"hardware_compatibility='ampere_plus' is built only on Ampere or newer GPUs, and this "
                f"{device['gpu_name']} has compute capability {device['compute_capability']}: build on an Ampere-or-"
                "newer GPU, or set hardware_compatibility to None")
    return None


def check_manifest(manifest: Mapping[str, Any], path: Path, device: Mapping[str, str]) -> None:
    """Refuse a plan built for another platform, TensorRT version or GPU, before TensorRT fails on it less clearly
    (``device`` is this machine's ``device_info``). The rules and their sources: docs/tensorrt.md, Portability."""
    options = manifest.get("tensorrt") or {}
    built = manifest.get("device") or {}
    problems = [platform_problem(built, device),
                version_problem(str(manifest.get("backend_version")), device["tensorrt_version"],
                                bool(options.get("version_compatible"))),
                gpu_problem(built, device, options.get("hardware_compatibility"))]
    problem = next((p for p in problems if p), None)
    if problem:
        raise EngineError(f"engine {path} {problem}; rebuild it on this machine with python -m export build --force "
                          f"--models {manifest.get('model', '?')}")


def _platform_name(info: Mapping[str, str]) -> str:
    gpu = "a Jetson's integrated GPU" if info.get("gpu_kind") == "integrated" else "a discrete GPU"
    return f"{info.get('os')} {info.get('cpu_arch')} with {gpu}"


# ---------------------------------------------------------------------------------------------- build options

@dataclass(frozen=True)
class TensorRTOptions:
    """How to build a TensorRT engine for a graph with one input, ``input_name``: ``images`` (N, 3, H, W) as
    python -m export writes it, or ``frames`` (N, H, W, 3) uint8 when pre/post-processing is embedded.

    ``min_shape``/``opt_shape``/``max_shape`` form the optimization profile of that input: the engine accepts any
    shape between min and max (per dimension) and is tuned for opt. Use ``TensorRTOptions.fixed(shape)`` for one
    size. ``dla_core`` runs layers on that DLA core, with GPU fallback for the rest (Jetson AGX Xavier/Orin
    only). ``version_compatible`` lets newer TensorRT runtimes load the engine; ``hardware_compatibility=
    "ampere_plus"`` lets other Ampere-or-newer GPUs load it; both cost speed. ``timing_cache`` names the cache
    file; each device and TensorRT version gets its own file beside it (``timing_cache_file``), read and merged by
    every build, which makes rebuilds much faster.
    """

    min_shape: Shape
    opt_shape: Shape
    max_shape: Shape
    workspace_mib: int = 1024
    dla_core: int | None = None
    version_compatible: bool = False
    hardware_compatibility: str | None = None
    timing_cache: Path | None = None
    builder_optimization_level: int | None = None
    input_name: str = INPUT_NAME

    @classmethod
    def fixed(cls, shape: Shape, **kwargs: Any) -> "TensorRTOptions":
        """Options for one input shape (min = opt = max)."""
        return cls(min_shape=shape, opt_shape=shape, max_shape=shape, **kwargs)

    def __post_init__(self) -> None:
        shapes = {}
        for name in ("min_shape", "opt_shape", "max_shape"):
            value = getattr(self, name)
            shape = tuple(value) if isinstance(value, (tuple, list)) else ()
            if len(shape) != 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
                raise ValueError(f"{name}={value!r}: expected 4 positive integers for input '{self.input_name}'")
            object.__setattr__(self, name, shape)  # lists (from YAML) become tuples
            shapes[name] = shape
        for axis, (lo, opt, hi) in enumerate(zip(shapes["min_shape"], shapes["opt_shape"], shapes["max_shape"])):
            if not lo <= opt <= hi:
                raise ValueError(f"dimension {axis} of input '{self.input_name}' must satisfy min <= opt <= max, got "
                                 f"min={lo}, opt={opt}, max={hi} (min_shape={shapes['min_shape']}, "
                                 f"opt_shape={shapes['opt_shape']}, max_shape={shapes['max_shape']})")
        if not isinstance(self.workspace_mib, int) or self.workspace_mib <= 0:
            raise ValueError(f"workspace_mib={self.workspace_mib!r}: expected a positive number of MiB, e.g. 1024")
        if self.dla_core is not None and (not isinstance(self.dla_core, int) or self.dla_core < 0):
            raise ValueError(f"dla_core={self.dla_core!r}: expected None (GPU only) or a DLA core index 0, 1, ...")
        if self.hardware_compatibility is not None and self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise ValueError(f"hardware_compatibility={self.hardware_compatibility!r}; known: None, "
                             + ", ".join(repr(k) for k in HARDWARE_COMPATIBILITY))
        level = self.builder_optimization_level
        if level is not None and (not isinstance(level, int) or not 0 <= level <= MAX_BUILDER_OPTIMIZATION_LEVEL):
            raise ValueError(f"builder_optimization_level={level!r}: expected None (TensorRT's default, 3) or "
                             f"0..{MAX_BUILDER_OPTIMIZATION_LEVEL}")
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))


# ---------------------------------------------------------------------------------------------- build

@dataclass(frozen=True)
class Built:
    """What ``build`` returns: the plan, where its timing cache lives and whether the file's entries were used, and,
    for DLA builds, where the layers run (``dla_report``)."""

    plan: bytes
    timing_cache: Path | None = None  # the per-device file (timing_cache_file), None without a timing cache
    timing_cache_status: str | None = None  # "loaded" (its entries were used), "new" (no file yet), "rejected"
    dla: dict | None = None


def build_engine(onnx_path: str | os.PathLike, options: TensorRTOptions) -> bytes:
    """Compile an ONNX graph into a serialized TensorRT engine (a plan) for this machine's GPU: ``build(...).plan``."""
    return build(onnx_path, options).plan


def build(onnx_path: str | os.PathLike, options: TensorRTOptions) -> Built:
    """Compile an ONNX graph into a plan for this machine's GPU, and say how the build went (``Built``).

    Steps, each small, as Polygraphy's loaders do: create a strongly typed network, parse the ONNX file,
    configure the builder (workspace, optimization profile, DLA, compatibility, timing cache), build, merge the
    timing cache into its file, and for DLA report where each layer runs.
    """
    _require_tensorrt()
    import tensorrt as trt

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineError(f"ONNX file {onnx_path} not found; export it first with python -m export")
    device = device_info()
    problem = build_problem(options, device)
    if problem:
        raise EngineError(problem)
    logger = _logger()
    trt.init_libnvinfer_plugins(logger, "")  # before parsing: ONNX nodes named like a plugin become that plugin
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    if network is None:
        raise EngineError("TensorRT could not create a network; the TensorRT log above says why")
    # Builder, network and parser stay alive together until the build is done, as Polygraphy keeps them.
    parser = _parse_onnx(trt, network, logger, onnx_path)
    config = _create_config(trt, builder, network, options, onnx_path)
    cache_path = status = None
    if options.timing_cache is not None:
        cache_path = timing_cache_file(options.timing_cache, device)
        status = _load_timing_cache(config, cache_path)
    placement = _network_placement(network, config) if options.dla_core is not None else None
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(
            f"TensorRT could not build an engine from {onnx_path}; the TensorRT log above says why. Common causes: "
            f"an operator TensorRT does not take (see docs/tensorrt.md), workspace_mib={options.workspace_mib} too "
            "small, or a DLA/compatibility option this GPU does not support")
    plan = bytes(plan)
    if cache_path is not None:
        cache = config.get_timing_cache()
        if cache is not None:
            save_timing_cache(cache, cache_path, config.create_timing_cache)
    del parser
    dla = None
    if placement is not None:
        dla = dla_report(options.dla_core, placement, _inspect(trt, plan, options))
        problem = dla_problem(dla)
        if problem:
            raise EngineError(f"{onnx_path}: {problem}")
    return Built(plan, cache_path, status, dla)


def _network_flags(trt: Any) -> int:
    # TensorRT 10.x: strong typing is opt-in with the STRONGLY_TYPED creation flag. TensorRT 11.x: networks are
    # always strongly typed and the flag is deprecated and ignored (11.0 Python API, NetworkDefinitionCreationFlag),
    # so pass nothing there; getattr covers a release that drops the member.
    if _major_minor(trt.__version__) >= (11, 0):
        return 0
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise EngineError(f"TensorRT {trt.__version__} has no strongly typed networks; this project needs 10.3+")
    return 1 << int(flag)


def _parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> Any:
    parser = trt.OnnxParser(network, logger)
    # parse_from_file, not parse(bytes): the parser then finds external weight files next to the graph.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT's ONNX parser rejected {onnx_path}: "
                          + ("; ".join(errors) or "no error recorded, see the TensorRT log above"))
    return parser


def _create_config(trt: Any, builder: Any, network: Any, options: TensorRTOptions, onnx_path: Path) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    _add_profile(builder, network, config, options, onnx_path)
    if options.dla_core is not None:
        _use_dla(trt, builder, config, options.dla_core)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)  # the runner must then allow engine host code
    if options.hardware_compatibility is not None:
        member = HARDWARE_COMPATIBILITY[options.hardware_compatibility]
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, member)
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    if options.dla_core is not None:
        # The engine inspector then names each layer's type, so dla_report can say where the layers went.
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    return config


def _add_profile(builder: Any, network: Any, config: Any, options: TensorRTOptions, onnx_path: Path) -> None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    check_profile([tensor.name for tensor in inputs], tuple(inputs[0].shape) if inputs else (), options, onnx_path)
    profile = builder.create_optimization_profile()
    profile.set_shape(options.input_name, options.min_shape, options.opt_shape, options.max_shape)
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(f"TensorRT rejected the optimization profile min={options.min_shape}, "
                          f"opt={options.opt_shape}, max={options.max_shape} for {onnx_path}")


def check_profile(input_names: list[str], graph_shape: tuple[int, ...], options: TensorRTOptions,
                  onnx_path: Path) -> None:
    """Refuse options whose profile does not fit the parsed network: one input named ``options.input_name``, of
    rank 4, and every fixed dimension (-1 marks a dynamic one) equal in min, opt and max."""
    name = options.input_name
    if input_names != [name]:
        raise EngineError(f"{onnx_path} has inputs {input_names}; the options profile exactly one input '{name}' "
                          "(images (N, 3, H, W), or frames (N, H, W, 3) with embed_pre_post), as python -m export "
                          "writes: set TensorRTOptions(input_name=...)")
    if len(graph_shape) != 4:
        raise EngineError(f"input '{name}' of {onnx_path} has shape {graph_shape}; expected 4 dimensions")
    wanted = (options.min_shape, options.opt_shape, options.max_shape)
    for axis, dim in enumerate(graph_shape):
        if dim >= 0 and any(shape[axis] != dim for shape in wanted):
            raise EngineError(
                f"input '{name}' of {onnx_path} has fixed size {dim} in dimension {axis} (shape "
                f"{graph_shape}), but the options ask for min/opt/max {[s[axis] for s in wanted]}; change the "
                "options or export the graph with that dimension dynamic")


def _use_dla(trt: Any, builder: Any, config: Any, core: int) -> None:
    available = builder.num_DLA_cores
    if available == 0:
        raise EngineError(f"dla_core={core} was requested, but this device has no DLA (only some Jetson modules, "
                          "such as AGX Xavier and AGX Orin, have one; desktop GPUs and Jetson Thor do not); "
                          "set dla_core to None")
    if core >= available:
        raise EngineError(f"dla_core={core} was requested, but this device has DLA cores 0..{available - 1}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU instead of failing


# DLA computes in FP16 and INT8 only, and in a strongly typed network "network tensor types ... determine
# precision. An ONNX model that was never converted to FP16 keeps its original tensor types" (TensorRT 11.4.1,
# Strongly Typed Networks for DLA): an fp32 graph puts no layer on DLA, and with GPU fallback "layers that cannot run
# on DLA silently fall back to GPU execution without an error" (11.4.1, DLA Runtime Configuration).
DLA_PRECISIONS = ("fp16", "int8")


def dla_precision_problem(precision: str, dla_core: int | None) -> str | None:
    """Why a ``precision`` graph should not be built for DLA core ``dla_core``; None when it may (or no DLA)."""
    if dla_core is None or precision in DLA_PRECISIONS:
        return None
    return (f"dla_core={dla_core} with the {precision} graph: DLA runs only {' and '.join(DLA_PRECISIONS)} layers, and in "
            f"a strongly typed network an {precision} graph's layers stay {precision}, so every layer would fall back to "
            "the GPU; build the fp16 or int8 graph for DLA (--precisions fp16,int8), or set tensorrt.dla_core: null")


def engine_layers(engine_information: str) -> list[dict[str, str]]:
    """The layers of an engine from its inspector's JSON (IEngineInspector.get_engine_information): {"Layers": [...]}
    where each layer is a name (ProfilingVerbosity.LAYER_NAMES_ONLY) or an object with "Name" and "LayerType"
    (DETAILED). Returns [{"name", "type"}], type "" where the inspector gives none."""
    import json

    try:
        layers = json.loads(engine_information).get("Layers", [])
    except (ValueError, AttributeError):
        return []
    out = []
    for layer in layers:
        if isinstance(layer, str):
            out.append({"name": layer, "type": ""})
        elif isinstance(layer, dict):
            out.append({"name": str(layer.get("Name", "")), "type": str(layer.get("LayerType", ""))})
    return out


def dla_report(core: int, placement: list[tuple[str, bool]], engine_information: str) -> dict:
    """Where a DLA build's layers run. ``placement``: each network layer and whether the builder can run it on DLA
    (IBuilderConfig.can_run_on_DLA, before the build); the rest fall back to the GPU. ``engine_information``: the
    built engine's inspector JSON, whose layers are listed as TensorRT reports them (a DLA subgraph appears as one
    "{ForeignNode[...]}" layer, as the log of NVIDIA's sampleCudla shows; on the GPU, Myelin subgraphs are named alike,
    so the layer types say which)."""
    on_dla = [name for name, dla in placement if dla]
    return {"dla_core": core, "network_layers": len(placement), "on_dla": len(on_dla),
            "gpu_fallback": [name for name, dla in placement if not dla],
            "engine_layers": engine_layers(engine_information)}


def dla_problem(report: Mapping[str, Any]) -> str | None:
    """A DLA build that put no layer on DLA is refused: it would run on the GPU only, slower than a GPU build."""
    if report["network_layers"] and not report["on_dla"]:
        return (f"dla_core={report['dla_core']}, but none of the {report['network_layers']} layers can run on DLA "
                "(DLA takes FP16/INT8 convolutions, pooling, activations and a few more; see TensorRT's 'DLA Supported "
                "Layers and Restrictions'), so all of them would fall back to the GPU; build without dla_core")
    return None


def dla_summary(report: Mapping[str, Any]) -> str:
    """One line for the build log: how many layers run on DLA, and which fall back to the GPU."""
    fallback = report["gpu_fallback"]
    names = ", ".join(fallback[:5]) + (f" (+{len(fallback) - 5} more)" if len(fallback) > 5 else "")
    line = f"DLA core {report['dla_core']}: {report['on_dla']} of {report['network_layers']} layers on DLA"
    return line + (f"; on the GPU: {names}" if fallback else "")


def _network_placement(network: Any, config: Any) -> list[tuple[str, bool]]:
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    return [(layer.name, bool(config.can_run_on_DLA(layer))) for layer in layers]


def _inspect(trt: Any, plan: bytes, options: TensorRTOptions) -> str:
    # The inspector needs a deserialized engine; a DLA plan deserializes on a runtime told its DLA core.
    runtime = trt.Runtime(_logger())
    runtime.DLA_core = options.dla_core
    if options.version_compatible:
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        return ""
    return engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)


def timing_cache_file(base: str | os.PathLike, device: Mapping[str, str]) -> Path:
    """The timing cache file of ``device`` (a device_info dict) beside ``base``: build/timing.cache becomes
    build/timing.<gpu>-sm<cc>-trt<version>-<os>-<cpu>.cache. One file per device and TensorRT version, because a
    cache from another device "may lead to functional/performance bugs" (NvInfer.h, IBuilderConfig::setTimingCache)
    and ``ITimingCache::combine`` skips a cache from another TensorRT version (NvInferRuntime.h, 10.3 and 11.1): so
    a build never loads another device's entries, and never overwrites them either."""
    base = Path(base)
    key = "-".join([device["gpu_name"], "sm" + device["compute_capability"].replace(".", ""),
                    "trt" + device["tensorrt_version"], device.get("os", ""), device.get("cpu_arch", "")])
    slug = "".join(c if c.isalnum() or c in "._" else "-" for c in key.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return base.with_name(f"{base.stem}.{slug}{base.suffix or '.cache'}")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (as Polygraphy's LockFile does) so that builds in other processes
    and threads take turns at reading, merging and writing ``path``. POSIX advisory locks (fcntl.flock): Linux,
    which every supported TensorRT target (x86-64, SBSA, JetPack) is."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # a lock per open file: threads of one process also wait
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _load_timing_cache(config: Any, path: Path) -> str:
    """Give the build this device's cache; returns "loaded", "new" (no file yet) or "rejected" (TensorRT refused the
    file, e.g. written by another TensorRT version: the build starts empty and save_timing_cache keeps the old
    entries by merging)."""
    with file_lock(path):
        data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)  # empty bytes: a new, empty cache
    # ignore_mismatch=False, as Polygraphy loads: the file is this device's (timing_cache_file), so a mismatch means
    # something changed (driver, CUDA), and TensorRT's header warns that another device's cache "may lead to
    # functional/performance bugs" (NvInfer.h, IBuilderConfig::setTimingCache).
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return "loaded" if data else "new"
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return "rejected"


def save_timing_cache(cache: Any, path: Path, load: Any) -> bool:
    """Merge what is in ``path`` into ``cache`` (this build's ITimingCache) and write the result, all under
    ``file_lock``, so parallel builds add to the file instead of the last writer replacing it: Polygraphy's loader
    does the same (``combine(previous, ignore_mismatch=True)`` under its LockFile). ``load`` turns bytes into a
    cache (IBuilderConfig.create_timing_cache). Returns False when the previous file could not be merged (its
    entries are then lost; combine skips caches of another TensorRT version)."""
    merged = True
    with file_lock(path):
        if path.is_file():
            previous = load(path.read_bytes())
            # ignore_mismatch=True as Polygraphy: the file is keyed by device, so its header may differ only in what
            # does not change the tactics (a driver update); conflicting entries keep this build's.
            merged = previous is not None and bool(cache.combine(previous, ignore_mismatch=True))
        atomic_write(path, bytes(cache.serialize()))
    return merged


# ---------------------------------------------------------------------------------------------- run

@dataclass(frozen=True)
class Ticket:
    """What ``TensorRTRunner.submit`` returns and ``collect`` takes: the buffer set (slot) holding the frame and
    its place in submission order."""

    slot: int
    sequence: int


class TicketQueue:
    """The double-buffering rules, apart from CUDA: ticket n uses slot n % depth, at most ``depth`` tickets are
    outstanding, and they are collected in submission order.

    A submit that would take a slot still in flight raises EngineError instead of waiting: waiting would have to
    collect the oldest frame and hold its outputs for a later ``collect``, hiding a caller bug (the runtime keeps
    at most two frames pending). Sequence numbers keep counting across ``clear``, so a ticket issued before a
    deactivate can never be mistaken for a new one.
    """

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self._next = 0  # sequence number of the next ticket
        self._oldest = 0  # sequence number of the oldest outstanding ticket (== _next when none is)

    @property
    def outstanding(self) -> int:
        return self._next - self._oldest

    def next_slot(self) -> int:
        """The slot the next ticket will use; raises EngineError when every slot is in flight."""
        if self.outstanding >= self.depth:
            waiting = ", ".join(f"#{n}" for n in range(self._oldest, self._next))
            raise EngineError(f"submit() with {self.outstanding} frames already in flight (tickets {waiting}); "
                              f"collect ticket #{self._oldest} first: this runner holds at most {self.depth}")
        return self._next % self.depth

    def issue(self) -> Ticket:
        ticket = Ticket(self.next_slot(), self._next)
        self._next += 1
        return ticket

    def check(self, ticket: object) -> Ticket:
        """Raise EngineError unless ``ticket`` is the oldest outstanding one, the only one collect may take."""
        if not isinstance(ticket, Ticket):
            raise EngineError(f"collect() takes a ticket returned by this runner's submit(), got {ticket!r}")
        n = ticket.sequence
        if n < self._oldest:
            raise EngineError(f"ticket #{n} was already collected, or submitted before the runner was deactivated")
        if n >= self._next or ticket.slot != n % self.depth:
            raise EngineError(f"ticket #{n} was not issued by this runner")
        if n != self._oldest:
            raise EngineError(f"ticket #{n} collected before ticket #{self._oldest}; collect in submission order")
        return ticket

    def retire(self, ticket: Ticket) -> None:
        self.check(ticket)
        self._oldest += 1

    def clear(self) -> None:
        """Forget every outstanding ticket (deactivate); they stay invalid."""
        self._oldest = self._next


@dataclass
class _Buffer:
    """A pinned host array and a device allocation of the same capacity (elements), grown on demand."""

    host: np.ndarray  # flat, page-locked, so copies to and from the GPU can be asynchronous
    device: Any  # pycuda.driver.DeviceAllocation


@dataclass
class _Slot:
    """One of the two buffer sets: its own pinned host and device buffers for every I/O tensor, and the stream
    its copies run on, so the copies of one frame overlap the inference of the other."""

    stream: Any  # pycuda.driver.Stream: host->device before the frame's inference, device->host after it
    uploaded: Any  # pycuda.driver.Event: the input copy is done; inference waits for it
    inferred: Any  # the inference is done; the output copy waits for it
    downloaded: Any  # the output copy is done; collect waits for it
    buffers: dict[str, _Buffer] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # output shapes of the frame in flight


class TensorRTRunner(Runner):
    """Runs a TensorRT plan file on GPU 0 through named I/O tensors (``execute_async_v3``).

    ``version_compatible`` must be True for plans built with ``TensorRTOptions(version_compatible=True)``:
    such plans carry their own runtime code, which TensorRT only loads when allowed. ``dla_core`` must match
    the core a DLA plan was built for.

    ``submit``/``collect`` double-buffer: two buffer sets used in turn, each with its own copy stream, so the
    host->device copy of frame n+1 runs while frame n is inferred. At most two frames are in flight (a third
    ``submit`` raises EngineError); collect them in submission order. ``infer`` is submit + collect.

    CUDA context: the runner uses the device's *primary* context (the one the CUDA runtime, and therefore
    TensorRT, uses), retained once per process, and pushes it only while it works (activate, infer, submit,
    collect, deactivate), so it leaves no context current afterwards and works from whichever thread calls it
    (one call at a time). ``pycuda.autoinit`` is not used: it creates a second, non-primary context.
    """

    name = "tensorrt"

    def __init__(self, plan_path: str | os.PathLike, *, version_compatible: bool = False,
                 dla_core: int | None = None) -> None:
        super().__init__()
        self.plan_path = Path(plan_path)
        self.version_compatible = version_compatible
        self.dla_core = dla_core
        self._runtime = self._engine = self._context = self._stream = None
        self._inputs: dict[str, np.dtype] = {}
        self._outputs: dict[str, np.dtype] = {}
        self._slots: list[_Slot] = []
        self._tickets = TicketQueue(depth=2)

    @classmethod
    def from_engine(cls, plan_path: str | os.PathLike) -> "TensorRTRunner":
        """Load a built plan after checking its manifest: file hash, platform, TensorRT version and GPU."""
        path = Path(plan_path)
        manifest = read_manifest(path)
        if manifest.get("backend") != "tensorrt" or manifest.get("kind") != "engine":
            raise EngineError(f"{path} is not a TensorRT engine (manifest says {manifest.get('backend')} "
                              f"{manifest.get('kind')})")
        verify_engine_file(path, manifest)
        check_manifest(manifest, path, device_info())
        options = manifest.get("tensorrt") or {}
        return cls(path, version_compatible=bool(options.get("version_compatible")), dla_core=options.get("dla_core"))

    def activate_impl(self) -> None:
        _require_tensorrt()
        import pycuda.driver as cuda
        import tensorrt as trt

        try:
            plan = self.plan_path.read_bytes()
        except FileNotFoundError:
            raise EngineError(f"engine {self.plan_path} does not exist; build it with python -m export build") from None
        if not plan:
            raise EngineError(f"engine {self.plan_path} is empty; {REBUILD}")
        with self._cuda_current():
            try:
                self._load(trt, cuda, plan)
            except BaseException:
                self._free()
                raise

    def _load(self, trt: Any, cuda: Any, plan: bytes) -> None:
        logger = _logger()
        trt.init_libnvinfer_plugins(logger, "")  # plans with plugin layers need the plugin creators registered
        self._runtime = trt.Runtime(logger)
        if self.version_compatible:
            self._runtime.engine_host_code_allowed = True
        if self.dla_core is not None:
            self._runtime.DLA_core = self.dla_core
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineError(
                f"TensorRT {trt.__version__} cannot load engine {self.plan_path}: it was built for another TensorRT "
                "version or GPU, or the file is damaged (the TensorRT log above says which); rebuild it on this "
                "device with python -m export build --force")
        # One execution context for both buffer sets, and all inference on one stream (self._stream), so two
        # frames never run at once: a context's activation memory "is in use from the invocation of enqueueV3()
        # until network execution is complete" (NvInferRuntime.h, IExecutionContext::setDeviceMemory). A second
        # context would need a second optimization profile: "If the engine supports dynamic shapes, each
        # execution context in concurrent use must use a separate optimization profile" (NvInferRuntime.h, class
        # IExecutionContext, TensorRT 10.3 and 11.1), and our plans have one.
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"TensorRT could not create an execution context for {self.plan_path} (out of GPU "
                              "memory?); the TensorRT log above says why")
        self._stream = cuda.Stream()
        for _ in range(self._tickets.depth):
            self._slots.append(_Slot(cuda.Stream(), _event(cuda), _event(cuda), _event(cuda, blocking=True)))
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = _numpy_dtype(trt, self._engine.get_tensor_dtype(name), name)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs)[name] = dtype

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._tickets.outstanding:
            raise EngineError(f"{self.name}: infer() while {self._tickets.outstanding} submitted frame(s) are not "
                              "collected; collect them first, or use only submit/collect")
        return self.collect(self.submit(feed))

    def submit(self, feed: Mapping[str, np.ndarray]) -> Ticket:
        """Start inference on ``feed`` in the next free buffer set and return its ticket, without waiting for the
        GPU. Raises EngineError if two frames are already in flight: collect the oldest first."""
        if not self.is_active:
            raise EngineError(f"{self.name}: call activate() (or use it as a context manager) before submit()")
        import pycuda.driver as cuda

        arrays = self._check_feed(feed)
        slot = self._slots[self._tickets.next_slot()]
        with self._cuda_current():
            try:
                self._enqueue(cuda, slot, arrays)
            except BaseException:
                # Copies for this slot may be queued: let them finish before the slot's buffers are written again.
                slot.stream.synchronize()
                self._stream.synchronize()
                raise
        return self._tickets.issue()

    def collect(self, ticket: object) -> dict[str, np.ndarray]:
        """Wait for the oldest submitted frame and return copies of its outputs (the buffers are reused)."""
        ticket = self._tickets.check(ticket)
        slot = self._slots[ticket.slot]
        with self._cuda_current():
            slot.downloaded.synchronize()
        results = {name: slot.buffers[name].host[:math.prod(shape)].reshape(shape).copy()
                   for name, shape in slot.shapes.items()}
        self._tickets.retire(ticket)
        return results

    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(feed) != set(self._inputs):
            raise EngineError(f"{self.name}: got inputs {sorted(feed)}, the engine takes {sorted(self._inputs)}")
        arrays = {}
        for name, dtype in self._inputs.items():
            arrays[name] = np.asarray(feed[name])
            if arrays[name].dtype != dtype:
                raise EngineError(f"{self.name}: input '{name}' is {arrays[name].dtype}, the engine takes {dtype}; "
                                  f"convert it with .astype(np.{dtype.name})")
        return arrays

    def _enqueue(self, cuda: Any, slot: _Slot, arrays: dict[str, np.ndarray]) -> None:
        """Queue one frame on ``slot``: input copy on the slot's stream, inference on the shared stream once the
        copy is done, output copy back on the slot's stream once inference is done."""
        # Shapes first: a shape outside the profile is refused before anything is queued.
        for name, array in arrays.items():
            if not self._context.set_input_shape(name, array.shape):
                raise EngineError(f"{self.name}: input '{name}' has shape {array.shape}, outside the engine's "
                                  f"profile {self._profile(name)}; rebuild with other min/opt/max shapes")
        slot.shapes = {}
        for name in self._outputs:
            slot.shapes[name] = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in slot.shapes[name]):
                raise EngineError(f"{self.name}: output '{name}' has a data-dependent shape {slot.shapes[name]}, "
                                  "which this runner does not support")
        sizes = {**{name: array.size for name, array in arrays.items()},
                 **{name: math.prod(shape) for name, shape in slot.shapes.items()}}
        dtypes = {**self._inputs, **self._outputs}
        buffers = {name: self._buffer(cuda, slot, name, size, dtypes[name]) for name, size in sizes.items()}
        for name, array in arrays.items():
            host = buffers[name].host[:array.size].reshape(array.shape)
            np.copyto(host, array)  # into pinned memory, whatever the caller's layout
            cuda.memcpy_htod_async(buffers[name].device, host, slot.stream)
        slot.uploaded.record(slot.stream)
        self._stream.wait_for_event(slot.uploaded)
        # Rebinding the addresses while the other slot's frame may still be running on the GPU: enqueueV3 forbids
        # "modifying or releasing memory that has been registered for the tensors before stream synchronization"
        # (NvInferRuntime.h, IExecutionContext::enqueueV3), and each slot has its own memory, untouched until its
        # ticket is collected. The headers do not say in so many words that addresses and shapes are read when
        # enqueueV3 is called; NVIDIA's Triton TensorRT backend relies on it the same way: one context, buffer
        # binding sets used in turn, setInputShape/setTensorAddress + enqueueV3 on one stream for the next request
        # while the previous one still runs (triton-inference-server/tensorrt_backend src/instance_state.cc).
        for name, buffer in buffers.items():
            self._context.set_tensor_address(name, int(buffer.device))
        if not self._context.execute_async_v3(self._stream.handle):
            raise EngineError(f"{self.name}: TensorRT failed to enqueue inference; the TensorRT log above says why")
        slot.inferred.record(self._stream)
        slot.stream.wait_for_event(slot.inferred)
        for name, shape in slot.shapes.items():
            cuda.memcpy_dtoh_async(buffers[name].host[:sizes[name]].reshape(shape), buffers[name].device, slot.stream)
        slot.downloaded.record(slot.stream)

    def deactivate_impl(self) -> None:
        with self._cuda_current():
            self._free()

    def _free(self) -> None:
        """Release in reverse order of creation; safe to call on a partly activated runner and with frames still
        in flight (everything queued is waited for first, and their tickets become invalid)."""
        for stream in [self._stream] + [slot.stream for slot in self._slots]:
            if stream is not None:
                stream.synchronize()
        for slot in self._slots:
            for buffer in slot.buffers.values():
                buffer.device.free()
        self._slots.clear()  # drops the pinned host arrays, events and copy streams, which frees them
        self._tickets.clear()
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
        self._inputs.clear()
        self._outputs.clear()

    def _buffer(self, cuda: Any, slot: _Slot, name: str, size: int, dtype: np.dtype) -> _Buffer:
        # Growing frees the old allocation: safe, because a slot is only written once its last frame is collected.
        buffer = slot.buffers.get(name)
        if buffer is None or buffer.host.size < size:
            if buffer is not None:
                buffer.device.free()
            size = max(size, 1)  # a zero-byte allocation is an error in CUDA
            buffer = _Buffer(cuda.pagelocked_empty(size, dtype), cuda.mem_alloc(size * dtype.itemsize))
            slot.buffers[name] = buffer
        return buffer

    def _profile(self, name: str) -> str:
        lo, opt, hi = self._engine.get_tensor_profile_shape(name, 0)
        return f"min={tuple(lo)}, opt={tuple(opt)}, max={tuple(hi)}"

    @contextlib.contextmanager
    def _cuda_current(self) -> Iterator[None]:
        import pycuda.driver as cuda

        _primary_context().push()
        try:
            yield
        finally:
            cuda.Context.pop()


# ---------------------------------------------------------------------------------------------- helpers

def _require_tensorrt() -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise EngineError(f"the TensorRT backend cannot run here: {reason}")


@functools.cache
def _logger() -> Any:
    # One logger for the process: TensorRT requires it to outlive every builder, runtime and engine made with it.
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


@functools.cache
def _primary_context() -> Any:
    # Retained once and kept for the life of the process (as pycuda.autoprimaryctx does), so runners only push
    # and pop it and never release a context that TensorRT's own allocations still live in.
    import pycuda.driver as cuda

    cuda.init()
    return cuda.Device(0).retain_primary_context()


def _event(cuda: Any, blocking: bool = False) -> Any:
    # No timing: these events only order streams, and timing makes them slower. Blocking: collect's wait sleeps
    # instead of spinning a CPU core the capture thread needs (Jetsons have few).
    flags = int(cuda.event_flags.DISABLE_TIMING) | (int(cuda.event_flags.BLOCKING_SYNC) if blocking else 0)
    return cuda.Event(flags)


def _numpy_dtype(trt: Any, trt_dtype: Any, name: str) -> np.dtype:
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError:  # bfloat16, FP8, INT4 have no numpy type
        raise EngineError(f"engine tensor '{name}' has type {trt_dtype}, which numpy cannot hold; export the graph "
                          "with float32 or float16 inputs and outputs") from None


def _major_minor(version: str) -> tuple[int, int]:
    """'10.3.0.26' -> (10, 3); unparsable parts count as 0."""
    return _version(version)[:2]


def _version(version: str) -> tuple[int, int, int, int]:
    """'10.3.0.26' -> (10, 3, 0, 26), '11.1' -> (11, 1, 0, 0): major, minor, patch, build; unparsable parts count
    as 0, so versions written with fewer parts compare as their zero-padded form."""
    parts = [int("".join(c for c in part if c.isdigit()) or 0) for part in str(version).split(".")[:4]]
    return tuple(parts + [0] * (4 - len(parts)))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
