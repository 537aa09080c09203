"""Small shared pieces of the test suite."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


def make_deterministic(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every learned scale a non-trivial value, so tests exercise every path: e.g. CCNet's attention
    scale is 0 at initialisation (as in the paper), which would make its attention invisible in the output;
    so would a zero-initialised conv or linear weight."""
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.data.fill_(1.0)
        elif name.endswith("weight") and not p.any():
            # Zero-initialised layers (FCN's skip scores, deformable attention's offsets, the last layer of a
            # non-local or global-context block) would make a path invisible in every test.
            p.data.normal_(0.0, 0.02) if p.ndim > 1 else p.data.fill_(1.0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def calibration_batches(size: tuple[int, int], count: int = 4) -> list[np.ndarray]:
    from export.images import list_images, preprocess, read_rgb

    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    return [preprocess(read_rgb(p), size, mean, std) for p in list_images(SAMPLES, "tests", count)]


def tiny_pipeline(folder, **overrides) -> str:
    data = {
        "out_dir": "out",
        "backends": ["onnxruntime"],
        "calibration": {"images": str(SAMPLES), "max_images": 2},
        "parity": {"num_inputs": 1, "int8": {"min_pixel_agreement": 0.5}},
        "check": {"num_images": 1, "warmup": 1, "iterations": 2, "threads": 1},
        # One placement, not auto: which one auto keeps is a timing, and may differ between CPU kinds (VNNI
        # or not) and from run to run on a loaded machine; tests/test_int8_placement.py asks for auto.
        "onnxruntime": {"threads": 1, "int8_placement": "all_ops"},
        "models": [{"name": "bisenetv2", "num_classes": 4, "precisions": ["fp32", "int8"],
                    "input": {"size": [64, 64], "min": [64, 64], "max": [128, 128]}}],
    }
    for key, value in overrides.items():
        data[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def cli(*args: str, module: str = "export", timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` as a user would, from the repository root."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def debian_program(program: str, package: str) -> str:
    """The path of ``program``, installed from Debian's ``package`` with apt-get if missing (CI's .ci/run
    installs it first); the calling test skips, with the reason, only where that cannot be done."""
    found = shutil.which(program)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{program} is not installed and apt-get is unavailable (needs root on Debian)")
    with open("/tmp/segdeploy-apt.lock", "w") as lock:  # pytest-xdist workers may ask at the same time
        fcntl.flock(lock, fcntl.LOCK_EX)
        return shutil.which(program) or _apt_install(program, package)


def _apt_install(program: str, package: str) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", package]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        except subprocess.TimeoutExpired:
            pytest.skip(f"cannot install {package}: {' '.join(command)} timed out")
        if done.returncode != 0:
            pytest.skip(f"cannot install {package}: {' '.join(command)} failed: {done.stderr.strip()[-300:]}")
    found = shutil.which(program, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/bin")
    if not found:
        pytest.skip(f"apt-get installed {package} but there is no {program} on PATH")
    return found
