"""Manifests (JSON beside each engine), content hashes and atomic writes.

A manifest says everything a loader needs to use an engine (input sizes, normalization, classes, palette)
and everything needed to tell whether it is still valid (hashes of its inputs and of the engine file, the
backend version and device it was built for).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from .base import EngineError

MANIFEST_SUFFIX = ".manifest.json"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash or a full disk leaves either the old file or the new one,
    never a partial one: write a temporary file in the same folder, flush it to disk, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def manifest_path(engine_path: Path) -> Path:
    return Path(engine_path).with_name(Path(engine_path).name + MANIFEST_SUFFIX)


def write_manifest(engine_path: Path, manifest: dict) -> Path:
    path = manifest_path(engine_path)
    atomic_write(path, json.dumps({"schema": SCHEMA_VERSION, **manifest}, indent=2, default=str).encode())
    return path


def write_engine(engine_path: Path, data: bytes, manifest: dict) -> None:
    """Replace an engine and its manifest as a pair. Each file is written atomically, and Ctrl-C / SIGTERM
    are held back between the two renames, so an interrupt never leaves a new engine beside an old manifest
    (which would load as 'changed file').

    Holding back means swapping the Python handlers for one that only records the signal, and raising it
    again once both files are in place. (Blocking with pthread_sigmask is not enough: it blocks the calling
    thread only, the kernel then hands the signal to another thread, e.g. one of ONNX Runtime's, and Python
    raises KeyboardInterrupt in the main thread all the same.) Handlers can only be set from the main
    thread; elsewhere the pair is written without the hold."""
    held: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        atomic_write(engine_path, data)
        write_manifest(engine_path, manifest)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])


def read_manifest(engine_path: Path) -> dict:
    """The manifest of ``engine_path``; an EngineError that says what to do when it is missing or unreadable."""
    path = manifest_path(engine_path)
    if not Path(engine_path).exists():
        raise EngineError(f"engine {engine_path} does not exist; build it with python -m export build")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"engine {engine_path} has no manifest ({path.name}); rebuild it with "
                          "python -m export build --force") from None
    except (OSError, ValueError) as exc:
        raise EngineError(f"manifest {path} is unreadable ({exc}); rebuild with python -m export build --force") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA_VERSION:
        raise EngineError(f"manifest {path} is of an unknown format; rebuild with python -m export build --force")
    return manifest


def verify_engine_file(engine_path: Path, manifest: dict) -> None:
    """The engine file must be the one the manifest describes (a changed or truncated file is refused)."""
    expected = manifest.get("engine", {}).get("sha256")
    if expected != sha256_file(Path(engine_path)):
        raise EngineError(f"engine {engine_path} does not match its manifest (changed or damaged file); rebuild "
                          f"with python -m export build --force --models {manifest.get('model', '?')}")


def embeds_pre_post(manifest: dict) -> bool:
    """Whether the engine takes uint8 frames and returns the class map, normalization and argmax inside
    (pipeline.yaml ``embed_pre_post``). Manifests written before the flag had its own key said it in
    ``input.embedded_preprocessing``."""
    return bool(manifest.get("embed_pre_post", manifest.get("input", {}).get("embedded_preprocessing", False)))
