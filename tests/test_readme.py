"""The README's commands are the product's front door: they must exist and mean what the README says."""
from __future__ import annotations

import re
import subprocess

import pytest

from export.__main__ import parser
from helpers import ROOT

README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("target", ["build", "test"])
def test_quick_start_make_targets_exist(target):
    assert f"make {target}" in README
    result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_make_test_is_what_ci_runs():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", ["build", "check"])
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
