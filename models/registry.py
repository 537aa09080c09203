"""The model registry: one plain dict filled by a decorator.

Every architecture registers its variant builders here. A builder takes keyword arguments
(``num_classes`` at least) and returns an ``nn.Module`` whose ``forward(images)`` returns logits of shape
``(N, num_classes, H, W)`` at the input size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """What export needs to know about a registered variant, without building it.

    ``size_divisor``: H and W must be multiples of it (the network's output stride, or a larger value where
    padding arithmetic demands). ``dynamic_hw``: whether one exported graph serves any H and W that
    satisfy ``size_divisor``; a model that bakes a size into its weights (e.g. learned position
    embeddings) says False and is exported at one size. ``test_kwargs``: builder arguments that make the
    variant small enough for numerical tests (export, parity in every precision) while keeping every kind of
    block it has (narrower, or fewer repeats of a block); full sizes are only instantiated, for parameter
    counts, and measured in benchmarks. ``output_stride``: the stride of the head's logits before the final
    upsampling. ``custom_ops``: the ``models.ops`` ops the network calls (each becomes one ``seg`` node at
    export and needs a lowering per target). ``maps_follow_input``: False where inner maps are not input /
    stride (valid convolutions, window-by-window classification), so stride cannot be measured on them and
    the family's tests check its size arithmetic instead. ``checkpoints``: the key-mapping tables
    (``models.keymaps.KeyMap``) of the checkpoint layouts trained elsewhere that load into this variant.
    ``takes_align_corners``: the builder takes ``align_corners=True``, mmsegmentation's decode-head option (its
    Cityscapes ``*_769x769_*`` configs set it), and then resizes as mmseg does with it: the final upsampling of
    the logits and every resize inside the head that mmseg's head makes with that option. Every variant takes
    ``align_corners=False`` through ``create_model``. Tests check all of these against the network.
    """

    name: str
    family: str
    builder: Callable[..., nn.Module]
    size_divisor: int = 32
    dynamic_hw: bool = True
    description: str = ""
    test_kwargs: dict = field(default_factory=dict)
    output_stride: int | None = None
    custom_ops: tuple[str, ...] = ()
    maps_follow_input: bool = True
    checkpoints: tuple = ()
    takes_align_corners: bool = False


MODELS: dict[str, ModelSpec] = {}


def register_model(family: str, *, size_divisor: int = 32, dynamic_hw: bool = True, description: str = "",
                   test_kwargs: dict | None = None, output_stride: int | None = None,
                   custom_ops: tuple[str, ...] = (), maps_follow_input: bool = True, checkpoints: tuple = (),
                   takes_align_corners: bool = False):
    """Register a variant builder under its function name: ``@register_model("segformer")``."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice ({MODELS[name].builder.__module__} and {fn.__module__})")
        MODELS[name] = ModelSpec(name, family, fn, size_divisor, dynamic_hw, description or (fn.__doc__ or "").strip(),
                                 dict(test_kwargs or {}), output_stride, tuple(custom_ops), maps_follow_input,
                                 tuple(checkpoints), takes_align_corners)
        return fn

    return decorator


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered variant; an unknown name lists the known ones."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {' '.join(sorted(MODELS))}")
    return MODELS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered variant with fresh (untrained) weights. ``align_corners`` (default False) is taken
    by every variant; True only by those whose spec says ``takes_align_corners``, else a ValueError."""
    spec = get_spec(name)
    if not spec.takes_align_corners and "align_corners" in kwargs:
        if kwargs.pop("align_corners"):
            raise ValueError(f"{name} resizes with align_corners=False only; align_corners=True is taken by the "
                             f"{', '.join(align_corners_families())} variants")
    return spec.builder(**kwargs)


def align_corners_families() -> list[str]:
    """The families with variants that take ``align_corners=True``."""
    return sorted({s.family for s in MODELS.values() if s.takes_align_corners})


def list_models() -> list[ModelSpec]:
    """All registered variants, grouped by family then name."""
    return sorted(MODELS.values(), key=lambda s: (s.family, s.name))


def training_only_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the auxiliary training heads (``model.aux_heads``): dropped at export, so
    checkpoints may leave them out and saved deployment weights do."""
    aux = getattr(model, "aux_heads", None)
    return {f"aux_heads.{k}" for k in aux.state_dict()} if aux is not None else set()


def count_parameters(model: nn.Module) -> int:
    """Parameters of the deployed network: auxiliary training heads (``model.aux_heads``) are left out."""
    aux = getattr(model, "aux_heads", None)
    skip = {id(p) for p in aux.parameters()} if aux is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
