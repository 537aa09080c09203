"""The CPU placement's INT8 schemes side by side: accuracy on this CPU and on an emulated AVX2 CPU without
VNNI, and speed on this CPU, for the default pipeline's models with their demo weights.

    python benchmarks/int8_cpu_schemes.py [--models bisenetv2,segformer_b0] [--emulate 4] [--rounds 5]
                                          [--json FILE]

Schemes (export/compile/precision.py ``CPU_INT8_SCHEMES``): u8s8-7bit (the default), u8s8, u8u8, s8s8. Each is
built from the same rewritten graph and calibration images as ``make build`` (no sensitivity fallback, so
the schemes themselves are compared) and scored on ``accuracy.data`` (``make build`` writes the synthetic
set). Speed: p50 of ``--rounds`` rounds in which every scheme runs each image once, interleaved, so the
noise of a shared machine hits all alike; ratios against u8s8. With ``--emulate N`` the first N images also
run under ``qemu-x86_64 -cpu Haswell-v4`` (engines/emulated_cpu.py: AVX2 kernels, no VNNI): their mIoU
there and whether the logits equal this CPU's. Emulated speed means nothing and is not printed.
Not a test: speeds go here, not in assertions.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.cpu import this_cpu  # noqa: E402
from engines.emulated_cpu import AVX2_WITHOUT_VNNI, run_emulated, unavailable_reason  # noqa: E402
from engines.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from export.compile.build import BuildOptions, ModelBuild  # noqa: E402
from export.compile.sources import source_hash  # noqa: E402
from export.config import load_pipeline  # noqa: E402
from export.measure.metrics import compare, label_miou  # noqa: E402
from export.compile.precision import CPU_INT8_SCHEMES, int8_weight_max, to_int8  # noqa: E402


def miou_of(unit: ModelBuild, logits: list[np.ndarray], labels: list[np.ndarray]) -> float:
    return label_miou((out.argmax(1)[0] for out in logits), labels, unit.cfg.num_classes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="pipeline.yaml")
    p.add_argument("--models", default="bisenetv2,segformer_b0")
    p.add_argument("--emulate", type=int, default=0, help="images to run on the emulated AVX2 CPU (0: none)")
    p.add_argument("--emulate-schemes", default=",".join(CPU_INT8_SCHEMES),
                   help="the schemes to emulate (a 256x512 frame takes minutes there)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    if args.emulate and unavailable_reason():
        sys.exit(f"error: --emulate: {unavailable_reason()}")
    pipeline = load_pipeline(args.config)
    here = this_cpu()
    print(f"CPU: {here['model']} ({here['int8_kernels']} INT8 kernels), {args.threads} threads; "
          f"emulated: {AVX2_WITHOUT_VNNI} (avx2-without-vnni) on {args.emulate} image(s)\n")
    results = []
    for cfg in pipeline.models:
        if cfg.name not in args.models.split(","):
            continue
        unit = ModelBuild(pipeline, cfg, Path("build/int8_schemes"), BuildOptions(), source_hash(cfg.name))
        scorer = unit.accuracy_scorer()
        reference, images, labels = scorer.reference, scorer.images, scorer.labels
        graph, calibration = unit.rewritten("onnxruntime"), unit.calibration()[0]
        with torch.no_grad():
            pytorch = [unit.model(torch.from_numpy(x)).numpy() for x in images[:args.emulate]]
        runners, rows = {}, {}
        for scheme in CPU_INT8_SCHEMES:
            t = time.perf_counter()
            int8 = to_int8(graph, calibration, "onnxruntime", pipeline.calibration.method, scheme=scheme)
            runners[scheme] = OnnxRuntimeRunner(int8.SerializeToString(), args.threads).activate()
            logits = [runners[scheme].infer({"images": x})["logits"] for x in images]
            row = {"model": cfg.name, "scheme": scheme, "weight_max_abs": int8_weight_max(int8),
                   "miou": miou_of(unit, logits, labels), "pytorch_miou": reference,
                   "quantize_s": time.perf_counter() - t}
            if args.emulate and scheme in args.emulate_schemes.split(","):
                feeds = [{"images": x} for x in images[:args.emulate]]
                emulated = [o["logits"] for o in run_emulated(int8.SerializeToString(), feeds, threads=args.threads)]
                row.update(emulated_miou=miou_of(unit, emulated, labels[:args.emulate]),
                           emulated_agreement=compare(emulated, pytorch)["pixel_agreement"],
                           native_agreement=compare(logits[:args.emulate], pytorch)["pixel_agreement"],
                           native_miou_same_images=miou_of(unit, logits[:args.emulate], labels[:args.emulate]),
                           emulated_identical=all(np.array_equal(a, b) for a, b in zip(emulated, logits)),
                           emulated_max_abs_diff=float(max(np.abs(a - b).max() for a, b in zip(emulated, logits))))
            rows[scheme] = row
        times = {s: [] for s in runners}
        for _ in range(args.rounds):
            for x in images:
                for scheme, runner in runners.items():
                    t = time.perf_counter()
                    runner.infer({"images": x})
                    times[scheme].append((time.perf_counter() - t) * 1000)
        for scheme, row in rows.items():
            row["p50_ms"] = float(np.median(times[scheme]))
            row["speed_vs_u8s8"] = float(np.median(times["u8s8"]) / row["p50_ms"])
            runners[scheme].deactivate()
            results.append(row)
        print_table(cfg.name, list(rows.values()), args.emulate)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": here, "threads": args.threads, "rows": results}, indent=2))


def print_table(name: str, rows: list[dict], emulate: int) -> None:
    print(f"{name} (PyTorch {rows[0]['pytorch_miou']:.2f} mIoU)")
    head = "| scheme | max abs weight | mIoU here | p50 ms here | speed vs u8s8 |"
    if emulate:
        head += (f" mIoU / agreement with PyTorch on {emulate} img: here | on AVX2 (emulated) |"
                 " AVX2 logits = here |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = (f"| {r['scheme']} | {r['weight_max_abs']} | {r['miou']:.2f} | {r['p50_ms']:.1f} | "
                f"{r['speed_vs_u8s8']:.2f}x |")
        if emulate and "emulated_miou" in r:
            same = "yes" if r["emulated_identical"] else f"no (max diff {r['emulated_max_abs_diff']:.3g})"
            line += (f" {r['native_miou_same_images']:.2f} / {r['native_agreement']:.4f} | "
                     f"{r['emulated_miou']:.2f} / {r['emulated_agreement']:.4f} | {same} |")
        elif emulate:
            line += " | not emulated | |"
        print(line)
    print()


if __name__ == "__main__":
    main()
