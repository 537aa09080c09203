"""The README's commands are the product's front door: they must exist and mean what the README says."""
from __future__ import annotations

import re
import subprocess

import pytest

from export.__main__ import parser
from helpers import ROOT

README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("target", ["build", "test", "bench"])
def test_quick_start_make_targets_exist(target):
    assert f"make {target}" in README
    result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_make_test_is_what_ci_runs():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", ["build", "check", "import", "triton", "deepstream"])
def test_documented_flags_are_the_real_ones(command):
    usage = re.search(rf"```\npython -m export {command} (.*?)```", README, re.S).group(1)
    documented = set(re.findall(r"--[a-z-]+", usage))
    sub = parser()._subparsers._group_actions[0].choices[command]
    real = {s for a in sub._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    assert documented == real


def test_runtime_flags_are_the_real_ones():
    from runtime.__main__ import parser as runtime_parser

    usage = re.search(r"```\npython -m runtime (.*?)```", README, re.S).group(1)
    documented = set(re.findall(r"--[a-z-]+", usage))
    real = {s for a in runtime_parser()._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    assert documented == real


def test_make_run_is_the_live_camera_one_liner():
    assert "make run SOURCE=0" in README
    result = subprocess.run(["make", "-n", "run", "SOURCE=0"], cwd=ROOT, capture_output=True, text=True)
    assert "-m runtime --engine bisenetv2 --source '0'" in result.stdout


def architecture_rows() -> list[tuple[str, list[str], list[str]]]:
    """(first cell, model names, "ours" parameter counts) of each row of the README's architecture table."""
    section = README.split("## Architectures", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append((cells[0], re.findall(r"`([a-z0-9_]+)`", cells[0]), re.findall(r"[\d.]+M", cells[1])))
    return rows


def test_architecture_table_lists_every_registered_model_with_its_count():
    """Every registered name in a row (``a`` … ``b`` covers the family's variants from a to b), each count
    as `python -m export list` prints it (19 classes, training-only heads excluded)."""
    import torch

    from models import MODELS, count_parameters, create_model

    listed: dict[str, str | None] = {}
    for cell, names, counts in architecture_rows():
        if "…" in cell:  # a family range: the first and last variants' counts are given
            family = sorted(n for n in MODELS if MODELS[n].family == MODELS[names[0]].family)
            listed.update(dict.fromkeys(family))
            listed.update({family[0]: counts[0], family[-1]: counts[-1]})
        else:
            assert len(counts) == len(names), cell
            listed.update(zip(names, counts))
    assert set(listed) == set(MODELS)
    for name, documented in listed.items():
        if documented is not None:
            with torch.device("meta"):
                n = count_parameters(create_model(name, num_classes=19))
            assert documented == f"{n / 1e6:.2f}M", name
