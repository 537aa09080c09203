"""``python -m export deepstream``: a Gst-nvinfer config for each TensorRT-bound engine.

Per engine, a folder ``<model>_<precision>/`` with ``config_infer.txt`` (nvinfer's GKeyFile format, group
``[property]``), ``labels.txt`` and the model: ``model.onnx`` (the TensorRT-bound graph, Q/DQ included) and,
where a plan was built here, ``model.plan`` (nvinfer builds one from the ONNX file when there is none).

What nvinfer needs comes from the manifest and pipeline.yaml: ``network-type=2`` (segmentation), the
preprocessing ``y = net-scale-factor * (x - offsets[c])`` (nvinfer's formula, Gst-nvinfer docs), the colour
order, ``infer-dims``, the batch size (``batch.max``, the profile's), the output blob, the classes and the
segmentation threshold. nvinfer takes one scale factor for all channels, while the manifest normalizes
with a std per channel: the factor is 1 / mean(std), and the config says in a comment how far that is from
each channel's 1 / std (ImageNet's std: at most 1.3%). Engines with pre/post-processing inside take uint8
NHWC frames, which nvinfer does not feed: they are skipped with the reason.

DeepStream is not on this machine: nothing here has been run by nvinfer; the tests check every key against
nvinfer's own key list (gstnvinfer_property_parser.h) and the values against the manifest.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from engines import artifacts as layout
from engines.manifest import atomic_write, embeds_pre_post, read_manifest

from ..config import Pipeline
from ..errors import UserError
from ..log import log

NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer's network-mode
COLOR_FORMAT = {"RGB": 0, "BGR": 1, "GRAY": 2}  # nvinfer's model-color-format


def scale_factor(std: list[float]) -> tuple[float, float]:
    """nvinfer's single ``net-scale-factor`` for a per-channel std, and its worst relative error."""
    factor = 1.0 / (sum(std) / len(std))
    return factor, max(abs(factor * s - 1.0) for s in std)


def properties(manifest: dict, pipeline: Pipeline) -> dict[str, str]:
    """The ``[property]`` keys and values for one engine."""
    h, w = manifest["input"]["size"]
    norm = manifest["normalization"]
    factor, _ = scale_factor(norm["std"])
    props = {
        "gpu-id": pipeline.deepstream.gpu_id,
        "gie-unique-id": 1,
        "process-mode": 1,  # primary: whole frames
        "network-type": 2,  # segmentation
        "net-scale-factor": repr(factor),
        "offsets": ";".join(repr(float(m)) for m in norm["mean"]),
        "model-color-format": COLOR_FORMAT[norm["color"]],
        "infer-dims": f"3;{h};{w}",
        "batch-size": pipeline.batch.max,
        "network-mode": NETWORK_MODE[manifest["precision"]],
        "onnx-file": "model.onnx",
        "model-engine-file": "model.plan",
        "output-blob-names": manifest["output"]["name"],
        "num-detected-classes": manifest["output"]["num_classes"],
        "labelfile-path": "labels.txt",
        "segmentation-threshold": repr(float(pipeline.deepstream.segmentation_threshold)),
        "workspace-size": pipeline.tensorrt.workspace_mib,
    }
    if pipeline.tensorrt.dla_core is not None:
        props.update({"enable-dla": 1, "use-dla-core": pipeline.tensorrt.dla_core})
    return {k: str(v) for k, v in props.items()}


def config_text(manifest: dict, pipeline: Pipeline) -> str:
    _, error = scale_factor(manifest["normalization"]["std"])
    lines = [f"# nvinfer config for {manifest['model']} {manifest['precision']} (python -m export deepstream)",
             f"# net-scale-factor is 1/mean(std) of {manifest['normalization']['std']}: within {100 * error:.2f}% "
             "of each channel's 1/std", "[property]"]
    lines += [f"{k}={v}" for k, v in properties(manifest, pipeline).items()]
    return "\n".join(lines) + "\n"


def write_configs(pipeline: Pipeline, out: Path, models: list[str] | None = None,
                  build_dir: str | None = None) -> list[dict]:
    """One folder per TensorRT-bound engine of the selected models; returns a row per folder written."""
    build = Path(build_dir) if build_dir else pipeline.resolve(pipeline.out_dir)
    out = Path(out)
    rows = []
    for cfg in pipeline.models:
        if models and cfg.name not in models:
            continue
        for precision in cfg.precisions:
            graph = layout.precision_graph(build, cfg.name, "tensorrt", precision)
            plan = layout.engine(build, cfg.name, "tensorrt", precision)
            source = plan if plan.exists() else graph
            if not source.exists():
                continue
            manifest = read_manifest(source)
            if embeds_pre_post(manifest):
                log(f"  {cfg.name} {precision}: skipped, its engine takes uint8 NHWC frames (embed_pre_post), "
                    "nvinfer feeds normalized planar tensors")
                continue
            folder = out / f"{cfg.name}_{precision}"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(graph, folder / "model.onnx")
            if plan.exists():
                shutil.copyfile(plan, folder / "model.plan")
            atomic_write(folder / "config_infer.txt", config_text(manifest, pipeline).encode())
            atomic_write(folder / "labels.txt", ("\n".join(manifest["classes"]) + "\n").encode())
            rows.append({"model": cfg.name, "precision": precision, "config": str(folder / "config_infer.txt")})
            log(f"  {cfg.name} {precision}: {folder / 'config_infer.txt'}")
    if not rows:
        raise UserError(f"no TensorRT-bound engines in {build}; build with backends: [tensorrt] "
                        "(python -m export build --backends tensorrt)")
    return rows
