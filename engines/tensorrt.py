"""TensorRT: build a plan from a precision-annotated ONNX graph, and run it on an NVIDIA GPU.

Targets TensorRT 10.3 (JetPack 6.1/6.2, the oldest) through 11.x with one code path, written against the
documented Python API (see docs/tensorrt.md and /work/shared/TENSORRT_NOTES.md for the sources). It has
never been run in this project's development machines or CI: they have no GPU and cannot install TensorRT.
Its tests (tests/test_tensorrt.py, marker ``tensorrt``) run only where TensorRT and a GPU exist.

Precision lives in the ONNX graph: every network is strongly typed (FP16 by Cast nodes, INT8 by Q/DQ
nodes), so no FP16/INT8 builder flags are set; TensorRT 11 removed them.

``tensorrt`` and ``pycuda`` are imported inside the functions that need them, so importing this module
costs nothing on a CPU-only machine.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass
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
        return "TensorRT is not installed (pip install .[tensorrt] on a machine with an NVIDIA GPU)"
    except Exception as exc:  # the wheel is present but its libraries are not (e.g. libnvinfer missing)
        return f"TensorRT could not be imported: {_one_line(exc)}"
    version = getattr(trt, "__version__", "?")
    if _major_minor(version) < OLDEST_TENSORRT:
        return f"TensorRT {version} is too old; this project needs 10.3 or newer"
    try:
        import pycuda.driver as cuda
    except ImportError:
        return "pycuda is not installed (pip install .[tensorrt]; on Jetson build pycuda from source)"
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


def device_info() -> dict[str, str]:
    """TensorRT version and the GPU engines are built for (device 0), for manifests: an engine is tied to both
    unless built version- or hardware-compatible. Raises EngineError where TensorRT cannot run."""
    _require_tensorrt()
    import pycuda.driver as cuda
    import tensorrt as trt

    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return {"tensorrt_version": trt.__version__, "gpu_name": device.name(),
            "compute_capability": f"{major}.{minor}"}


def check_manifest(manifest: Mapping[str, Any], path: Path, device: Mapping[str, str]) -> None:
    """Refuse a plan built for another TensorRT version or GPU, before TensorRT fails on it less clearly.

    A plan is tied to both (TensorRT #2195, #2072: "Version tag does not match") unless it was built
    version-compatible (loads on later TensorRT versions of the same major) or hardware-compatible
    (``ampere_plus``: any GPU of compute capability 8.0 or newer).
    """
    rebuild = f"rebuild it on this machine with python -m export build --force --models {manifest.get('model', '?')}"
    options = manifest.get("tensorrt") or {}
    built_version = str(manifest.get("backend_version"))
    here_version = device["tensorrt_version"]
    if options.get("version_compatible"):
        if _major_minor(here_version)[0] != _major_minor(built_version)[0] or \
                _major_minor(here_version) < _major_minor(built_version):
            raise EngineError(f"engine {path} was built version-compatible with TensorRT {built_version}, which does "
                              f"not extend to TensorRT {here_version}; {rebuild}")
    elif built_version != here_version:
        raise EngineError(f"engine {path} was built with TensorRT {built_version}, this machine has {here_version}; {rebuild}")
    built = manifest.get("device") or {}
    if options.get("hardware_compatibility") == "ampere_plus":
        if _major_minor(device["compute_capability"]) < (8, 0):
            raise EngineError(f"engine {path} was built for Ampere or newer GPUs, this {device['gpu_name']} has "
                              f"compute capability {device['compute_capability']}; {rebuild}")
    elif (built.get("gpu_name"), built.get("compute_capability")) != (device["gpu_name"], device["compute_capability"]):
        raise EngineError(f"engine {path} was built for {built.get('gpu_name')} (compute capability "
                          f"{built.get('compute_capability')}), this GPU is {device['gpu_name']} "
                          f"({device['compute_capability']}); {rebuild}")


# ---------------------------------------------------------------------------------------------- build options

@dataclass(frozen=True)
class TensorRTOptions:
    """How to build a TensorRT engine for a graph with one input ``images`` of shape (N, 3, H, W).

    ``min_shape``/``opt_shape``/``max_shape`` form the optimization profile: the engine accepts any shape
    between min and max (per dimension) and is tuned for opt. Use ``TensorRTOptions.fixed(shape)`` for one
    size. ``dla_core`` runs layers on that DLA core, with GPU fallback for the rest (Jetson AGX Xavier/Orin
    only). ``version_compatible`` lets newer TensorRT runtimes load the engine; ``hardware_compatibility=
    "ampere_plus"`` lets other Ampere-or-newer GPUs load it; both cost speed. ``timing_cache`` is a file
    that is read (if present) and updated by every build, which makes rebuilds much faster.
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
                raise ValueError(f"{name}={value!r}: expected 4 positive integers (N, 3, H, W) for input "
                                 f"'{INPUT_NAME}'")
            object.__setattr__(self, name, shape)  # lists (from YAML) become tuples
            shapes[name] = shape
        for axis, (lo, opt, hi) in enumerate(zip(shapes["min_shape"], shapes["opt_shape"], shapes["max_shape"])):
            if not lo <= opt <= hi:
                raise ValueError(f"dimension {axis} of input '{INPUT_NAME}' must satisfy min <= opt <= max, got "
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

def build_engine(onnx_path: str | os.PathLike, options: TensorRTOptions) -> bytes:
    """Compile an ONNX graph into a serialized TensorRT engine (a plan) for this machine's GPU.

    Steps, each small, as Polygraphy's loaders do: create a strongly typed network, parse the ONNX file,
    configure the builder (workspace, optimization profile, DLA, compatibility, timing cache), build, and
    save the updated timing cache.
    """
    _require_tensorrt()
    import tensorrt as trt

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineError(f"ONNX file {onnx_path} not found; export it first with python -m export")
    logger = _logger()
    trt.init_libnvinfer_plugins(logger, "")  # before parsing: ONNX nodes named like a plugin become that plugin
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    if network is None:
        raise EngineError("TensorRT could not create a network; the TensorRT log above says why")
    # Builder, network and parser stay alive together until the build is done, as Polygraphy keeps them.
    parser = _parse_onnx(trt, network, logger, onnx_path)
    config = _create_config(trt, builder, network, options, onnx_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(
            f"TensorRT could not build an engine from {onnx_path}; the TensorRT log above says why. Common causes: "
            f"an operator TensorRT does not take (see docs/tensorrt.md), workspace_mib={options.workspace_mib} too "
            "small, or a DLA/compatibility option this GPU does not support")
    if options.timing_cache is not None:
        _save_timing_cache(config, options.timing_cache)
    del parser
    return bytes(plan)


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
    if options.timing_cache is not None:
        _load_timing_cache(config, options.timing_cache)
    return config


def _add_profile(builder: Any, network: Any, config: Any, options: TensorRTOptions, onnx_path: Path) -> None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [tensor.name for tensor in inputs]
    if names != [INPUT_NAME]:
        raise EngineError(f"{onnx_path} has inputs {names}; expected exactly one input '{INPUT_NAME}' "
                          "(N, 3, H, W), as python -m export writes")
    graph_shape = tuple(inputs[0].shape)
    if len(graph_shape) != 4:
        raise EngineError(f"input '{INPUT_NAME}' of {onnx_path} has shape {graph_shape}; expected (N, 3, H, W)")
    wanted = (options.min_shape, options.opt_shape, options.max_shape)
    for axis, dim in enumerate(graph_shape):
        if dim >= 0 and any(shape[axis] != dim for shape in wanted):  # -1 marks a dynamic dimension
            raise EngineError(
                f"input '{INPUT_NAME}' of {onnx_path} has fixed size {dim} in dimension {axis} (shape "
                f"{graph_shape}), but the options ask for min/opt/max {[s[axis] for s in wanted]}; change the "
                "options or export the graph with that dimension dynamic")
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *wanted)
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(f"TensorRT rejected the optimization profile min={options.min_shape}, "
                          f"opt={options.opt_shape}, max={options.max_shape} for {onnx_path}")


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


def _load_timing_cache(config: Any, path: Path) -> None:
    data = path.read_bytes() if path.is_file() else b""  # empty bytes: a new, empty cache
    cache = config.create_timing_cache(data)
    # ignore_mismatch=False: TensorRT's header warns that a cache from a device with other CUDA properties "may
    # lead to functional/performance bugs" (NvInfer.h, IBuilderConfig::setTimingCache); Polygraphy loads with
    # False too. A cache from another device is replaced by a fresh one, which this build then fills.
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is not None:
        atomic_write(path, bytes(cache.serialize()))  # atomic: builds running in parallel may share one cache


# ---------------------------------------------------------------------------------------------- run

@dataclass
class _Buffer:
    """A pinned host array and a device allocation of the same capacity (elements), grown on demand."""

    host: np.ndarray  # flat, page-locked, so copies to and from the GPU can be asynchronous
    device: Any  # pycuda.driver.DeviceAllocation


class TensorRTRunner(Runner):
    """Runs a TensorRT plan file on GPU 0 through named I/O tensors (``execute_async_v3``).

    ``version_compatible`` must be True for plans built with ``TensorRTOptions(version_compatible=True)``:
    such plans carry their own runtime code, which TensorRT only loads when allowed. ``dla_core`` must match
    the core a DLA plan was built for.

    CUDA context: the runner uses the device's *primary* context (the one the CUDA runtime, and therefore
    TensorRT, uses), retained once per process, and pushes it only while it works (activate, infer,
    deactivate), so it leaves no context current afterwards and works from whichever thread calls it
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
        self._buffers: dict[str, _Buffer] = {}

    @classmethod
    def from_engine(cls, plan_path: str | os.PathLike) -> "TensorRTRunner":
        """Load a built plan after checking its manifest: file hash, TensorRT version and GPU."""
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
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"TensorRT could not create an execution context for {self.plan_path} (out of GPU "
                              "memory?); the TensorRT log above says why")
        self._stream = cuda.Stream()
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = _numpy_dtype(trt, self._engine.get_tensor_dtype(name), name)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs)[name] = dtype

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pycuda.driver as cuda

        if set(feed) != set(self._inputs):
            raise EngineError(f"{self.name}: got inputs {sorted(feed)}, the engine takes {sorted(self._inputs)}")
        with self._cuda_current():
            for name, dtype in self._inputs.items():
                array = np.asarray(feed[name])
                if array.dtype != dtype:
                    raise EngineError(f"{self.name}: input '{name}' is {array.dtype}, the engine takes {dtype}; "
                                      f"convert it with .astype(np.{dtype.name})")
                if not self._context.set_input_shape(name, array.shape):
                    raise EngineError(f"{self.name}: input '{name}' has shape {array.shape}, outside the engine's "
                                      f"profile {self._profile(name)}; rebuild with other min/opt/max shapes")
                buffer = self._buffer(cuda, name, array.size, dtype)
                host = buffer.host[:array.size].reshape(array.shape)
                np.copyto(host, array)  # into pinned memory, whatever the caller's layout
                cuda.memcpy_htod_async(buffer.device, host, self._stream)
                self._context.set_tensor_address(name, int(buffer.device))
            shapes = {}
            for name, dtype in self._outputs.items():
                shapes[name] = tuple(self._context.get_tensor_shape(name))
                if any(d < 0 for d in shapes[name]):
                    raise EngineError(f"{self.name}: output '{name}' has a data-dependent shape {shapes[name]}, "
                                      "which this runner does not support")
                buffer = self._buffer(cuda, name, math.prod(shapes[name]), dtype)
                self._context.set_tensor_address(name, int(buffer.device))
            if not self._context.execute_async_v3(self._stream.handle):
                raise EngineError(f"{self.name}: TensorRT failed to enqueue inference; the TensorRT log above says why")
            results = {}
            for name, shape in shapes.items():
                results[name] = self._buffers[name].host[:math.prod(shape)].reshape(shape)
                cuda.memcpy_dtoh_async(results[name], self._buffers[name].device, self._stream)
            self._stream.synchronize()
        return {name: array.copy() for name, array in results.items()}  # the pinned buffers are reused next call

    def deactivate_impl(self) -> None:
        with self._cuda_current():
            self._free()

    def _free(self) -> None:
        """Release in reverse order of creation; safe to call on a partly activated runner."""
        if self._stream is not None:
            self._stream.synchronize()
        for buffer in self._buffers.values():
            buffer.device.free()
        self._buffers.clear()  # drops the pinned host arrays, which frees them
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
        self._inputs.clear()
        self._outputs.clear()

    def _buffer(self, cuda: Any, name: str, size: int, dtype: np.dtype) -> _Buffer:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.host.size < size:
            if buffer is not None:
                buffer.device.free()
            size = max(size, 1)  # a zero-byte allocation is an error in CUDA
            buffer = _Buffer(cuda.pagelocked_empty(size, dtype), cuda.mem_alloc(size * dtype.itemsize))
            self._buffers[name] = buffer
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


def _numpy_dtype(trt: Any, trt_dtype: Any, name: str) -> np.dtype:
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError:  # bfloat16, FP8, INT4 have no numpy type
        raise EngineError(f"engine tensor '{name}' has type {trt_dtype}, which numpy cannot hold; export the graph "
                          "with float32 or float16 inputs and outputs") from None


def _major_minor(version: str) -> tuple[int, int]:
    """'10.3.0.26' -> (10, 3); unparsable parts count as 0."""
    parts = [int("".join(c for c in part if c.isdigit()) or 0) for part in str(version).split(".")[:2]]
    return tuple(parts + [0] * (2 - len(parts)))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
