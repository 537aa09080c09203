"""``python -m export triton``: a Triton Inference Server model repository from the built engines.

For every built engine of the pipeline's models, one model folder (Triton's layout: ``<name>/config.pbtxt``,
``<name>/labels.txt``, ``<name>/1/<file>``):

    <model>_<precision>_tensorrt     platform tensorrt_plan, 1/model.plan          a TensorRT plan (GPU, KIND_GPU)
    <model>_<precision>_onnxruntime  backend onnxruntime, 1/model.onnx             the precision graph, for
                                                                                   Triton's ONNX Runtime backend
    <model>_<precision>_python       backend python, 1/model.onnx + manifest       this project's ONNX Runtime
                                     + 1/model.py (export/serve/triton_model.py)   engine, for CPU-only servers

The scheduling comes from pipeline.yaml (``batch.max`` is ``max_batch_size``; ``triton``: dynamic batching,
preferred batch sizes, queue delay, instance counts); names, dtypes and dims of the input and output from
the manifest; the label file from its classes. The manifest itself rides along as the model's parameter
``segdeploy.manifest``, so a client (runtime/, ``--engine triton://``) knows the input size, normalization,
classes and palette from the server alone.

The text follows Triton's model_config.proto; the tests parse every file with that schema (tritonclient's
``model_config_pb2``). TensorRT-bound graphs with no plan built (no TensorRT here) get no tensorrt_plan
folder: build the plan on the GPU machine (``python -m export build --backends tensorrt``) and run this again
there. OpenVINO engines are skipped, with that reason: the onnxruntime engine of the same graph is served.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from engines import artifacts as layout
from engines.manifest import atomic_write, embeds_pre_post, read_manifest, sha256_file, write_manifest

from ..config import Pipeline
from ..errors import UserError
from ..log import log

MANIFEST_PARAMETER = "segdeploy.manifest"
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int64": "TYPE_INT64"}
PYTHON_MODEL = Path(__file__).with_name("triton_model.py")
# The manifest keys a client needs to pre- and post-process frames (the rest stays in the model folder).
CLIENT_KEYS = ("model", "precision", "backend", "backend_version", "kind", "classes", "palette", "input", "output",
               "normalization", "embed_pre_post")


def model_name(model: str, precision: str, flavour: str) -> str:
    return f"{model}_{precision}_{flavour}"


def tensor_dims(manifest: dict, which: str) -> list[int]:
    """The per-request dims (without the batch dimension) of the engine's input or output."""
    h, w = manifest["input"]["size"]
    pre_post = embeds_pre_post(manifest)
    if which == "input":
        return [h, w, 3] if pre_post else [3, h, w]
    return [h, w] if pre_post else [manifest["output"]["num_classes"], h, w]


def _quote(text: str) -> str:
    return json.dumps(text)  # a protobuf text-format string: double quotes, backslash escapes


def config_text(name: str, manifest: dict, flavour: str, pipeline: Pipeline) -> str:
    """``config.pbtxt`` for one model folder (Triton's model_config.proto, text format)."""
    tensor_in, tensor_out = manifest["input"], manifest["output"]
    lines = [f"name: {_quote(name)}"]
    if flavour == "tensorrt":
        lines += ['platform: "tensorrt_plan"', 'default_model_filename: "model.plan"']
    elif flavour == "onnxruntime":
        lines += ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    else:
        lines += ['backend: "python"']
    lines += [f"max_batch_size: {pipeline.batch.max}"]
    nchw = ["    format: FORMAT_NCHW"] if tensor_in["layout"] == "NCHW" else []  # NHWC frames: FORMAT_NONE
    lines += ["input [", "  {", f"    name: {_quote(tensor_in['name'])}",
              f"    data_type: {TRITON_DTYPES[tensor_in['dtype']]}", *nchw,
              f"    dims: {tensor_dims(manifest, 'input')}", "  }", "]"]
    lines += ["output [", "  {", f"    name: {_quote(tensor_out['name'])}",
              f"    data_type: {TRITON_DTYPES[tensor_out['dtype']]}", f"    dims: {tensor_dims(manifest, 'output')}",
              '    label_filename: "labels.txt"', "  }", "]"]
    kind = "KIND_GPU" if flavour == "tensorrt" else "KIND_CPU"
    count = pipeline.triton.gpu_instances if flavour == "tensorrt" else pipeline.triton.cpu_instances
    lines += ["instance_group [", "  {", f"    count: {count}", f"    kind: {kind}", "  }", "]"]
    if pipeline.triton.dynamic_batching:
        lines += ["dynamic_batching {", f"  preferred_batch_size: {sorted(set(pipeline.triton.preferred_batch_size))}",
                  f"  max_queue_delay_microseconds: {pipeline.triton.max_queue_delay_us}", "}"]
    client = {k: manifest[k] for k in CLIENT_KEYS if k in manifest}
    client["served_as"] = flavour
    lines += ["parameters {", f"  key: {_quote(MANIFEST_PARAMETER)}",
              f"  value {{ string_value: {_quote(json.dumps(client, sort_keys=True))} }}", "}"]
    return "\n".join(lines) + "\n"


def _folder(repo: Path, name: str, manifest: dict, flavour: str, pipeline: Pipeline, files: dict[str, Path]) -> Path:
    folder = repo / name
    if folder.exists():
        shutil.rmtree(folder)  # a stale version folder or file must not survive a re-export
    (folder / "1").mkdir(parents=True)
    for target, source in files.items():
        shutil.copyfile(source, folder / "1" / target)
    atomic_write(folder / "config.pbtxt", config_text(name, manifest, flavour, pipeline).encode())
    atomic_write(folder / "labels.txt", ("\n".join(manifest["classes"]) + "\n").encode())
    return folder


def write_repository(pipeline: Pipeline, repo: Path, models: list[str] | None = None,
                     build_dir: str | None = None, python_backend: bool = True) -> list[dict]:
    """Write a model folder for each built engine of the selected models; one row per folder written or
    skipped (``status``: written | skipped, with ``reason``)."""
    out = Path(build_dir) if build_dir else pipeline.resolve(pipeline.out_dir)
    selected = [c.name for c in pipeline.models if not models or c.name in models]
    repo = Path(repo)
    rows = []
    for model in selected:
        found = layout.built(out, model)
        if not found:
            raise UserError(f"{model}: nothing built in {out / model}; run python -m export build first")
        for path in found:
            manifest = read_manifest(path)
            if not manifest.get("parity", {}).get("passed", False):
                rows.append({"model": model, "artifact": str(path), "status": "skipped",
                             "reason": "its build-time parity failed"})
                continue
            precision = manifest["precision"]
            if manifest["backend"] == "tensorrt" and manifest.get("kind") == "graph":
                rows.append({"model": model, "artifact": str(path), "status": "skipped",
                             "reason": "a TensorRT-bound graph, no plan: build the plan on the GPU machine "
                                       "(python -m export build --backends tensorrt) and export the repository there"})
                continue
            if manifest["backend"] == "openvino":
                rows.append({"model": model, "artifact": str(path), "status": "skipped",
                             "reason": "an OpenVINO engine (a compiled blob, which Triton's OpenVINO backend does "
                                       "not load): the onnxruntime engine of the same graph is served"})
                continue
            if manifest["backend"] == "tensorrt":
                units = [("tensorrt", {"model.plan": path})]
            else:
                graph = layout.precision_graph(out, model, "onnxruntime", precision)
                units = []
                if graph.exists() and sha256_file(graph) == manifest["hashes"]["onnx"]:
                    units.append(("onnxruntime", {"model.onnx": graph}))
                else:
                    rows.append({"model": model, "artifact": str(graph), "status": "skipped",
                                 "reason": "its precision graph is missing or from another build; "
                                           "rebuild with python -m export build --force"})
                if python_backend:
                    units.append(("python", {"model.onnx": path, "model.py": PYTHON_MODEL}))
            for flavour, files in units:
                name = model_name(model, precision, flavour)
                folder = _folder(repo, name, manifest, flavour, pipeline, files)
                if flavour == "python":  # the engine's manifest beside it, as engines/manifest.py places it
                    write_manifest(folder / "1" / "model.onnx", {k: v for k, v in manifest.items() if k != "schema"})
                rows.append({"model": model, "name": name, "flavour": flavour, "folder": str(folder),
                             "artifact": str(path), "status": "written"})
                log(f"  {name}: {folder}")
    return rows
