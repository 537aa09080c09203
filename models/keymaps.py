"""Key-mapping tables: how the parameter names of checkpoints trained elsewhere (Hugging Face transformers,
mmsegmentation, CoinCheung/BiSeNet) become this package's names. Each family declares its tables beside its
model (``CHECKPOINT_KEYS`` in its module, passed to ``register_model(checkpoints=...)``); this module only
applies them. Reading files and choosing a table is export's job (export/compile/checkpoints.py).

A table is a list of ``(pattern, replacement)`` pairs of regular expressions over whole keys, tried in order,
the first that matches wins. A replacement ending in ``#k`` names part ``k`` of one of our tensors: the parts
are concatenated along dim 0 in ``k`` order (a key and a value projection stored apart, ours one ``kv``
Linear). A replacement that is a tuple of replacements splits the source tensor along dim 0 into that many equal
parts, one per replacement (mmseg's packed query/key/value ``in_proj``, ours ``q`` and ``kv``'s two parts);
a replacement holding ``{a,b,c}`` is short for the tuple of its three spellings (nn.MultiheadAttention's
``in_proj_weight`` into our ``q``, ``k``, ``v``).
``reversed_blocks`` names our tensors whose dim ``d`` holds ``n`` equal blocks in the source's opposite order (a
fuse conv reading concatenated stages shallowest first where ours reads them deepest first): they are reversed
after renaming; ``transposed`` names our 2-D tensors the source stores transposed (a Linear's (out, in) weight
where ours is an (in, out) matrix). Source keys that match ``drop`` have no counterpart by design (training-only heads, a classifier of
the pre-training task) and are reported as left out; keys that match nothing are reported as unmapped.
``config`` names what the table's variants build that the names and shapes cannot show, as the source's training
config spells it (``{"backbone.strides": (1, 2, 1, 1), ...}``): a file of the same keys trained with other settings
is another network, and export refuses it where the file carries that config's text.
``conv_norm`` writes the pair of rules for the unit most CNN sources are built of.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class KeyMap:
    """One source's names for one family. ``source`` says which: 'huggingface', 'mmseg', 'coincheung'."""

    source: str
    renames: tuple[tuple[str, str | tuple[str, ...]], ...]
    drop: tuple[str, ...] = ()
    reversed_blocks: tuple[tuple[str, int, int], ...] = ()  # (pattern of our key, dim, number of blocks)
    transposed: tuple[str, ...] = ()  # patterns of our 2-D keys stored transposed in the source
    note: str = ""  # what the source is, for the import report (e.g. the converter or config it follows)
    config: dict[str, object] = field(default_factory=dict, hash=False)  # setting -> the value our variants build


def conv_norm(src: str, dst: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The rules for a conv + BatchNorm unit whose children are ``conv`` and ``bn`` (mmcv's ``ConvModule``,
    CoinCheung's ``ConvBNReLU``) at ``src`` (a pattern), ours a ``ConvNormAct`` (children ``0`` and ``1``) at
    ``dst`` (a replacement, which may refer to ``src``'s groups)."""
    return ((src + r"\.conv\.(?P<param>\w+)", dst + r".0.\g<param>"),
            (src + r"\.bn\.(?P<param>\w+)", dst + r".1.\g<param>"))


@dataclass
class MappedState:
    """A source state dict in our names, and what happened to each source key."""

    state: dict[str, torch.Tensor]
    renamed: int = 0
    fused: list[str] = field(default_factory=list)  # our keys assembled from several source tensors
    split: list[str] = field(default_factory=list)  # source keys cut into several of our tensors
    reordered: list[str] = field(default_factory=list)  # our keys whose blocks were reversed or transposed
    dropped: list[str] = field(default_factory=list)  # source keys left out by design
    unmapped: list[str] = field(default_factory=list)  # source keys no rule matched


def apply_key_map(state: dict[str, torch.Tensor], key_map: KeyMap | None) -> MappedState:
    """``state`` in our names. ``key_map`` None: the names are ours already (nothing renamed)."""
    if key_map is None:
        return MappedState(dict(state))
    rules = [(re.compile(p), r) for p, r in key_map.renames]
    drops = [re.compile(p) for p in key_map.drop]
    out = MappedState({})
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        if any(d.fullmatch(key) for d in drops):
            out.dropped.append(key)
            continue
        rule, repl = next(((rule, repl) for rule, repl in rules if rule.fullmatch(key)), (None, None))
        if rule is None:
            out.unmapped.append(key)
            continue
        out.renamed += 1
        targets = _spellings(repl) if isinstance(repl, str) else list(repl)
        if len(targets) > 1:
            out.split.append(key)
        pieces = [value] if len(targets) == 1 else value.chunk(len(targets), dim=0)
        for target, piece in zip(targets, pieces):
            name, _, part = rule.sub(target, key).partition("#")
            if part:
                parts.setdefault(name, {})[int(part)] = piece
            else:
                out.state[name] = piece
    for name, pieces in parts.items():
        out.state[name] = torch.cat([pieces[k] for k in sorted(pieces)], dim=0)
        out.fused.append(name)
    for pattern, dim, blocks in key_map.reversed_blocks:
        # a dim that does not split evenly is not our shape either: left for the shape check to report
        for name in [n for n in out.state if re.fullmatch(pattern, n) and out.state[n].shape[dim] % blocks == 0]:
            out.state[name] = torch.cat(out.state[name].chunk(blocks, dim=dim)[::-1], dim=dim)
            out.reordered.append(name)
    for pattern in key_map.transposed:
        for name in [n for n in out.state if re.fullmatch(pattern, n) and out.state[n].dim() == 2]:
            out.state[name] = out.state[name].t()
            out.reordered.append(name)
    return out


def _spellings(replacement: str) -> list[str]:
    """``a.{q,k,v}.b`` -> ``[a.q.b, a.k.b, a.v.b]``; a replacement without braces is itself."""
    match = re.search(r"\{([\w,]+)\}", replacement)
    if match is None:
        return [replacement]
    return [replacement[:match.start()] + c + replacement[match.end():] for c in match.group(1).split(",")]
