"""``python -m data --out DIR``: write labelled synthetic street scenes in the plain layout
(images/, masks/, classes.txt), e.g. as an evaluation set for ``pipeline.yaml``'s ``accuracy.data``."""
from __future__ import annotations

import argparse
import sys

from .synthetic import EVAL_SEED, write_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--size", default="256x512", help="HxW")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help=f"first scene's seed (training uses seeds below {EVAL_SEED})")
    args = p.parse_args(argv)
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size: expected HxW, got {args.size!r}")
    root = write_dataset(args.out, args.count, (h, w), args.seed)
    print(f"wrote {args.count} scenes of {h}x{w} to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
