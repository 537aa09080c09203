"""Serving: the Triton model repository ``python -m export triton`` writes, parsed with Triton's own
ModelConfig schema (tritonclient's model_config_pb2), served by a real Triton Inference Server on 127.0.0.1
(the nvidia-pytriton wheel's tritonserver, in .venv-triton) and queried over HTTP and gRPC against the local
engine; the video runtime as its client (``--engine triton://``), through a server restart and with four
clients at once; DeepStream's nvinfer configs against nvinfer's key list. Every server a test starts is
stopped by it."""
from __future__ import annotations

import fcntl
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from benchmarks.triton_load import run_clients, synthetic
from engines.manifest import read_manifest
from engines.onnxruntime import OnnxRuntimeRunner
from engines.triton import DEFAULT_VENV, TritonServer, remote_manifest
from export.__main__ import main as export_main
from export.config import load_pipeline
from export.serve.triton import MANIFEST_PARAMETER, config_text
from helpers import ROOT, cli, tiny_pipeline
from runtime.engine import SegmentationEngine
from runtime.sources import open_source

MODELS = [{"name": "bisenetv2", "num_classes": 4, "precisions": ["fp32"], "input": {"size": [64, 64]}},
          {"name": "segformer_b0", "num_classes": 4, "precisions": ["fp32"], "embed_pre_post": True,
           "input": {"size": [64, 64]}}]
PYTHON_MODELS = ["bisenetv2_fp32_python", "segformer_b0_fp32_python"]


def triton_venv() -> Path:
    """The server's own environment, created by the Makefile's target on first use (CI's make test does it
    first; pytest-xdist workers wait for each other)."""
    with open("/tmp/segdeploy-triton-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(["make", "--no-print-directory", ".venv-triton/.installed"], cwd=ROOT,
                              capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"make .venv-triton/.installed failed:\n{done.stderr[-2000:]}"
    return DEFAULT_VENV


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """A tiny build (host-side and embedded pre/post-processing, both backends) and its model repository."""
    folder = tmp_path_factory.mktemp("triton")
    config = tiny_pipeline(folder, models=MODELS, backends=["onnxruntime", "tensorrt"],
                           batch={"min": 1, "opt": 2, "max": 4}, triton={"preferred_batch_size": [2, 4]})
    assert export_main(["build", "--config", config]) == 0
    r = cli("triton", "--config", config, "--out", str(folder / "repo"))
    assert r.returncode == 0, r.stderr
    return folder, config, folder / "repo", r.stdout


@pytest.fixture(scope="module")
def server(repository):
    _, _, repo, _ = repository
    # Only the Python-backend models: this tritonserver build has no ONNX Runtime or TensorRT backend.
    with TritonServer(repo, models=PYTHON_MODELS, venv=triton_venv()) as running:
        yield running


def parse(folder: Path) -> mc.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def engine_of(repository, model: str) -> Path:
    return repository[0] / "out" / model / "onnxruntime" / "fp32.engine.onnx"


# The repository, against Triton's schema and the manifests ----------------------------------------------
def test_every_config_parses_with_tritons_schema_and_matches_the_manifest(repository):
    folder, config, repo, stdout = repository
    pipeline = load_pipeline(config)
    names = sorted(p.name for p in repo.iterdir())
    assert names == ["bisenetv2_fp32_onnxruntime", "bisenetv2_fp32_python", "segformer_b0_fp32_onnxruntime",
                     "segformer_b0_fp32_python"]
    assert stdout.count("skipped") == 2 and "no plan" in stdout  # the TensorRT-bound graphs: no TensorRT here
    for name in names:
        cfg = parse(repo / name)
        model = name.split("_fp32_")[0]
        manifest = read_manifest(engine_of(repository, model))
        assert cfg.name == name and cfg.max_batch_size == pipeline.batch.max == 4
        if name.endswith("_python"):
            assert cfg.backend == "python" and not cfg.platform
            assert sorted(p.name for p in (repo / name / "1").iterdir()) == ["model.onnx", "model.onnx.manifest.json",
                                                                              "model.py"]
            assert (repo / name / "1" / "model.onnx").read_bytes() == engine_of(repository, model).read_bytes()
        else:
            assert cfg.backend == "onnxruntime" and cfg.default_model_filename == "model.onnx"
            assert sorted(p.name for p in (repo / name / "1").iterdir()) == ["model.onnx"]
        (tin,), (tout,) = cfg.input, cfg.output
        h, w = manifest["input"]["size"]
        assert tin.name == manifest["input"]["name"] and tout.name == manifest["output"]["name"]
        if manifest["embed_pre_post"]:
            assert (tin.data_type, list(tin.dims)) == (mc.TYPE_UINT8, [h, w, 3])
            assert (tout.data_type, list(tout.dims)) == (mc.TYPE_UINT8, [h, w])
        else:
            assert (tin.data_type, tin.format, list(tin.dims)) == (mc.TYPE_FP32, mc.ModelInput.FORMAT_NCHW, [3, h, w])
            assert (tout.data_type, list(tout.dims)) == (mc.TYPE_FP32, [4, h, w])
        assert tout.label_filename == "labels.txt"
        assert (repo / name / "labels.txt").read_text().splitlines() == manifest["classes"]
        (group,) = cfg.instance_group
        assert (group.kind, group.count) == (mc.ModelInstanceGroup.KIND_CPU, pipeline.triton.cpu_instances)
        assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == pipeline.triton.max_queue_delay_us
        carried = json.loads(cfg.parameters[MANIFEST_PARAMETER].string_value)
        assert {k: carried[k] for k in ("classes", "palette", "input", "output", "normalization")} == \
            {k: manifest[k] for k in ("classes", "palette", "input", "output", "normalization")}


def test_a_plan_gets_tensorrt_plan_on_the_gpu(repository):
    """What a TensorRT plan's folder says (no plan can be built here: the config text alone, from the
    TensorRT-bound graph's manifest as a plan's would read)."""
    folder, config, _, _ = repository
    pipeline = load_pipeline(config)
    manifest = {**read_manifest(folder / "out" / "bisenetv2" / "tensorrt" / "fp32.onnx"), "kind": "engine"}
    cfg = text_format.Parse(config_text("bisenetv2_fp32_tensorrt", manifest, "tensorrt", pipeline), mc.ModelConfig())
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    (group,) = cfg.instance_group
    assert (group.kind, group.count) == (mc.ModelInstanceGroup.KIND_GPU, pipeline.triton.gpu_instances)
    assert cfg.max_batch_size == pipeline.batch.max


def test_dynamic_batching_off_leaves_it_out(repository, tmp_path):
    _, config, _, _ = repository
    import dataclasses

    pipeline = load_pipeline(config)
    off = dataclasses.replace(pipeline, triton=dataclasses.replace(pipeline.triton, dynamic_batching=False))
    manifest = read_manifest(engine_of(repository, "bisenetv2"))
    cfg = text_format.Parse(config_text("m", manifest, "python", off), mc.ModelConfig())
    assert not cfg.HasField("dynamic_batching") and cfg.max_batch_size == 4


# A real Triton ------------------------------------------------------------------------------------------
def frames_for(manifest: dict, count: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    h, w = manifest["input"]["size"]
    if manifest["embed_pre_post"]:
        return rng.integers(0, 256, (count, h, w, 3), dtype=np.uint8)
    return rng.standard_normal((count, 3, h, w)).astype(np.float32)


@pytest.mark.parametrize("model", ["bisenetv2", "segformer_b0"])
def test_served_answers_equal_the_local_engine_over_http_and_grpc(repository, server, model):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    served = f"{model}_fp32_python"
    manifest = read_manifest(engine_of(repository, model))
    x = frames_for(manifest, 3)
    name_in, name_out = manifest["input"]["name"], manifest["output"]["name"]
    with OnnxRuntimeRunner.from_engine(engine_of(repository, model)) as local:
        expected = local.infer({name_in: x})[name_out]
        singles = [local.infer({name_in: x[i:i + 1]})[name_out] for i in range(3)]
    answers = {}
    for protocol, client_module, address in (("http", httpclient, server.http_address),
                                             ("grpc", grpcclient, server.grpc_address)):
        client = client_module.InferenceServerClient(address)
        assert client.is_model_ready(served)
        tensor = client_module.InferInput(name_in, list(x.shape), "UINT8" if x.dtype == np.uint8 else "FP32")
        tensor.set_data_from_numpy(x)
        answers[protocol] = client.infer(served, [tensor]).as_numpy(name_out)
        client.close()
    for protocol, got in answers.items():
        assert got.shape == expected.shape and got.dtype == expected.dtype, protocol
        assert np.abs(got.astype(np.float64) - expected).max() <= 1e-5, protocol  # same engine, same settings
        assert np.array_equal(got.argmax(1) if got.ndim == 4 else got,
                              expected.argmax(1) if got.ndim == 4 else expected), protocol
    # Batch 1 and batch 3 agree on the server as locally: the dynamic batcher's groups change nothing.
    assert max(np.abs(expected[i:i + 1].astype(np.float64) - s).max() for i, s in enumerate(singles)) <= 1e-5


def listening(port: int) -> list[str]:
    """The local addresses listening on TCP ``port`` (the kernel's /proc/net/tcp and tcp6 tables)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(".".join(map(str, words[-4:])) if len(raw) == 4 or words[:12] ==
                             b"\0" * 10 + b"\xff\xff" else words.hex())
    return found


def test_server_listens_on_loopback_only(server):
    for port in (server.http_port, server.grpc_port):
        assert listening(port) and all(a == "127.0.0.1" for a in listening(port)), (port, listening(port))


def test_served_model_carries_what_the_client_needs(server):
    manifest = remote_manifest(server.grpc_address, "segformer_b0_fp32_python")
    assert manifest["embed_pre_post"] is True and manifest["served_as"] == "python"
    assert manifest["input"]["name"] == "frames" and len(manifest["palette"]) == 4


# The runtime as a client --------------------------------------------------------------------------------
def local_histograms(engine_path: Path, uri: str, n: int) -> list[dict]:
    source = open_source(uri)
    source.open()
    hists = []
    with SegmentationEngine(engine_path) as engine:
        for _ in range(n):
            classes = engine.segment(source.read().image)
            counts = np.bincount(classes.ravel(), minlength=len(engine.legend.names)) / classes.size
            hists.append({engine.legend.names[i]: round(float(f), 5) for i, f in enumerate(counts) if f > 0})
    source.close()
    return hists


def test_four_concurrent_runtime_clients_get_every_frame_answered_and_correct(repository, server, tmp_path):
    n, size = 10, (48, 80)
    engine = f"triton://{server.grpc_address}/bisenetv2_fp32_python"
    results = run_clients(engine, 4, n, size, tmp_path)
    for i, r in enumerate(results):
        assert r["returncode"] == 0, r["stderr"]
        assert "engine: bisenetv2_fp32_python on the Triton Inference Server" in r["stderr"]
        s = r["summary"]
        assert s["frames"] == n and not s["dropped"] and s["engine"] == {"requests": n, "outages": 0, "resent": 0}
        assert [f["frame"] for f in r["frames"]] == list(range(n))
        expected = local_histograms(engine_of(repository, "bisenetv2"), synthetic(i, n, size), n)
        assert [f["classes"] for f in r["frames"]] == expected, f"client {i}"


def test_runtime_rides_through_a_server_restart(repository, tmp_path):
    """The server stops mid-run and comes back on the same ports: the client reconnects with backoff, the
    frames in flight are sent again and counted, and every frame is answered, in order, correctly."""
    import sys
    import time

    _, _, repo, _ = repository
    n, size = 60, (48, 80)
    server = TritonServer(repo, models=["bisenetv2_fp32_python"], venv=triton_venv())
    stats = tmp_path / "stats.jsonl"
    with server:
        proc = subprocess.Popen([sys.executable, "-m", "runtime", "--engine",
                                 f"triton://{server.grpc_address}/bisenetv2_fp32_python",
                                 "--source", synthetic(0, n, size) + "&live=1&fps=10", "--stats", str(stats),
                                 "--reconnect-timeout", "60"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (not stats.exists() or len(stats.read_text().splitlines()) < 10):
                time.sleep(0.1)
            assert stats.exists(), "the runtime answered no frame within 60 s"
            server.stop()
            time.sleep(1.0)
            server.start()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "reconnecting" in err and "reconnected after" in err and "Traceback" not in err
    lines = [json.loads(line) for line in stats.read_text().splitlines()]
    summary = lines[-1]["summary"]
    assert summary["engine"]["outages"] >= 1 and summary["engine"]["resent"] >= 1
    # Live source: frames replaced before inference took them are counted as stale; every frame that went to
    # the server was answered (none counted lost), and each answer is right for its frame.
    answered = [line for line in lines if "frame" in line]
    assert summary["frames"] == len(answered) and "engine_lost" not in summary["dropped"]
    assert summary["frames"] + summary["dropped"].get("stale", 0) == n
    expected = local_histograms(engine_of(repository, "bisenetv2"), synthetic(0, n, size), n)
    assert all(f["classes"] == expected[f["frame"]] for f in answered)


# DeepStream ---------------------------------------------------------------------------------------------
# Every key nvinfer's config parser knows in its [property] group: the CONFIG_GROUP_INFER_* names of
# gstnvinfer_property_parser.h (DeepStream SDK API reference, "gstnvinfer_property_parser.h File Reference",
# 6.x-8.0; the Gst-nvinfer plugin guide's "Gst-nvinfer Property Group Supported Keys" lists the same). nvinfer
# refuses a config with a key outside it ("Unknown key ... for group [property]").
NVINFER_KEYS = {
    "gie-unique-id", "process-mode", "interval", "labelfile-path", "gpu-id", "secondary-reinfer-interval",
    "output-tensor-meta", "enable-dla", "use-dla-core", "batch-size", "tensor-meta-pool-size", "network-mode",
    "model-engine-file", "int8-calib-file", "workspace-size", "output-blob-names", "is-classifier",
    "network-type", "force-implicit-batch-dim", "infer-dims", "output-io-formats", "layer-device-precision",
    "model-color-format", "net-scale-factor", "offsets", "mean-file", "maintain-aspect-ratio",
    "symmetric-padding", "scaling-filter", "scaling-compute-hw", "network-input-order", "input-tensor-from-meta",
    "custom-lib-path", "parse-bbox-func-name", "parse-bbox-instance-mask-func-name", "engine-create-func-name",
    "parse-classifier-func-name", "custom-network-config", "model-file", "proto-file", "uff-file",
    "uff-input-order", "input-dims", "uff-input-dims", "uff-input-blob-name", "tlt-encoded-model", "tlt-model-key",
    "onnx-file", "num-detected-classes", "enable-dbscan", "cluster-mode", "classifier-type",
    "classifier-threshold", "classifier-async-mode", "segmentation-threshold", "segmentation-output-order",
    "output-instance-mask", "input-object-min-width", "input-object-min-height", "input-object-max-width",
    "input-object-max-height", "operate-on-gie-id", "operate-on-class-ids", "filter-out-class-ids",
}


def test_deepstream_configs_use_nvinfers_keys_and_the_manifests_values(repository, tmp_path):
    import configparser

    folder, config, _, _ = repository
    pipeline = load_pipeline(config)
    r = cli("deepstream", "--config", config, "--out", str(tmp_path / "ds"))
    assert r.returncode == 0, r.stderr
    # segformer_b0 has pre/post-processing inside (uint8 NHWC frames), which nvinfer does not feed.
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["bisenetv2_fp32"]
    out = tmp_path / "ds" / "bisenetv2_fp32"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(out / "config_infer.txt")
    assert parser.sections() == ["property"]
    props = dict(parser["property"])
    assert set(props) <= NVINFER_KEYS, set(props) - NVINFER_KEYS
    graph = folder / "out" / "bisenetv2" / "tensorrt" / "fp32.onnx"
    manifest = read_manifest(graph)
    mean, std = manifest["normalization"]["mean"], manifest["normalization"]["std"]
    assert props["network-type"] == "2" and props["network-mode"] == "0"  # segmentation, FP32
    assert props["model-color-format"] == "0" and manifest["normalization"]["color"] == "RGB"
    assert [float(v) for v in props["offsets"].split(";")] == mean
    factor = float(props["net-scale-factor"])
    assert factor == pytest.approx(3 / sum(std)) and all(abs(factor * s - 1) < 0.02 for s in std)
    assert props["infer-dims"] == "3;%d;%d" % tuple(manifest["input"]["size"])
    assert int(props["batch-size"]) == pipeline.batch.max
    assert props["output-blob-names"] == manifest["output"]["name"] == "logits"
    assert int(props["num-detected-classes"]) == manifest["output"]["num_classes"]
    assert float(props["segmentation-threshold"]) == pipeline.deepstream.segmentation_threshold
    assert props["onnx-file"] == "model.onnx" and (out / "model.onnx").read_bytes() == graph.read_bytes()
    assert props["model-engine-file"] == "model.plan"  # built by nvinfer from the ONNX file: no plan here
    assert (out / props["labelfile-path"]).read_text().splitlines() == manifest["classes"]
