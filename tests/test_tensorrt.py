"""TensorRT backend.

Tests marked ``tensorrt`` need TensorRT and an NVIDIA GPU and skip elsewhere with the reason; they never
pass by pretending. The rest run everywhere: availability checks, lazy imports and option validation.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.base import EngineError
from engines.tensorrt import (TensorRTOptions, TensorRTRunner, Ticket, TicketQueue, build_engine, check_profile,
                              device_info, unavailable_reason)

ROOT = Path(__file__).resolve().parents[1]
REASON = unavailable_reason()


def needs_tensorrt(test):
    """Mark ``test`` as needing TensorRT and a GPU (``-m tensorrt``); skip it with the reason where they are absent."""
    test = pytest.mark.tensorrt(test)
    return pytest.mark.skipif(REASON is not None, reason=f"needs TensorRT and an NVIDIA GPU: {REASON}")(test)


PROFILE = TensorRTOptions(min_shape=(1, 3, 16, 16), opt_shape=(1, 3, 32, 32), max_shape=(2, 3, 64, 64),
                          workspace_mib=256)


def conv_relu_onnx(path: Path) -> Path:
    """A tiny graph with the project's contract: input ``images`` (N, 3, H, W) with dynamic N/H/W, output
    ``logits``; Conv 3x3 (4 classes) + Relu."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "weight", "bias"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["logits"])],
        "conv_relu",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")])
    # IR 8 / opset 17: old enough for TensorRT 10.3's parser.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def reference(onnx_path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images})[0]


def assert_plan_matches(plan: bytes, onnx_path: Path, folder: Path, seed: int, tolerance: float = 1e-2,
                        **runner_options) -> None:
    """Write ``plan``, run it on one random (1, 3, 32, 32) batch and compare with ONNX Runtime running ``onnx_path``.
    TF32 (on by default for FP32 convolutions on Ampere and newer) allows ~1e-3 relative error; FP16 more."""
    path = folder / f"plan_{seed}.plan"
    path.write_bytes(plan)
    images = np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with TensorRTRunner(path, **runner_options) as runner:
        np.testing.assert_allclose(runner.infer({"images": images})["logits"], reference(onnx_path, images),
                                   rtol=tolerance, atol=tolerance)


# ---------------------------------------------------------------------------------------------- run everywhere

def test_unavailable_reason_is_a_string_when_tensorrt_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail, as on a CPU machine
    unavailable_reason.cache_clear()
    try:
        reason = unavailable_reason()
    finally:
        unavailable_reason.cache_clear()
    assert isinstance(reason, str) and "TensorRT is not installed" in reason and "\n" not in reason
    assert "tensorrt-cu12" in reason or "comes with JetPack" in reason


def test_unavailable_reason_is_cached_and_never_raises():
    first = unavailable_reason()
    assert first is None or (isinstance(first, str) and first)
    assert unavailable_reason() is first


def test_importing_the_backend_imports_neither_tensorrt_nor_pycuda():
    # A fresh interpreter: in this one another test may already have imported them.
    code = ("import sys, engines.tensorrt; "
            "print(sorted(m for m in ('tensorrt', 'pycuda', 'pycuda.driver') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(REASON is None, reason="TensorRT is available here; this checks the error where it is not")
def test_build_and_runner_say_why_without_tensorrt(tmp_path):
    with pytest.raises(EngineError, match="cannot run here"):
        build_engine(conv_relu_onnx(tmp_path / "model.onnx"), PROFILE)
    with pytest.raises(EngineError, match="cannot run here"):
        device_info()
    runner = TensorRTRunner(tmp_path / "model.plan")  # constructing touches nothing
    with pytest.raises(EngineError, match="cannot run here"):
        runner.activate()
    assert not runner.is_active


def test_options_accept_a_valid_profile_and_normalize_it():
    options = TensorRTOptions(min_shape=[1, 3, 256, 256], opt_shape=(1, 3, 512, 512), max_shape=(4, 3, 1024, 1024),
                              timing_cache="cache/timing.bin", builder_optimization_level=5,
                              hardware_compatibility="ampere_plus", dla_core=0)
    assert options.min_shape == (1, 3, 256, 256)
    assert options.timing_cache == Path("cache/timing.bin")
    fixed = TensorRTOptions.fixed((1, 3, 512, 1024), version_compatible=True)
    assert fixed.min_shape == fixed.opt_shape == fixed.max_shape == (1, 3, 512, 1024)


@pytest.mark.parametrize("shapes, message", [
    (((1, 3, 64, 64), (1, 3, 32, 64), (1, 3, 128, 128)), r"dimension 2 .* min=64, opt=32, max=128"),
    (((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 32, 64)), r"dimension 2 .* min=64, opt=64, max=32"),
    (((2, 3, 64, 64), (1, 3, 64, 64), (2, 3, 64, 64)), r"dimension 0 .* min=2, opt=1, max=2"),
    (((1, 3, 64), (1, 3, 64, 64), (1, 3, 64, 64)), r"min_shape=\(1, 3, 64\): expected 4 positive integers"),
    (((1, 3, 0, 64), (1, 3, 64, 64), (1, 3, 64, 64)), r"min_shape=.*expected 4 positive integers"),
    (((1, 3, 64, 64), (1, 3, 64.0, 64), (1, 3, 64, 64)), r"opt_shape=.*expected 4 positive integers"),
])
def test_options_reject_bad_profiles(shapes, message):
    with pytest.raises(ValueError, match=message):
        TensorRTOptions(*shapes)


@pytest.mark.parametrize("field, value, message", [
    ("workspace_mib", 0, "workspace_mib=0: expected a positive number"),
    ("dla_core", -1, "dla_core=-1"),
    ("hardware_compatibility", "turing_plus", "known: None, 'ampere_plus'"),
    ("builder_optimization_level", 6, r"builder_optimization_level=6: expected None .* or 0..5"),
])
def test_options_reject_bad_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        TensorRTOptions.fixed((1, 3, 64, 64), **{field: value})


# The double-buffering rules (which slot, how many in flight, in what order) are plain Python: tested here.
def test_tickets_alternate_slots_and_hold_at_most_two():
    tickets = TicketQueue(depth=2)
    first, second = tickets.issue(), tickets.issue()
    assert (first, second) == (Ticket(slot=0, sequence=0), Ticket(slot=1, sequence=1))
    with pytest.raises(EngineError, match=r"2 frames already in flight \(tickets #0, #1\); collect ticket #0 first"):
        tickets.next_slot()
    tickets.retire(first)
    assert tickets.outstanding == 1 and tickets.next_slot() == 0  # the collected frame's slot is free again
    assert tickets.issue() == Ticket(slot=0, sequence=2)


def test_tickets_are_collected_once_in_submission_order():
    tickets = TicketQueue(depth=2)
    first, second = tickets.issue(), tickets.issue()
    with pytest.raises(EngineError, match="ticket #1 collected before ticket #0; collect in submission order"):
        tickets.check(second)
    tickets.retire(first)
    with pytest.raises(EngineError, match="ticket #0 was already collected"):
        tickets.retire(first)
    for foreign in (Ticket(slot=1, sequence=5), Ticket(slot=0, sequence=1)):  # never issued; wrong slot
        with pytest.raises(EngineError, match="not issued by this runner"):
            tickets.check(foreign)
    with pytest.raises(EngineError, match="takes a ticket returned by this runner's submit"):
        tickets.check({"logits": None})  # e.g. the outputs of the synchronous default
    tickets.retire(second)
    assert tickets.outstanding == 0


def test_cleared_tickets_stay_invalid():
    tickets = TicketQueue(depth=2)
    stale = tickets.issue()
    tickets.clear()  # what deactivate does with frames still in flight
    assert tickets.outstanding == 0
    fresh = tickets.issue()
    assert fresh.sequence == 1 and fresh.slot == 1
    with pytest.raises(EngineError, match="already collected, or submitted before the runner was deactivated"):
        tickets.check(stale)
    tickets.retire(fresh)


def test_runner_refuses_submit_and_collect_before_activate(tmp_path):
    runner = TensorRTRunner(tmp_path / "model.plan")  # touches neither TensorRT nor CUDA
    with pytest.raises(EngineError, match=r"call activate\(\) .* before submit\(\)"):
        runner.submit({"images": np.zeros((1, 3, 16, 16), np.float32)})
    with pytest.raises(EngineError, match="not issued by this runner"):
        runner.collect(Ticket(slot=0, sequence=0))


# ---------------------------------------------------------------------------------------------- TensorRT + GPU

@pytest.fixture(scope="module")
def conv_relu(tmp_path_factory):
    """The tiny graph built once into an engine with a dynamic profile: (onnx path, plan path, options with
    the timing cache file the build wrote)."""
    folder = tmp_path_factory.mktemp("tensorrt")
    onnx_path = conv_relu_onnx(folder / "model.onnx")
    cache = folder / "timing.cache"
    options = TensorRTOptions(PROFILE.min_shape, PROFILE.opt_shape, PROFILE.max_shape,
                              workspace_mib=PROFILE.workspace_mib, timing_cache=cache)
    plan_path = folder / "model.plan"
    plan_path.write_bytes(build_engine(onnx_path, options))
    return onnx_path, plan_path, options


@needs_tensorrt
def test_engine_matches_onnxruntime_across_the_profile(conv_relu):
    onnx_path, plan_path, _ = conv_relu
    rng = np.random.default_rng(1)
    # Small first, then the profile's maximum: the runner must grow its buffers, then shrink its views again.
    shapes = [(1, 3, 16, 24), (2, 3, 64, 64), (1, 3, 32, 32)]
    with TensorRTRunner(plan_path) as runner:
        for shape in shapes:
            images = rng.standard_normal(shape).astype(np.float32)
            logits = runner.infer({"images": images})["logits"]
            assert logits.shape == (shape[0], 4, shape[2], shape[3])
            # TF32 (on by default for FP32 convolutions on Ampere and newer) allows ~1e-3 relative error.
            np.testing.assert_allclose(logits, reference(onnx_path, images), rtol=1e-2, atol=1e-2)
    assert not runner.is_active


@needs_tensorrt
def test_runner_rejects_shapes_outside_the_profile_and_wrong_dtypes(conv_relu):
    _, plan_path, _ = conv_relu
    with TensorRTRunner(plan_path) as runner:
        with pytest.raises(EngineError, match="outside the engine's profile"):
            runner.infer({"images": np.zeros((1, 3, 128, 128), np.float32)})
        with pytest.raises(EngineError, match="the engine takes float32"):
            runner.infer({"images": np.zeros((1, 3, 32, 32), np.float64)})
        with pytest.raises(EngineError, match="got inputs"):
            runner.infer({"image": np.zeros((1, 3, 32, 32), np.float32)})


@needs_tensorrt
def test_timing_cache_is_written_and_reused(conv_relu, tmp_path):
    from engines.tensorrt import build, device_info, timing_cache_file

    onnx_path, _, options = conv_relu
    cache = timing_cache_file(options.timing_cache, device_info())
    assert cache.is_file() and cache.stat().st_size > 0, "the first build must write this device's timing cache"
    again = build(onnx_path, options)  # loads the cache, builds, merges it back
    # A cache TensorRT rejected would still leave a file behind; only "loaded" says its entries were used.
    assert (again.timing_cache, again.timing_cache_status) == (cache, "loaded")
    assert_plan_matches(again.plan, onnx_path, tmp_path, seed=2)


@needs_tensorrt
def test_parallel_builds_keep_every_entry_of_the_shared_timing_cache(tmp_path):
    import threading

    from engines.tensorrt import build

    onnx_path = conv_relu_onnx(tmp_path / "model.onnx")
    base = tmp_path / "timing.cache"
    results, errors = [], []

    def one(shape):
        try:
            results.append(build(onnx_path, TensorRTOptions.fixed(shape, workspace_mib=256, timing_cache=base)))
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=((1, 3, 16 * (i + 1), 32),)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 2
    cache = results[0].timing_cache
    assert all(result.timing_cache == cache for result in results) and cache.is_file()
    assert not list(tmp_path.glob("*.tmp"))  # both writes completed under the lock
    assert build(onnx_path, TensorRTOptions.fixed((1, 3, 16, 32), workspace_mib=256,
                                                  timing_cache=base)).timing_cache_status == "loaded"


@needs_tensorrt
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupted_plan_raises_engine_error(conv_relu, tmp_path, damage):
    _, plan_path, _ = conv_relu
    plan = plan_path.read_bytes()
    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"not a TensorRT plan " * 64 if damage == "garbage" else plan[: len(plan) // 2])
    runner = TensorRTRunner(bad)
    with pytest.raises(EngineError, match="python -m export build --force"):
        runner.activate()
    assert not runner.is_active
    with TensorRTRunner(plan_path) as good:  # a failed activation leaves no CUDA context behind
        good.infer({"images": np.zeros((1, 3, 16, 16), np.float32)})


@needs_tensorrt
def test_options_that_contradict_the_graph_or_device_raise_engine_error(conv_relu, tmp_path):
    import tensorrt as trt

    onnx_path, _, _ = conv_relu
    with pytest.raises(EngineError, match="not found"):
        build_engine(tmp_path / "missing.onnx", PROFILE)
    if trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores == 0:
        with pytest.raises(EngineError, match="no DLA"):
            build_engine(onnx_path, TensorRTOptions.fixed((1, 3, 32, 32), dla_core=0))


def frame(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@needs_tensorrt
def test_submit_two_then_collect_both_equals_two_infers(conv_relu):
    _, plan_path, _ = conv_relu
    rng = np.random.default_rng(3)
    first, second = frame(rng, (1, 3, 32, 32)), frame(rng, (2, 3, 48, 64))  # different shapes: a mix-up shows
    with TensorRTRunner(plan_path) as runner:
        expected = [runner.infer({"images": first})["logits"], runner.infer({"images": second})["logits"]]
        tickets = [runner.submit({"images": first}), runner.submit({"images": second})]
        with pytest.raises(EngineError, match="collect ticket #.* first"):
            runner.submit({"images": first})  # a third frame while two are in flight
        with pytest.raises(EngineError, match="collect in submission order"):
            runner.collect(tickets[1])
        with pytest.raises(EngineError, match="not collected"):
            runner.infer({"images": first})
        collected = [runner.collect(ticket)["logits"] for ticket in tickets]
    for got, want in zip(collected, expected):
        assert got.shape == want.shape
        # Same engine, same shapes: only a nondeterministic tactic could make these differ, and then barely.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_tensorrt
def test_interleaved_submit_and_collect_across_shapes_matches_onnxruntime(conv_relu):
    onnx_path, plan_path, _ = conv_relu
    rng = np.random.default_rng(4)
    # Ten frames of changing shapes within the profile (min (1,3,16,16), max (2,3,64,64)): both buffer sets grow
    # and shrink their views while the other set's frame is in flight.
    shapes = [(1, 3, 16, 16), (2, 3, 64, 64), (1, 3, 32, 48), (2, 3, 16, 64), (1, 3, 64, 16),
              (2, 3, 40, 24), (1, 3, 64, 64), (1, 3, 16, 16), (2, 3, 32, 32), (1, 3, 48, 56)]
    frames = [frame(rng, shape) for shape in shapes]
    with TensorRTRunner(plan_path) as runner:
        pending = []
        for n, images in enumerate(frames + [None]):
            if images is not None:
                caller_buffer = images.copy()
                pending.append((n, runner.submit({"images": caller_buffer})))
                caller_buffer[...] = np.nan  # the caller reuses its frame buffer at once: submit must have copied
            if len(pending) == 2 or images is None:
                done, ticket = pending.pop(0)
                logits = runner.collect(ticket)["logits"]
                assert logits.shape == (shapes[done][0], 4, shapes[done][2], shapes[done][3])
                np.testing.assert_allclose(logits, reference(onnx_path, frames[done]), rtol=1e-2, atol=1e-2)
        assert not pending


@needs_tensorrt
def test_deactivate_with_frames_in_flight_frees_them_and_invalidates_their_tickets(conv_relu):
    onnx_path, plan_path, _ = conv_relu
    images = frame(np.random.default_rng(5), (2, 3, 64, 64))
    runner = TensorRTRunner(plan_path).activate()
    tickets = [runner.submit({"images": images}), runner.submit({"images": images})]
    runner.deactivate()  # waits for both frames, then frees both buffer sets and streams
    assert not runner.is_active
    with pytest.raises(EngineError, match="submitted before the runner was deactivated"):
        runner.collect(tickets[0])
    with runner:  # activating again starts from clean buffer sets and tickets
        np.testing.assert_allclose(runner.infer({"images": images})["logits"], reference(onnx_path, images),
                                   rtol=1e-2, atol=1e-2)


@needs_tensorrt
def test_device_info_describes_the_gpu():
    info = device_info()
    assert set(info) == {"tensorrt_version", "gpu_name", "compute_capability", "os", "cpu_arch", "gpu_kind"}
    major, minor = info["compute_capability"].split(".")
    assert major.isdigit() and minor.isdigit() and info["gpu_name"]


# Manifest checks run everywhere: they compare what a plan was built for with what this machine has.
ORIN = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7",
        "os": "Linux", "cpu_arch": "aarch64", "gpu_kind": "integrated"}
RTX = {"tensorrt_version": "10.3.0", "gpu_name": "RTX 4090", "compute_capability": "8.9",
       "os": "Linux", "cpu_arch": "x86_64", "gpu_kind": "discrete"}


def plan_manifest(device=ORIN, version="10.3.0", **tensorrt_options):
    return {"model": "bisenetv2", "backend": "tensorrt", "backend_version": version,
            "device": {k: v for k, v in device.items() if k != "tensorrt_version"},
            "tensorrt": {"version_compatible": False, "hardware_compatibility": None, **tensorrt_options}}


@pytest.mark.parametrize("manifest, device, message", [
    (plan_manifest(), {**ORIN, "tensorrt_version": "10.13.0"}, "built with TensorRT 10.3.0, this machine has 10.13.0"),
    (plan_manifest(), {**ORIN, "gpu_name": "Xavier", "compute_capability": "7.2"},
     "built for Orin (compute capability 8.7), this GPU is Xavier (7.2)"),
    # Version compatibility promises later runtimes only: to the patch and build number, and never backwards.
    (plan_manifest(version="10.3.0.30", version_compatible=True), {**ORIN, "tensorrt_version": "10.3.0.26"},
     "runs on the same or later TensorRT versions only, not on this machine's older 10.3.0.26"),
    (plan_manifest(version="11.1.0", version_compatible=True), {**ORIN, "tensorrt_version": "10.16.1"},
     "not on this machine's older 10.16.1"),
    (plan_manifest(version="8.6.1", version_compatible=True), {**ORIN, "tensorrt_version": "11.1.0"},
     "only 8 -> 10, 10 -> 11, not 8 -> 11"),
    (plan_manifest(hardware_compatibility="ampere_plus"), {**ORIN, "gpu_name": "Xavier", "compute_capability": "7.2"},
     "built for Ampere or newer GPUs"),
    # Platforms: no option makes a plan portable across them, hardware compatibility included.
    (plan_manifest(RTX, hardware_compatibility="ampere_plus"), ORIN,
     "built on Linux x86_64 with a discrete GPU, this machine is Linux aarch64 with a Jetson's integrated GPU"),
    (plan_manifest({**RTX, "cpu_arch": "aarch64"}, version_compatible=True, hardware_compatibility="ampere_plus"),
     ORIN, "with a discrete GPU, this machine is Linux aarch64 with a Jetson's integrated GPU"),
    (plan_manifest({**RTX, "os": "Windows", "cpu_arch": "AMD64"}), RTX, "built on Windows AMD64"),
    ({**plan_manifest(), "device": {"gpu_name": "Orin", "compute_capability": "8.7"}}, ORIN,
     "records no build platform"),
])
def test_plan_built_for_another_machine_is_refused(manifest, device, message):
    from engines.tensorrt import check_manifest

    with pytest.raises(EngineError, match="rebuild it on this machine") as info:
        check_manifest(manifest, Path("fp16.plan"), device)
    assert message in str(info.value)


@pytest.mark.parametrize("manifest, device", [
    (plan_manifest(), ORIN),
    (plan_manifest(version="10.3.0"), {**ORIN, "tensorrt_version": "10.3.0.0"}),  # the same version, spelt longer
    (plan_manifest(version_compatible=True), {**ORIN, "tensorrt_version": "10.16.1"}),
    (plan_manifest(version="10.3.0.26", version_compatible=True), {**ORIN, "tensorrt_version": "10.3.0.30"}),
    # TensorRT 10 version-compatible plans run on TensorRT 11 (11.4.1 Support Matrix, Engine Portability).
    (plan_manifest(version_compatible=True), {**ORIN, "tensorrt_version": "11.1.0"}),
    (plan_manifest(RTX, hardware_compatibility="ampere_plus"), {**RTX, "gpu_name": "A100", "compute_capability": "8.0"}),
    (plan_manifest(RTX, version_compatible=True, hardware_compatibility="ampere_plus"),
     {**RTX, "tensorrt_version": "11.4.1", "gpu_name": "H100", "compute_capability": "9.0"}),
])
def test_plan_for_this_machine_is_accepted(manifest, device):
    from engines.tensorrt import check_manifest

    check_manifest(manifest, Path("fp16.plan"), device)


def test_host_platform_names_os_cpu_and_gpu_kind():
    import platform

    from engines.tensorrt import host_platform

    assert host_platform(True) == {"os": platform.system(), "cpu_arch": platform.machine(), "gpu_kind": "integrated"}
    assert host_platform(False)["gpu_kind"] == "discrete"


# embed_pre_post: the TensorRT-bound graph takes uint8 frames (N, H, W, 3) and returns a uint8 class map.
def test_profile_of_an_embedded_pre_post_graph_is_for_its_frames():
    from export.compile.backends import tensorrt_profile
    from export.config import InputSize, ModelConfig

    size = InputSize(size=[64, 96], min=[32, 64], max=[128, 192])
    plain = tensorrt_profile(ModelConfig("bisenetv2", input=size))
    assert plain == {"input_name": "images", "min_shape": (1, 3, 32, 64), "opt_shape": (1, 3, 64, 96),
                     "max_shape": (1, 3, 128, 192)}
    embedded = tensorrt_profile(ModelConfig("bisenetv2", input=size, embed_pre_post=True))
    assert embedded == {"input_name": "frames", "min_shape": (1, 32, 64, 3), "opt_shape": (1, 64, 96, 3),
                        "max_shape": (1, 128, 192, 3)}
    options = TensorRTOptions(**embedded)
    # What the parsed network of an embedded graph looks like: one input 'frames', N/H/W dynamic, 3 channels last.
    check_profile(["frames"], (-1, -1, -1, 3), options, Path("fp16.onnx"))
    with pytest.raises(EngineError, match=r"has inputs \['images'\]; the options profile exactly one input 'frames'"):
        check_profile(["images"], (-1, 3, -1, -1), options, Path("fp16.onnx"))
    with pytest.raises(EngineError, match="fixed size 3 in dimension 3"):  # a channels-first profile on frames
        check_profile(["frames"], (-1, -1, -1, 3), TensorRTOptions(**{**plain, "input_name": "frames"}),
                      Path("fp16.onnx"))


def test_embedded_pre_post_graph_passes_tensorrt_type_rules_and_computes_the_class_map(tmp_path):
    import onnxruntime as ort

    from export.compile.compat import check_tensorrt_compat
    from export.compile.pre_post import embed_pre_post

    onnx_path = conv_relu_onnx(tmp_path / "model.onnx")
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    embedded = embed_pre_post(onnx.load(onnx_path), mean, std)
    for version in ("10.3", "11.1"):
        assert check_tensorrt_compat(embedded, version) == [], version
    frames = np.random.default_rng(0).integers(0, 256, (1, 16, 24, 3), dtype=np.uint8)
    session = ort.InferenceSession(embedded.SerializeToString(), providers=["CPUExecutionProvider"])
    classes = session.run(["classes"], {"frames": frames})[0]
    images = ((frames.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    assert classes.dtype == np.uint8
    np.testing.assert_array_equal(classes, reference(onnx_path, images).argmax(1))
def test_ampere_plus_is_refused_before_building_on_an_older_gpu():
    from engines.tensorrt import build_problem

    options = TensorRTOptions.fixed((1, 3, 64, 64), hardware_compatibility="ampere_plus")
    xavier = {**ORIN, "gpu_name": "Xavier", "compute_capability": "7.2"}
    assert "only on Ampere or newer GPUs" in build_problem(options, xavier)
    assert build_problem(options, ORIN) is None and build_problem(TensorRTOptions.fixed((1, 3, 64, 64)), xavier) is None


# DLA: which precisions it can run, and where a build's layers went (plain Python over what TensorRT reports).
@pytest.mark.parametrize("precision, refused", [("fp32", True), ("fp16", False), ("int8", False)])
def test_dla_refuses_precisions_it_cannot_run(precision, refused):
    from engines.tensorrt import dla_precision_problem

    problem = dla_precision_problem(precision, 0)
    assert (problem is not None) == refused
    if refused:
        assert "every layer would fall back to the GPU" in problem and "--precisions fp16,int8" in problem
    assert dla_precision_problem(precision, None) is None


def test_dla_report_names_the_layers_that_fall_back_to_the_gpu():
    import json

    from engines.tensorrt import dla_problem, dla_report, dla_summary, engine_layers

    # The inspector's two documented shapes: names only (LAYER_NAMES_ONLY), or objects (DETAILED).
    names_only = json.dumps({"Layers": ["images to nvm", "{ForeignNode[conv1...relu3]}", "logits from nvm"]})
    detailed = json.dumps({"Layers": [{"Name": "{ForeignNode[conv1...relu3]}", "LayerType": "DLA"},
                                      {"Name": "resize", "LayerType": "Resize"}], "Bindings": ["images", "logits"]})
    assert [layer["name"] for layer in engine_layers(names_only)][1] == "{ForeignNode[conv1...relu3]}"
    assert engine_layers(detailed)[1] == {"name": "resize", "type": "Resize"}
    assert engine_layers("not json") == []
    placement = [("conv1", True), ("relu1", True), ("resize", False), ("argmax", False)]
    report = dla_report(0, placement, detailed)
    assert (report["on_dla"], report["network_layers"], report["gpu_fallback"]) == (2, 4, ["resize", "argmax"])
    assert dla_summary(report) == "DLA core 0: 2 of 4 layers on DLA; on the GPU: resize, argmax"
    assert dla_problem(report) is None
    nothing = dla_report(1, [("conv1", False), ("relu1", False)], names_only)
    assert "none of the 2 layers can run on DLA" in dla_problem(nothing)


def test_build_time_parity_runs_the_plan_as_it_was_built(tmp_path):
    from export.compile.backends import verification_runner
    from export.config import TensorRTConfig

    runner = verification_runner(tmp_path / "fp16.plan.verify", TensorRTConfig(dla_core=1, version_compatible=True))
    assert (runner.dla_core, runner.version_compatible) == (1, True)  # constructing touches neither TensorRT nor CUDA


# Timing caches: one file per device, merged under a lock.
def test_timing_cache_file_is_keyed_by_device(tmp_path):
    from engines.tensorrt import timing_cache_file

    orin = timing_cache_file(tmp_path / "timing.cache", ORIN)
    assert orin == tmp_path / "timing.orin-sm87-trt10.3.0-linux-aarch64.cache"
    assert timing_cache_file(tmp_path / "timing.cache", RTX) == tmp_path / "timing.rtx-4090-sm89-trt10.3.0-linux-x86_64.cache"
    assert timing_cache_file(tmp_path / "timing.cache", {**ORIN, "tensorrt_version": "10.3.0.30"}) != orin


class RecordedCache:
    """Stands in for ITimingCache's two calls used here, combine and serialize (NvInferRuntime.h), to test the
    order of our own steps: lock, read, merge, write. It computes nothing of TensorRT's."""

    def __init__(self, entries):
        self.entries = set(entries)

    def combine(self, other, ignore_mismatch):
        assert ignore_mismatch is True  # as Polygraphy merges
        self.entries |= other.entries
        return True

    def serialize(self):
        return ",".join(sorted(self.entries)).encode()


def load_recorded(data: bytes) -> RecordedCache:
    return RecordedCache(data.decode().split(",") if data else [])


def test_parallel_builds_merge_their_timing_caches_instead_of_replacing_them(tmp_path):
    import threading

    from engines.tensorrt import save_timing_cache

    path = tmp_path / "timing.orin.cache"
    save_timing_cache(RecordedCache({"conv 3x3"}), path, load_recorded)
    barrier = threading.Barrier(4)

    def build(tactic):
        barrier.wait()  # four builds finishing at once
        assert save_timing_cache(RecordedCache({tactic}), path, load_recorded)

    threads = [threading.Thread(target=build, args=(f"layer {i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert load_recorded(path.read_bytes()).entries == {"conv 3x3", "layer 0", "layer 1", "layer 2", "layer 3"}
    assert not list(tmp_path.glob("*.tmp"))


def test_file_lock_excludes_other_holders(tmp_path):
    import threading
    import time

    from engines.tensorrt import file_lock

    events = []

    def hold(name):
        with file_lock(tmp_path / "timing.cache"):
            events.append(f"{name} in")
            time.sleep(0.05)
            events.append(f"{name} out")

    threads = [threading.Thread(target=hold, args=(n,)) for n in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert events in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


# ---------------------------------------------------------------------------------------------- TensorRT + GPU: the
# options as the device meets them, and the runner driven the way the video runtime drives it.

@needs_tensorrt
def test_submit_and_collect_from_threads_other_than_the_one_that_activated(conv_relu):
    import threading

    onnx_path, plan_path, _ = conv_relu
    rng = np.random.default_rng(6)
    frames = [frame(rng, (1, 3, 32, 32)) for _ in range(6)]
    runner = TensorRTRunner(plan_path).activate()  # the main thread activates, as runtime/ does before its threads
    outputs, errors = {}, []

    def inference_thread():  # like runtime/pipeline.py's: submit frame n+1, then collect frame n
        try:
            pending = []
            for n, images in enumerate(frames):
                pending.append((n, runner.submit({"images": images})))
                if len(pending) == 2:
                    done, ticket = pending.pop(0)
                    outputs[done] = runner.collect(ticket)["logits"]
            for done, ticket in pending:
                outputs[done] = runner.collect(ticket)["logits"]
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    worker = threading.Thread(target=inference_thread)
    worker.start()
    worker.join(timeout=60)
    # A frame submitted on one thread and collected on another (one call at a time, as the runner's contract says).
    ticket = []
    submitter = threading.Thread(target=lambda: ticket.append(runner.submit({"images": frames[0]})))
    submitter.start()
    submitter.join(timeout=60)
    handed_over = {}
    collector = threading.Thread(target=lambda: handed_over.update(runner.collect(ticket[0])))
    collector.start()
    collector.join(timeout=60)
    runner.deactivate()  # back on the main thread
    assert not errors, errors
    for n, images in enumerate(frames):
        np.testing.assert_allclose(outputs[n], reference(onnx_path, images), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(handed_over["logits"], outputs[0], rtol=1e-5, atol=1e-5)


@needs_tensorrt
def test_version_compatible_plan_loads_and_matches_onnxruntime(tmp_path):
    onnx_path = conv_relu_onnx(tmp_path / "model.onnx")
    plan = build_engine(onnx_path, TensorRTOptions.fixed((1, 3, 32, 32), workspace_mib=256, version_compatible=True))
    assert_plan_matches(plan, onnx_path, tmp_path, seed=7, version_compatible=True)  # allows the lean runtime's code


@needs_tensorrt
def test_hardware_compatible_plan_builds_on_ampere_or_is_refused_before_building(tmp_path):
    from engines.tensorrt import _version

    onnx_path = conv_relu_onnx(tmp_path / "model.onnx")
    options = TensorRTOptions.fixed((1, 3, 32, 32), workspace_mib=256, hardware_compatibility="ampere_plus")
    if _version(device_info()["compute_capability"])[:2] < (8, 0):
        with pytest.raises(EngineError, match="only on Ampere or newer GPUs"):
            build_engine(onnx_path, options)
        return
    assert_plan_matches(build_engine(onnx_path, options), onnx_path, tmp_path, seed=8)


def conv_relu_fp16_onnx(path: Path) -> Path:
    """conv_relu in FP16 behind casts (a strongly typed FP16 graph, as the fp16 precision writes them): what DLA runs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(conv_relu_onnx(path.with_name("fp32_" + path.name)))
    onnx.save(convert_float_to_float16(model, keep_io_types=True), path)
    return path


@needs_tensorrt
def test_dla_build_reports_its_placement_and_runs_on_the_dla_core(tmp_path):
    import tensorrt as trt

    from engines.tensorrt import build

    if trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores == 0:
        pytest.skip(f"this {device_info()['gpu_name']} has no DLA core (Jetson AGX Xavier / AGX Orin have them)")
    onnx_path = conv_relu_fp16_onnx(tmp_path / "fp16.onnx")
    built = build(onnx_path, TensorRTOptions.fixed((1, 3, 32, 32), workspace_mib=256, dla_core=0))
    assert built.dla["on_dla"] > 0 and built.dla["engine_layers"], built.dla
    assert_plan_matches(built.plan, onnx_path, tmp_path, seed=9, tolerance=2e-2, dla_core=0)


@needs_tensorrt
def test_embedded_pre_post_engine_takes_frames_and_returns_the_class_map(tmp_path):
    import onnxruntime as ort

    from export.compile.pre_post import embed_pre_post

    onnx_path = conv_relu_onnx(tmp_path / "model.onnx")
    embedded = tmp_path / "embedded.onnx"
    onnx.save(embed_pre_post(onnx.load(onnx_path), [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]), embedded)
    options = TensorRTOptions(min_shape=(1, 16, 16, 3), opt_shape=(1, 32, 32, 3), max_shape=(1, 64, 64, 3),
                              workspace_mib=256, input_name="frames")
    (tmp_path / "embedded.plan").write_bytes(build_engine(embedded, options))
    frames = np.random.default_rng(10).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    want = ort.InferenceSession(str(embedded), providers=["CPUExecutionProvider"]).run(["classes"], {"frames": frames})[0]
    with TensorRTRunner(tmp_path / "embedded.plan") as runner:
        got = runner.infer({"frames": frames})["classes"]
    assert got.dtype == np.uint8 and got.shape == (1, 32, 48)
    assert (got == want).mean() > 0.99  # TF32 may flip a near-tie


def test_install_hint_says_per_platform_what_to_install():
    import tomllib

    from engines.tensorrt import install_hint

    jetson, desktop = install_hint(True), install_hint(False)
    assert "comes with JetPack" in jetson and "--system-site-packages" in jetson and "never pip install tensorrt" in jetson
    assert ".[tensorrt-cu12]" in desktop and ".[tensorrt-cu13]" in desktop
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # Each TensorRT requirement is pinned to one CUDA major's wheel and below the next TensorRT major.
    assert extras["tensorrt-cu12"][0].startswith("tensorrt-cu12>=10.3,") and "<12" in extras["tensorrt-cu12"][0]
    assert extras["tensorrt-cu13"][0].startswith("tensorrt-cu13>=") and "<12" in extras["tensorrt-cu13"][0]
    assert not any(r.split(">")[0].split("=")[0].strip() == "tensorrt" for rs in extras.values() for r in rs)
    assert extras["jetson"] == ["pycuda>=2025.1.2"]
