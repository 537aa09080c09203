"""Stage 0: the model with its weights, checked key by key against the registered network.

Weights come in any layout ``checkpoints.read_checkpoint`` reads (this project's state dicts, Hugging Face
folders and safetensors files, mmsegmentation and CoinCheung checkpoints); ``import_weights`` maps their names
with the family's table and reports what it mapped, what it left out and what is missing; a file whose keys fit
but whose training config says the network is another (``check_config``) is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from engines.manifest import sha256_file
from models import align_corners_families, create_model, get_spec, list_models, training_only_keys
from models.keymaps import KeyMap, MappedState

from ..config import ModelConfig, Pipeline
from ..errors import UserError
from .checkpoints import Checkpoint, map_to_model, read_checkpoint


@dataclass
class ImportReport:
    """What importing a checkpoint into a model did, for `python -m export import` and the build log."""

    layout: str  # what the file is: 'huggingface', 'mmseg', 'state dict'
    names: str  # whose key names: 'ours' or a table's source
    loaded: int  # our keys set from the checkpoint
    fused: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)  # source tensors cut into several of ours
    reshaped: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # source keys with no counterpart by design
    not_loaded: list[str] = field(default_factory=list)  # our training-only keys the checkpoint lacks

    def lines(self) -> list[str]:
        out = [f"detected: {self.layout} checkpoint, {self.names} key names",
               f"mapped: {self.loaded} tensors" + (f" ({len(self.fused)} fused from split tensors)" if self.fused else "")
               + (f" ({len(self.split)} source tensors split into parts)" if self.split else "")]
        if self.reshaped:
            out.append(f"reshaped: {len(self.reshaped)} ({_few(self.reshaped)}): singleton dimensions only")
        if self.left_out:
            out.append(f"left out: {len(self.left_out)} source tensors with no counterpart by design ({_few(self.left_out)})")
        if self.not_loaded:
            out.append(f"not in the checkpoint: {len(self.not_loaded)} training-only tensors ({_few(self.not_loaded)}), "
                       "left at their initial values (not deployed)")
        return out


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def weights_ref(cfg: ModelConfig, pipeline: Pipeline) -> str:
    """models[].weights as read_checkpoint takes it: an hf: repo id as it is, a path relative to the pipeline."""
    return cfg.weights if cfg.weights.startswith("hf:") else str(pipeline.resolve(cfg.weights))


def load_model(cfg: ModelConfig, pipeline: Pipeline) -> tuple[torch.nn.Module, str]:
    """The model with its weights, and the weights' hash. No weights file: random init from ``cfg.seed``."""
    checkpoint = None if cfg.weights is None else read_checkpoint(weights_ref(cfg, pipeline))
    align_corners = resolve_align_corners(cfg.name, cfg.align_corners, checkpoint)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.name, num_classes=cfg.num_classes, align_corners=align_corners)
    if checkpoint is None:
        return model.eval(), f"random-init:seed={cfg.seed}"
    check_classes(cfg, checkpoint)
    import_weights(model, cfg.name, checkpoint, f"{cfg.name} with num_classes={cfg.num_classes}")
    return model.eval(), sha256_file(checkpoint.path)


def resolve_align_corners(name: str, wanted: bool | None, checkpoint: Checkpoint | None) -> bool:
    """The ``align_corners`` the variant ``name`` is built with: ``wanted`` (pipeline.yaml's
    models[].align_corners), else the checkpoint's config's (mmseg's decode-head option), else False. A value that
    disagrees with the checkpoint's config, or True for a variant that resizes with False only, is an error."""
    found = checkpoint.align_corners if checkpoint is not None else None
    if wanted is not None and found is not None and wanted != found:
        raise UserError(f"{name}: pipeline.yaml says align_corners {str(wanted).lower()} but {checkpoint.path} was "
                        f"trained with align_corners={found} (its config, {checkpoint.align_corners_from}); remove "
                        "models[].align_corners to take the checkpoint's, or fix it")
    value = bool(found) if wanted is None else wanted
    if value and not get_spec(name).takes_align_corners:
        asked = ("pipeline.yaml says align_corners true" if wanted else
                 f"{checkpoint.path} was trained with align_corners=True (its config, {checkpoint.align_corners_from})")
        raise UserError(f"{name}: {asked}, but {name} resizes with align_corners=False only, so its outputs would "
                        f"differ; the families that take true: {', '.join(align_corners_families())}")
    return value


def check_classes(cfg: ModelConfig, checkpoint: Checkpoint) -> None:
    """A class count in pipeline.yaml that disagrees with the checkpoint's own class list is an error."""
    if checkpoint.classes is not None and len(checkpoint.classes) != cfg.num_classes:
        raise UserError(f"{cfg.name}: pipeline.yaml says num_classes {cfg.num_classes} but {checkpoint.path} was "
                        f"trained for {len(checkpoint.classes)} classes ({', '.join(checkpoint.classes[:3])}, ...); "
                        "remove num_classes/classes/palette from models[] to take the checkpoint's, or fix them")


def import_weights(model: torch.nn.Module, name: str, checkpoint: Checkpoint, what: str | None = None) -> ImportReport:
    """Load ``checkpoint`` into ``model`` (the registered variant ``name``) or raise a UserError that names the
    missing, unexpected and mis-shaped keys, and the family's variant the file fits where another one does, or the
    settings its config says that the variant does not build (``check_config``); nothing is loaded unless every
    deployed tensor fits."""
    own = model.state_dict()
    fit = _fit(checkpoint, name, own, training_only_keys(model))
    if fit.problems:
        names = "our" if fit.table is None else f"{fit.table.source}"
        hint = _better_variant(checkpoint, name, getattr(model, "num_classes", None), fit.score)
        raise UserError(f"weights {checkpoint.path} ({checkpoint.layout} checkpoint, {names} key names) do not fit "
                        f"{what or name}: " + "; ".join(fit.problems) + hint)
    check_config(checkpoint, name, fit.table)
    state, mapped = fit.state, fit.mapped
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return ImportReport(checkpoint.layout, "ours" if fit.table is None else fit.table.source, len(state), mapped.fused,
                        mapped.split, fit.reshaped, mapped.dropped, sorted(k for k in fit.optional if k not in state))


def check_config(checkpoint: Checkpoint, name: str, table: KeyMap | None) -> None:
    """A file whose keys and shapes fit ``name`` through ``table`` but whose config says settings other than the
    table's variants build (``KeyMap.config``: mmseg's fcn-d6_r50-d16 and pspnet_r50-d32 files on the *-d8
    variants) is another network: refused, in one line naming each setting. A file whose config does not say (or
    that carries none) cannot be told apart and imports."""
    expected = table.config if table is not None else {}
    wrong = [k for k, v in expected.items() if checkpoint.config.get(k, v) != v]
    if not wrong:
        return
    network = {**expected, **checkpoint.config}  # the file's, ours where its config does not say
    builds = [s.name for s in list_models() if s.family == get_spec(name).family and any(
        t.source == table.source and t.config and t.config.items() <= network.items() for t in s.checkpoints)]
    stride = f" (output stride {_output_stride(network)})" if "backbone.strides" in wrong else ""
    advice = (f"the registered variant {builds[0]} builds it: use that name (models[].name, --model)" if builds else
              f"no registered variant builds that network: use a file trained with {name}'s settings"
              + (f" ({table.source}'s *-d{_output_stride(expected)} files)" if "backbone.strides" in expected else ""))
    raise UserError(f"weights {checkpoint.path} have {name}'s keys and shapes but are another network: its config "
                    f"({checkpoint.config_from}) says {_settings(checkpoint.config, wrong)}{stride} where {name} "
                    f"builds {_settings(expected, wrong)}; {advice}")


def _settings(values: dict[str, object], keys: list[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items() if k in keys)


def _output_stride(settings: dict[str, object]) -> int:
    """A ResNet's output stride from its stages' strides: its stem (a stride-2 conv and max pooling) gives 4."""
    return 4 * math.prod(settings["backbone.strides"])


@dataclass
class _Fit:
    """A checkpoint mapped onto one variant's state dict: what would load, and why not."""

    state: dict[str, torch.Tensor]
    mapped: MappedState
    table: KeyMap | None
    optional: set[str]
    reshaped: list[str]
    problems: list[str]  # one clause each for missing keys, unexpected keys and shape mismatches
    score: int  # our deployed keys the checkpoint sets with a fitting shape, less one per problem key


def _fit(checkpoint: Checkpoint, name: str, own: dict[str, torch.Tensor], optional: set[str]) -> _Fit:
    mapped, table = map_to_model(checkpoint, name, set(own))
    state = dict(mapped.state)
    # auxiliary heads serve training only: checkpoints may leave them out
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own] + mapped.unmapped
    shapes, reshaped = [], []
    for k, ours in own.items():
        if k in state and state[k].shape != ours.shape:
            # Only singleton dimensions may differ (a 0-dim scale stored for a (1,) one, a 1x1 conv for a Linear).
            if state[k].numel() == ours.numel() and [d for d in state[k].shape if d != 1] == [d for d in ours.shape if d != 1]:
                state[k] = state[k].reshape(ours.shape)
                reshaped.append(k)
            else:
                shapes.append(f"{k} {tuple(state[k].shape)} vs {tuple(ours.shape)}")
    problems = [p for p in (f"missing keys: {_few(missing)}" if missing else "",
                            f"unexpected keys: {_few(unexpected)}" if unexpected else "",
                            f"shape mismatch: {_few(shapes)}" if shapes else "") if p]
    score = sum(1 for k in own if k in state and state[k].shape == own[k].shape and k not in optional)
    return _Fit(state, mapped, table, optional, reshaped, problems, score - len(missing) - len(unexpected) - len(shapes))


def _better_variant(checkpoint: Checkpoint, name: str, num_classes: int | None, score: int) -> str:
    """A clause naming the registered variant of ``name``'s family that fits the checkpoint (a zoo file's stem or
    biases belong to a ``_v1c`` / ``_mmseg`` variant), or that fits it best where none fits; empty where no other
    variant does better. The variants are built on the meta device: shapes only, nothing allocated."""
    family = get_spec(name).family
    best: tuple[int, str, bool] | None = None
    for spec in list_models():
        if spec.family != family or spec.name == name:
            continue
        with torch.device("meta"):
            candidate = create_model(spec.name, **({} if num_classes is None else {"num_classes": num_classes}))
        fit = _fit(checkpoint, spec.name, candidate.state_dict(), training_only_keys(candidate))
        if fit.score > score and (best is None or (not fit.problems, fit.score) > (best[2], best[0])):
            best = (fit.score, spec.name, not fit.problems)
    if best is None:
        return ""
    if best[2]:
        return f"; the file fits the registered variant {best[1]}: use that name (models[].name, --model)"
    return f"; of the {family} variants, {best[1]} comes closest to the file (it does not fit that one either)"
