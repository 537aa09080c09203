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
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

NAMESPACE = "seg"


@dataclass(frozen=True)
class CustomOp:
    """A registered op. ``sample_inputs(batch, h, w, rng)`` gives numpy inputs at a feature size, for the
    tests that compare every lowering with ``reference`` at several sizes; ``definition``, where the paper
    defines the op position by position, is that definition written out (slow; tests only)."""

    name: str
    op: Callable[..., torch.Tensor]
    reference: Callable[..., torch.Tensor]
    sample_inputs: Callable[[int, int, int, np.random.Generator], list[np.ndarray]]
    definition: Callable[..., np.ndarray] | None = None


CUSTOM_OPS: dict[str, CustomOp] = {}


def define_op(name: str, reference: Callable[..., torch.Tensor], sample_inputs, definition=None):
    """Register ``reference`` (tensors in, one tensor out) as the custom op ``seg::<name>`` and return it.

    The op runs the reference; its fake (meta) kernel is the reference itself run on fake tensors, so shapes
    and strides agree with the real output by construction (``torch.library.opcheck`` checks it); its
    gradient is the reference's, so the op trains exactly like the plain layers."""
    if name in CUSTOM_OPS:
        raise ValueError(f"custom op {name!r} is defined twice")
    schema = torch.library.infer_schema(reference, mutates_args=())
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", _forwarding(reference), mutates_args=(), schema=schema)
    op.register_fake(reference)

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad: torch.Tensor):
        _, vjp = torch.func.vjp(reference, *ctx.saved_tensors)
        return vjp(grad)

    op.register_autograd(backward, setup_context=setup_context)
    CUSTOM_OPS[name] = CustomOp(name, op, reference, sample_inputs, definition)
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
