"""Stage 0: the model with its weights, checked key by key against the registered network."""
from __future__ import annotations

import torch

from engines.manifest import sha256_file
from models import create_model, training_only_keys

from ..config import ModelConfig, Pipeline
from ..errors import UserError


def load_model(cfg: ModelConfig, pipeline: Pipeline) -> tuple[torch.nn.Module, str]:
    """The model with its weights, and the weights' hash. No weights file: random init from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.name, num_classes=cfg.num_classes)
    if cfg.weights is None:
        return model.eval(), f"random-init:seed={cfg.seed}"
    path = pipeline.resolve(cfg.weights)
    if not path.is_file():
        raise UserError(f"weights {path} for {cfg.name} do not exist; fix models[].weights in pipeline.yaml")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for damaged files
        raise UserError(f"weights {path} cannot be read as a PyTorch state dict ({type(exc).__name__}); "
                        "re-save them with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict):
        raise UserError(f"weights {path} hold a {type(state).__name__}, not a state dict; "
                        "save them with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    # Auxiliary heads only serve training and are dropped at export: checkpoints may leave them out.
    optional = training_only_keys(model)
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        parts = [f"missing keys: {few(missing)}" if missing else "", f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"shape mismatch: {few(shapes)}" if shapes else ""]
        raise UserError(f"weights {path} do not fit {cfg.name} with num_classes={cfg.num_classes}: "
                        + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=False)  # every deployed key was checked above
    return model.eval(), sha256_file(path)
