"""``python -m export {build,check,triton,deepstream,list,import}``; exit codes: 0 success, 1 failure, 2 usage error."""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from .errors import UserError


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _pipeline_args(p: argparse.ArgumentParser, build_dir: bool = False) -> None:
    """The flags every command on a pipeline's models takes (and where their engines were built)."""
    p.add_argument("--config", default="pipeline.yaml", help="pipeline file (default: pipeline.yaml)")
    p.add_argument("--models", type=_csv, help="comma-separated subset of the pipeline's models")
    if build_dir:
        p.add_argument("--build-dir", help="folder the engines were built into (default: the pipeline's out_dir)")


def parser() -> argparse.ArgumentParser:
    from .config import BACKENDS, PRECISIONS

    p = argparse.ArgumentParser(prog="python -m export", description="PyTorch -> ONNX -> engines for segmentation.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="export, rewrite, check, set precision, compile and verify engines")
    _pipeline_args(b)
    b.add_argument("--precisions", type=_csv, help=f"comma-separated subset of {','.join(PRECISIONS)}")
    b.add_argument("--backends", type=_csv, help=f"comma-separated subset of {','.join(BACKENDS)}")
    b.add_argument("--out", help="output folder (default: the pipeline's out_dir)")
    b.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    b.add_argument("--no-verify", dest="verify", action="store_false", help="keep engines that fail parity")
    c = sub.add_parser("check", help="accuracy and speed of built engines against PyTorch")
    _pipeline_args(c)
    c.add_argument("--out", help="folder the engines were built into (default: the pipeline's out_dir)")
    c.add_argument("--json", help="write the results as JSON")
    c.add_argument("--report", help="write the results as a Markdown report (with --data: and plots in <stem>_files/)")
    c.add_argument("--data", help="a labelled dataset: score PyTorch and every engine against its labels")
    c.add_argument("--layout", choices=("auto", "cityscapes", "ade20k", "voc", "plain"),
                   help="the dataset's folder layout (with --data; default: auto)")
    c.add_argument("--limit", type=_positive, help="evaluate the first N images (with --data)")
    c.add_argument("--batch", type=_positive, help="frames per call: with --data, batch throughput (default: 4); "
                   "without, each engine's per-frame cost at this batch against batch 1")
    c.add_argument("--tile", metavar="HxW",
                   help="also run every engine and PyTorch in sliding windows: the images at their own size covered "
                        "by HxW tiles (a size the engines take), logits averaged where tiles overlap; reports whole "
                        "vs tiled agreement, mIoU and ms per frame (engines need embed_pre_post: false)")
    c.add_argument("--stride", metavar="HxW",
                   help="with --tile: the step between tiles (default: the tile, no overlap)")
    t = sub.add_parser("triton", help="a Triton Inference Server model repository from the built engines")
    _pipeline_args(t, build_dir=True)
    t.add_argument("--out", required=True, help="the model repository folder to write (tritonserver --model-repository)")
    t.add_argument("--no-python-backend", dest="python_backend", action="store_false",
                   help="leave out the Python-backend models (this project's ONNX Runtime engine on CPU servers)")
    d = sub.add_parser("deepstream", help="DeepStream nvinfer configs for the TensorRT-bound engines")
    _pipeline_args(d, build_dir=True)
    d.add_argument("--out", required=True, help="folder to write the nvinfer configs and label files into")
    sub.add_parser("list", help="registered models with parameter counts")
    i = sub.add_parser("import", help="convert a checkpoint trained elsewhere (mmseg, Hugging Face, CoinCheung) "
                                      "to this project's names, checked against the model")
    i.add_argument("source", help="a .pth/.pt/.bin/.safetensors file, a Hugging Face model folder, or hf:<repo id> "
                                  "from the local Hugging Face cache")
    i.add_argument("--model", required=True, help="the registered model it is for (python -m export list)")
    i.add_argument("--num-classes", type=_positive, help="default: the checkpoint's own class list, else 19")
    i.add_argument("--out", help="write the converted weights (classes and palette included) here")
    return p


def _validate_choices(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from .config import BACKENDS, PRECISIONS

    for name, allowed in (("precisions", PRECISIONS), ("backends", BACKENDS)):
        for v in getattr(args, name, None) or []:
            if v not in allowed:
                p.error(f"--{name}: {v!r} is not one of {', '.join(allowed)}")
    if args.command == "check" and args.data is None:
        given = [f"--{k}" for k in ("layout", "limit") if getattr(args, k) is not None]
        if given:
            p.error(f"{', '.join(given)} only apply with --data DIR")
    if args.command == "check":
        from engines.tiling import Tiling

        try:
            args.tiling = Tiling.from_flags(args.tile, args.stride)
        except ValueError as exc:
            p.error(str(exc))


def cmd_list() -> int:
    import torch

    from models import count_parameters, list_models

    rows = []
    for spec in list_models():
        with torch.device("meta"):  # counts parameters without allocating them
            n = count_parameters(spec.builder(num_classes=19))
        rows.append((spec.family, spec.name, f"{n / 1e6:.2f}M", f"/{spec.size_divisor}",
                     "dynamic H,W" if spec.dynamic_hw else "fixed H,W", spec.description))
    family, model = (max(len(r[i]) for r in rows) + 2 for i in (0, 1))
    print(f"{'family':<{family}}{'model':<{model}}{'params':>8}  {'sizes':<7}{'shape':<13}description")
    for r in rows:
        description = r[5].split("\n")[0].strip()  # the docstring's first line
        print(f"{r[0]:<{family}}{r[1]:<{model}}{r[2]:>8}  {r[3]:<7}{r[4]:<13}{description}")
    print("(parameters with 19 classes, auxiliary training heads excluded)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    import torch

    from models import MODELS, create_model

    from .compile.checkpoints import read_checkpoint
    from .compile.weights import import_weights, resolve_align_corners

    if args.model not in MODELS:
        raise UserError(f"--model: unknown model {args.model!r}; known: {' '.join(sorted(MODELS))}")
    checkpoint = read_checkpoint(args.source)
    num_classes = args.num_classes or (len(checkpoint.classes) if checkpoint.classes else 19)
    if checkpoint.classes is not None and len(checkpoint.classes) != num_classes:
        raise UserError(f"--num-classes {num_classes}, but {checkpoint.path} was trained for "
                        f"{len(checkpoint.classes)} classes; leave --num-classes out to take the checkpoint's")
    align_corners = resolve_align_corners(args.model, None, checkpoint)
    model = create_model(args.model, num_classes=num_classes, align_corners=align_corners)
    report = import_weights(model, args.model, checkpoint, f"{args.model} with num_classes={num_classes}")
    print(f"{checkpoint.path}: {args.model}, {num_classes} classes"
          + (f" ({', '.join(checkpoint.classes[:4])}, ...)" if checkpoint.classes else " (no class names in it)"))
    for line in report.lines():
        print("  " + line)
    print(f"  align_corners: {align_corners}, " + (
        f"from the file's config ({checkpoint.align_corners_from}): the model resizes as the source's"
        if checkpoint.align_corners is not None else
        "the default: the file carries no config that says (models[].align_corners in pipeline.yaml sets it)"))
    if args.out:
        from engines.manifest import atomic_write  # never leaves a half-written file behind

        meta = {"classes": checkpoint.classes, "palette": checkpoint.palette, "source": str(checkpoint.path),
                "layout": report.layout, "names": report.names,
                "align_corners": checkpoint.align_corners}  # None where the file did not say, as the classes
        buffer = io.BytesIO()
        torch.save({"state_dict": model.state_dict(), "segdeploy": meta}, buffer)
        atomic_write(Path(args.out), buffer.getvalue())
        print(f"wrote {args.out}: set models[].weights to it (num_classes, classes, palette and align_corners come "
              "with it)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    _validate_choices(p, args)
    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "import":
            return cmd_import(args)
        from .config import load_pipeline

        pipeline = load_pipeline(args.config)
        if args.command == "build":
            from .compile.build import BuildOptions, build

            rows = build(pipeline, BuildOptions(args.models, args.precisions, args.backends, args.out, args.force, args.verify))
            count = {s: sum(r["status"] == s for r in rows) for s in ("built", "cached", "refused", "skipped")}
            print(f"{len(rows)} artifacts: {count['built']} built, {count['cached']} up to date"
                  + "".join(f", {count[s]} {s}" for s in ("refused", "skipped") if count[s]))
            return 0
        if args.command == "triton":
            from .serve.triton import write_repository

            rows = write_repository(pipeline, args.out, args.models, args.build_dir, args.python_backend)
            for r in rows:
                if r["status"] == "skipped":
                    print(f"skipped {r['artifact']}: {r['reason']}")
            written = [r for r in rows if r["status"] == "written"]
            print(f"{len(written)} models in {args.out}: {', '.join(r['name'] for r in written)}")
            return 0
        if args.command == "deepstream":
            from .serve.deepstream import write_configs

            rows = write_configs(pipeline, args.out, args.models, args.build_dir)
            print(f"{len(rows)} nvinfer configs in {args.out}: {', '.join(r['config'] for r in rows)}")
            return 0
        if args.data is not None:
            from .measure.evaluate import DataOptions, evaluate
            from .measure.report import render_text as render_data_text, write_reports as write_data_reports

            result = evaluate(pipeline, DataOptions(args.data, args.layout or "auto", args.limit, args.batch or 4,
                                                    args.tiling), args.models, args.out)
            print(render_data_text(result))
            write_data_reports(result, args.json, args.report)
            return 0
        from .measure.check import check, machine_description, render_text, write_reports

        rows = check(pipeline, args.models, args.out, args.tiling, args.batch)
        print(render_text(rows))
        write_reports(rows, args.json, args.report, machine_description())
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; finished artifacts are kept, unfinished ones were not written", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
