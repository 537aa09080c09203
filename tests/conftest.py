"""Shared pytest configuration.

The suite runs on every core (``make test``: pytest-xdist, ``--dist loadgroup``). Tests that share an expensive
module- or session-scoped fixture (an export, a built pipeline, a served camera) are kept on one worker, grouped
by the fixture and its parameter, so the work is done once; everything else is spread freely. Each worker runs
PyTorch on one thread, so two workers on two cores do not oversubscribe them.
"""
from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "tensorrt: needs TensorRT and an NVIDIA GPU")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def _shared_fixtures(item: pytest.Item) -> list[str]:
    """The costly fixtures ``item`` shares with other tests: those scoped wider than a function and defined by
    this suite (not pytest's own, like tmp_path_factory), each with its parameter."""
    info = getattr(item, "_fixtureinfo", None)
    keys = []
    for name in info.names_closure if info else ():
        defs = info.name2fixturedefs.get(name)
        if not defs or defs[-1].scope == "function" or not defs[-1].baseid:
            continue
        param = item.callspec.params.get(name) if hasattr(item, "callspec") else None
        # No brackets or "@" in a group name: xdist finds the group after the nodeid's last "]".
        keys.append(f"{defs[-1].baseid}::{name}" + (f"={param}" if param is not None else ""))
    return keys


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    # Tests that share any costly fixture, directly or through another test, form one group (union-find).
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    shared = {item.nodeid: _shared_fixtures(item) for item in items}
    for keys in shared.values():
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
    for item in items:
        if shared[item.nodeid]:
            item.add_marker(pytest.mark.xdist_group(find(shared[item.nodeid][0])))
