"""Lower layers never import higher ones (STYLE.md): each top-level package imports only the project packages
below it, and the layers that promise it stay free of PyTorch or ONNX. Read from the source with ``ast``, so
a lazy import inside a function counts as much as one at the top."""
from __future__ import annotations

import ast

import pytest

from helpers import ROOT

PROJECT = {"data", "models", "training", "export", "engines", "runtime"}
# package: (project packages it may import, third-party roots it must not import)
RULES = {
    "data": (set(), {"torch", "onnx", "onnxruntime"}),
    "models": (set(), {"onnx", "onnxruntime", "onnxscript", "onnx_graphsurgeon"}),
    "training": ({"models", "data"}, {"onnx", "onnxruntime"}),
    "export": ({"models", "data", "engines"}, set()),
    "engines": (set(), {"torch"}),
    "runtime": ({"engines", "data"}, {"torch", "onnx"}),  # data: the scene generator, image suffixes
}


def imported_roots(package: str) -> dict[str, str]:
    """Each top-level module imported anywhere in ``package`` -> one file that imports it."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_only_the_layers_below(package):
    allowed, forbidden = RULES[package]
    roots = imported_roots(package)
    wrong = {m: f for m, f in roots.items() if (m in PROJECT and m not in allowed | {package}) or m in forbidden}
    assert not wrong, f"{package}/ imports {', '.join(f'{m} ({f})' for m, f in sorted(wrong.items()))}"
