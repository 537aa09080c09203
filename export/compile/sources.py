"""The code an artifact is built from, as a hash in its cache key: editing a file that shapes an engine
rebuilds it, and editing another model's file does not."""
from __future__ import annotations

import ast
from pathlib import Path

from engines.manifest import sha256_file, sha256_json
from models import get_spec

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def source_hash(model: str | None = None, root: Path = PROJECT_ROOT) -> str:
    """Code that shapes an artifact is one of its inputs: a changed rewrite must rebuild the engines. That is
    all of ``export/``, ``engines/`` and ``data/`` (the labelled sets the accuracy guards score on are read
    by it), and of ``models/`` only the modules ``model``'s builder imports
    (transitively, within ``models``): editing one architecture's file rebuilds that architecture only.
    ``model=None`` covers all of ``models/``."""
    files = {p for d in ("data", "export", "engines") for p in (root / d).rglob("*")
             if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts}
    if model is None:
        files |= {p for p in (root / "models").rglob("*.py") if "__pycache__" not in p.parts}
    else:
        files |= model_sources(get_spec(model).builder.__module__, root)
    return sha256_json({str(p.relative_to(root)): sha256_file(p) for p in sorted(files)})


def model_sources(module: str, root: Path = PROJECT_ROOT) -> set[Path]:
    """The files of ``module`` and of every ``models`` module it imports, directly or not (read with ``ast``,
    nothing is imported). The imports of a package's ``__init__`` are not followed, unless the package is
    the family itself: ``models/__init__.py`` imports every family to register it, which shapes none of
    them. So a family imports what it uses from the defining module (``from .backbones.resnet import
    ResNet``); tests/test_build_cache.py checks that every class a registered network is built of is covered."""
    def path_of(name: str) -> Path | None:
        base = root.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = path_of(name)
        if path is None or path in seen or path.relative_to(root).parts[0] != "models":
            continue
        seen.add(path)
        is_package = path.name == "__init__.py"
        if is_package and name != module:
            continue
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                todo += [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
    return seen
