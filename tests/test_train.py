"""Training: a few deterministic steps on synthetic scenes make the loss fall, and the saved weights load."""
from __future__ import annotations

import json

import numpy as np
import torch

from training.train import main, train


def test_a_few_steps_lower_the_loss_deterministically():
    torch.set_num_threads(1)
    _, first = train("bisenetv2", "synthetic", 12, (64, 64), 4, 2e-3, seed=0, log_every=0, val_images=0)
    _, again = train("bisenetv2", "synthetic", 12, (64, 64), 4, 2e-3, seed=0, log_every=0, val_images=0)
    losses = first["losses"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert losses == again["losses"]  # same seed, same threads: same run


def test_saved_weights_leave_out_aux_heads_and_load_for_export(tmp_path):
    from export.compile.weights import load_model
    from export.config import ModelConfig, Pipeline

    out = tmp_path / "w.pt"
    assert main(["--model", "bisenetv2", "--steps", "2", "--size", "64x64", "--batch", "2", "--threads", "1",
                 "--out", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert state and not any(k.startswith("aux_heads.") for k in state)
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["classes"][0] == "road" and "validation" in info and info["command"].startswith("python -m training")
    cfg = ModelConfig(name="bisenetv2", num_classes=len(info["classes"]), weights=str(out))
    model, weights_hash = load_model(cfg, Pipeline(models=[cfg], base_dir=tmp_path))
    assert len(weights_hash) == 64
    torch.testing.assert_close(model.state_dict()["head.seg.2.weight"], state["head.seg.2.weight"])
