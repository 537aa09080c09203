"""Reading checkpoints trained elsewhere, without running code from them.

``read_checkpoint(ref)`` takes what users have and returns its tensors and what it says about its classes:

- a Hugging Face model folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), one of
  its ``.safetensors`` files, or ``hf:<repo id>`` resolved in the local Hugging Face cache only;
- an mmsegmentation / mmengine checkpoint (``state_dict`` + ``meta``: ``meta.dataset_meta`` in 1.x,
  ``meta.CLASSES`` / ``meta.PALETTE`` in 0.x; the training config's text, ``meta.cfg`` in 1.x and
  ``meta.config`` in 0.x, says the decode head's ``align_corners`` and the backbone's strides and dilations,
  read as text and never executed);
- CoinCheung/BiSeNet's files and this project's own, plain state dicts.

``.pth``/``.pt``/``.bin`` files load with ``torch.load(weights_only=True)``: tensors and plain containers
only. mmengine 1.x files also pickle training logs (``message_hub``: mmengine's HistoryBuffer holding numpy
arrays); those few named classes load as inert placeholders, numpy arrays as arrays, and anything else a
file would need to execute is refused with the command that converts it. ``.safetensors`` is read with
safetensors, which holds no code at all.

Which names the tensors have (ours, or a table in the family's ``CHECKPOINT_KEYS``) is decided by
``map_to_model`` from the keys themselves.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models import get_spec
from models.keymaps import KeyMap, MappedState, apply_key_map

from ..errors import UserError

# What converts a checkpoint this loader refuses, on a machine where its source is installed and trusted: the
# weights, the classes and palette (1.x dataset_meta, 0.x CLASSES / PALETTE) and the config text (1.x cfg, 0.x
# config: the decode head's align_corners is read from it), all plain data.
CONVERT_COMMAND = ("python -c \"import torch; c = torch.load('IN.pth', weights_only=False); m = c.get('meta') or {}; "
                   "torch.save({'state_dict': c['state_dict'], 'meta': {k: m[k] for k in ('dataset_meta', 'CLASSES', "
                   "'PALETTE', 'cfg', 'config') if k in m}}, 'OUT.pth')\"")


@dataclass
class Checkpoint:
    """Tensors of a checkpoint and the metadata it carries. ``layout``: what the file was recognised as.
    ``align_corners``: the decode head's, as the file's config says it (None: the file carries no config that
    says), and ``align_corners_from`` where it was read (``meta.cfg``, ``meta.config``, ``segdeploy``).
    ``config``: the settings ``config_settings`` reads from that text (empty: no text says), from ``config_from``."""

    path: Path
    layout: str  # 'huggingface', 'mmseg', 'state dict'
    state: dict[str, torch.Tensor]
    classes: list[str] | None = None
    palette: list[list[int]] | None = None
    notes: list[str] = field(default_factory=list)
    align_corners: bool | None = None
    align_corners_from: str | None = None
    config: dict[str, object] = field(default_factory=dict)
    config_from: str | None = None


def read_checkpoint(ref: str | Path, base: Path | None = None) -> Checkpoint:
    """Read ``ref`` (a path, relative to ``base`` if given, or ``hf:<repo id>``). Errors are one line."""
    text = str(ref)
    if text.startswith("hf:"):
        return _read_hf_folder(_hf_cache_folder(text[3:]))
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_dir():
        return _read_hf_folder(path)
    if not path.is_file():
        raise UserError(f"weights {path} do not exist; fix models[].weights in pipeline.yaml")
    if path.suffix == ".safetensors":
        config = path.parent / "config.json"
        return _hf_checkpoint(path, _read_safetensors(path), config if config.is_file() else None)
    return _read_torch(path)


# ---------------------------------------------------------------------------------------------- Hugging Face

def _hf_cache_folder(repo_id: str) -> Path:
    """The newest snapshot of ``repo_id`` in the local Hugging Face cache (never the network)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub")
    root = Path(hub) / ("models--" + repo_id.replace("/", "--"))
    ref = root / "refs" / "main"
    snapshot = root / "snapshots" / ref.read_text().strip() if ref.is_file() else None
    if snapshot is None or not snapshot.is_dir():
        snapshots = sorted((root / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        snapshot = snapshots[-1] if snapshots else None
    if snapshot is None:
        raise UserError(f"hf:{repo_id} is not in the Hugging Face cache ({hub}); on a machine with a network run "
                        f"`huggingface-cli download {repo_id}` and copy its cache folder here (or point "
                        "models[].weights at the downloaded folder)")
    return snapshot


def _read_hf_folder(folder: Path) -> Checkpoint:
    config = folder / "config.json"
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            weights = folder / name
            break
    else:
        raise UserError(f"{folder} is not a Hugging Face model folder: it has no model.safetensors or "
                        "pytorch_model.bin (sharded checkpoints: merge them with save_pretrained first)")
    state = _read_safetensors(weights) if weights.suffix == ".safetensors" else _read_torch(weights).state
    return _hf_checkpoint(weights, state, config if config.is_file() else None)


def _hf_checkpoint(path: Path, state: dict, config: Path | None) -> Checkpoint:
    classes = None
    if config is not None:
        try:
            id2label = json.loads(config.read_text()).get("id2label") or {}
        except (OSError, ValueError) as exc:
            raise UserError(f"{config} is not readable JSON ({exc}); re-save the model with save_pretrained") from None
        if id2label:
            classes = [id2label[k] for k in sorted(id2label, key=int)]
    return Checkpoint(path, "huggingface", state, classes)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"weights {path} are not a readable safetensors file ({exc}); download it again") from None


# ------------------------------------------------------------------------------------------ torch pickles

class _Placeholder:
    """Stands in for the training-log objects mmengine pickles beside the weights; holds nothing."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


# Classes mmengine 1.x checkpoints pickle outside the weights (message_hub's logs), loaded as placeholders;
# numpy's array reconstruction is allowed as torch's documentation describes (data, not code).
_MMENGINE_LOG_CLASSES = ["mmengine.logging.history_buffer.HistoryBuffer", "mmengine.logging.message_hub.MessageHub"]


def _safe_globals() -> list:
    import numpy as np

    allowed: list = [(_Placeholder, name) for name in _MMENGINE_LOG_CLASSES]
    core = getattr(np, "_core", None) or np.core
    for module, names in (("numpy._core.multiarray", ("_reconstruct", "scalar")),
                          ("numpy.core.multiarray", ("_reconstruct", "scalar"))):
        for name in names:
            allowed.append((getattr(core.multiarray, name), f"{module}.{name}"))
    allowed += [np.ndarray, np.dtype, type(np.dtype("float32")), type(np.dtype("int64")), type(np.dtype("float64"))]
    return allowed


def _read_torch(path: Path) -> Checkpoint:
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise UserError(f"weights {path} need code to load ({', '.join(unsafe[:3])}), which is never run here; "
                            f"where you trust the file and its code is installed, convert it with {CONVERT_COMMAND} "
                            "(IN/OUT your paths)") from None
        raise UserError(f"weights {path} cannot be read as a PyTorch checkpoint ({type(exc).__name__}: the file is "
                        "damaged or truncated); download or save it again") from None
    return _from_container(path, obj)


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # the listing is only for the message; a file it cannot parse is refused all the same
        return []


def _from_container(path: Path, obj) -> Checkpoint:
    if not isinstance(obj, dict):
        raise UserError(f"weights {path} hold a {type(obj).__name__}, not a state dict; "
                        "save them with torch.save(model.state_dict(), path)")
    if isinstance(obj.get("state_dict"), dict) and isinstance(obj.get("meta"), dict):  # mmengine / mmcv runner
        meta = obj["meta"]
        dataset = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
        classes = dataset.get("classes", meta.get("CLASSES"))
        palette = dataset.get("palette", meta.get("PALETTE"))
        checkpoint = Checkpoint(path, "mmseg", _tensors(path, obj["state_dict"]), _names(classes), _colours(palette))
        for key in ("cfg", "config"):  # mmengine Runner.save_checkpoint; mmseg 0.x tools/train.py (mmcv runner)
            text = meta.get(key)
            if not isinstance(text, str):
                continue
            found, settings = config_align_corners(text), config_settings(text)
            if found is not None and checkpoint.align_corners is None:
                checkpoint.align_corners, checkpoint.align_corners_from = found, f"meta.{key}"
            if settings and not checkpoint.config:
                checkpoint.config, checkpoint.config_from = settings, f"meta.{key}"
        return checkpoint
    if isinstance(obj.get("segdeploy"), dict) and isinstance(obj.get("state_dict"), dict):  # `export import`
        meta = obj["segdeploy"]
        found = meta.get("align_corners") if isinstance(meta.get("align_corners"), bool) else None
        return Checkpoint(path, "state dict", _tensors(path, obj["state_dict"]), _names(meta.get("classes")),
                          _colours(meta.get("palette")), align_corners=found,
                          align_corners_from="segdeploy" if found is not None else None)
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            return Checkpoint(path, "state dict", _tensors(path, obj[key]))
    return Checkpoint(path, "state dict", _tensors(path, obj))


# ------------------------------------------------------------------------------------------- config text

# A key as mmengine's and mmcv's Config.pretty_text write it: ``key=value``, or ``'key': value`` in a dict whose
# keys are not all identifiers (mmengine/config/config.py, pretty_text: _format_basic_types, _format_dict).
_KEY = r"(?:\b{0}\s*=|['\"]{0}['\"]\s*:)\s*"


def config_align_corners(text: str) -> bool | None:
    """The decode head's ``align_corners`` in an mmseg config's text (``Config.pretty_text``, what mmseg 0.x and
    mmengine store in a checkpoint, or a config file as written): True where the ``decode_head`` entry, or any head
    of a cascade's list, sets ``align_corners=True``; False where it sets False or none (BaseDecodeHead's
    default); None where the text has no ``decode_head``. The text is searched, never executed. mmseg's own
    model options are nowhere else: its EncoderDecoder takes ``self.align_corners`` from the decode head
    (mmseg/models/segmentors/encoder_decoder.py) and the auxiliary heads' serve training only."""
    span = _entry(text, "decode_head")
    if span is None:
        return None
    values = re.findall(_KEY.format("align_corners") + r"(True|False)\b", span)
    return "True" in values


# mmseg's values where a config leaves a setting out: ResNet's (and ResNetV1c's) strides and dilations
# (mmseg/models/backbones/resnet.py, 03b0197), FCNHead's conv dilation (decode_heads/fcn_head.py, "Default: 1"),
# which NLHead, GCHead and CCHead inherit and the other heads do not take.
CONFIG_DEFAULTS: dict[str, object] = {"backbone.strides": (1, 2, 2, 2), "backbone.dilations": (1, 1, 1, 1),
                                      "decode_head.dilation": 1}


def config_settings(text: str) -> dict[str, object]:
    """What an mmseg config's text says of the model that a checkpoint's keys and shapes do not show: the
    backbone's ``strides`` and ``dilations`` and the decode head's ``dilation`` (``CONFIG_DEFAULTS``), as a
    tuple or an int each, mmseg's default where the entry leaves one out (``Config.pretty_text``, what checkpoints
    carry, is the merged config). An entry the text does not have (no ``backbone``) gives none of its settings, nor
    does a value not written as numbers, nor a setting a config file as written leaves to its ``_base_`` files,
    which are not here. The text is searched within ``model``, never executed."""
    model = _entry(text, "model") or text
    inherits = re.search(r"^_base_\s*=", text, re.M) is not None
    found: dict[str, object] = {}
    for setting, default in CONFIG_DEFAULTS.items():
        entry, key = setting.split(".")
        span = _entry(model, entry)
        if span is None:
            continue  # no such entry: the text says nothing of it
        at = re.search(_KEY.format(key), span)
        if at is None:
            if not inherits:
                found[setting] = default
        elif isinstance(default, tuple):
            value = _bracketed(span, at.end())
            if value is not None and re.fullmatch(r"[(\[][\d\s,]*[)\]]", value):
                found[setting] = tuple(int(v) for v in re.findall(r"\d+", value))
        elif number := re.compile(r"\d+\b").match(span, at.end()):
            found[setting] = int(number.group())
    return found


def _entry(text: str, key: str) -> str | None:
    """The bracketed value of the first ``key`` in ``text`` (``key=dict(...)``, ``'key': {...}``); None where
    there is none."""
    at = re.search(_KEY.format(key), text)
    return _bracketed(text, at.end()) if at else None


def _bracketed(text: str, start: int) -> str | None:
    """The bracketed expression (``dict(...)``, ``[...]``, ``{...}``) that starts at ``start``, brackets inside
    string literals skipped; None where none starts there or it does not close."""
    match = re.compile(r"(?:dict)?\s*([(\[{])").match(text, start)
    if match is None:
        return None
    depth, quote, i = 0, None, match.start(1)
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return text[match.start(1):i + 1]
        i += 1
    return None


def _tensors(path: Path, state: dict) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"weights {path} hold no tensors; save them with torch.save(model.state_dict(), path)")
    # DataParallel / DDP wrappers prefix every key with 'module.'.
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _names(classes) -> list[str] | None:
    return [str(c) for c in classes] if isinstance(classes, (list, tuple)) and classes else None


def _colours(palette) -> list[list[int]] | None:
    try:
        colours = [[int(v) for v in c] for c in palette] if palette is not None else None
    except TypeError:
        return None
    return colours if colours and all(len(c) == 3 for c in colours) else None


# --------------------------------------------------------------------------------- names -> the model's

def map_to_model(checkpoint: Checkpoint, model_name: str, own_keys: set[str]) -> tuple[MappedState, KeyMap | None]:
    """The checkpoint in the model's names, by whichever of its names (ours, or one of the family's tables)
    lands the most keys on the model's; the table is None for our own names."""
    candidates: list[KeyMap | None] = [None, *get_spec(model_name).checkpoints]
    best = max(((apply_key_map(checkpoint.state, c), c) for c in candidates),
               key=lambda mc: len(own_keys & set(mc[0].state)))
    return best
