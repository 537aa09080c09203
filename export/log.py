"""Progress lines of the commands: to stderr, flushed, so they interleave correctly with subprocess output."""
from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
