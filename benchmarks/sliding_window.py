"""The sliding-window baseline against its fully convolutional form: the same patch classifier (the same
weights), once classifying every window as its own sample and once as one pass over the image, in PyTorch
and in ONNX Runtime (fp32), at a few sizes. The labels are identical (tests/test_model_cnn.py); the printed
ratio is what sharing the computation of overlapping windows saves.

    python benchmarks/sliding_window.py [--sizes 32,64,128] [--window 7] [--rounds 5] [--threads 0]

Speed: p50 of ``--rounds`` rounds in which both forms run once each, interleaved, so the noise of a shared
machine hits both alike. Not a test: speeds go here, not in assertions.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from export.compile.onnx_export import export_onnx  # noqa: E402
from models import create_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="32,64,128", help="square input sizes, comma-separated")
    p.add_argument("--window", type=int, default=7)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0: every core")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    naive = create_model("sliding_window", window=args.window).eval()
    shared = create_model("sliding_window_fcn", window=args.window).eval()
    shared.load_state_dict(naive.state_dict())
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"window {args.window}x{args.window}, {sum(p.numel() for p in naive.parameters())} parameters; "
          f"ms per image, p50 of {args.rounds} rounds")
    print(f"{'size':>9}  {'runtime':<12}{'window by window':>17}{'one pass':>10}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            images = torch.randn(1, 3, size, size)
            runners = {}
            for name, model in (("naive", naive), ("shared", shared)):
                graph = export_onnx(model, Path(tmp) / f"{name}.onnx", (size, size), 1, dynamic_hw=False)
                runners[name] = OnnxRuntimeRunner(graph.SerializeToString(), threads=args.threads)
                runners[name].activate()
            feeds = {"images": images.numpy()}
            calls = {
                "PyTorch": {name: (lambda m=model: m(images)) for name, model in (("naive", naive), ("shared", shared))},
                "ORT fp32": {name: (lambda r=r: r.infer(feeds)) for name, r in runners.items()},
            }
            with torch.no_grad():
                for runtime, fns in calls.items():
                    times = {name: [] for name in fns}
                    for fn in fns.values():
                        fn(), fn()  # warm-up
                    for _ in range(args.rounds):
                        for name, fn in fns.items():
                            start = time.perf_counter()
                            fn()
                            times[name].append((time.perf_counter() - start) * 1e3)
                    a, b = (float(np.median(times[n])) for n in ("naive", "shared"))
                    print(f"{size:>4}x{size:<4}  {runtime:<12}{a:>17.2f}{b:>10.2f}{a / b:>7.1f}x")
            for r in runners.values():
                r.deactivate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
