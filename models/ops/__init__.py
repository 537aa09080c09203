"""Custom operators: ops that deploy differently on different targets.

Each op is one file here: a pure-PyTorch reference implementation and ``define_op`` turning it into a
``torch.library`` custom op ``seg::<name>``. Exported to ONNX the op stays ONE node in the ``seg`` domain,
and its file under ``export/ops/`` says how each target lowers it. Model code calls the op and never asks
whether it is being exported. A module here registers by existing (it calls ``define_op``); the op tests
(tests/test_custom_ops.py) pick every registered op up.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

NAMESPACE = "seg"


@dataclass(frozen=True)
class CustomOp:
    """A registered op. ``sample_inputs(batch, h, w, rng)`` gives numpy inputs at a feature size, for the
    tests that compare every lowering with ``reference`` at several sizes; ``definition``, where the paper
    defines the op position by position, is that definition written out (slow; tests only).
    ``attributes``: the op's non-tensor arguments (after its tensors, e.g. a bin count) with the values the
    generic tests use; at export they become the node's attributes."""

    name: str
    op: Callable[..., torch.Tensor]
    reference: Callable[..., torch.Tensor]
    sample_inputs: Callable[[int, int, int, np.random.Generator], list[np.ndarray]]
    definition: Callable[..., np.ndarray] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


CUSTOM_OPS: dict[str, CustomOp] = {}


def define_op(name: str, reference: Callable[..., torch.Tensor], sample_inputs, definition=None,
              attributes: dict[str, Any] | None = None):
    """Register ``reference`` (tensors in, then any integer arguments named in ``attributes``; one tensor
    out) as the custom op ``seg::<name>`` and return it.

    The op runs the reference; its fake (meta) kernel is the reference itself run on fake tensors, so shapes
    and strides agree with the real output by construction (``torch.library.opcheck`` checks it); its
    gradient is the reference's, so the op trains exactly like the plain layers."""
    if name in CUSTOM_OPS:
        raise ValueError(f"custom op {name!r} is defined twice")
    schema = torch.library.infer_schema(reference, mutates_args=())
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", _forwarding(reference), mutates_args=(), schema=schema)
    op.register_fake(reference)

    def setup_context(ctx, inputs, output) -> None:
        ctx.constants = [None if isinstance(x, torch.Tensor) else x for x in inputs]
        ctx.save_for_backward(*(x for x in inputs if isinstance(x, torch.Tensor)))

    def backward(ctx, grad: torch.Tensor):
        tensor_at = [i for i, c in enumerate(ctx.constants) if c is None]

        def of_tensors(*tensors):
            args = list(ctx.constants)
            for i, t in zip(tensor_at, tensors):
                args[i] = t
            return reference(*args)

        _, vjp = torch.func.vjp(of_tensors, *ctx.saved_tensors)
        grads = iter(vjp(grad))
        return tuple(next(grads) if c is None else None for c in ctx.constants)

    op.register_autograd(backward, setup_context=setup_context)
    CUSTOM_OPS[name] = CustomOp(name, op, reference, sample_inputs, definition, dict(attributes or {}))
    return op


def _forwarding(reference: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The op's implementation: a fresh function that calls the reference (the schema is given explicitly,
    so its own signature does not matter)."""
    def impl(*args):
        return reference(*args)

    impl.__name__ = reference.__name__.removesuffix("_reference")
    impl.__doc__ = reference.__doc__
    return impl


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["CUSTOM_OPS", "CustomOp", "NAMESPACE", "define_op"]
