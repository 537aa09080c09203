"""The ONNX side of ``models/ops/``: each custom op is one file here, declaring with ``export_op``

- the ONNX schema of its ``seg``-domain node (registered with ONNX, so exported graphs pass
  ``onnx.checker`` and document their inputs),
- the translation that makes ``torch.onnx.export(dynamo=True)`` emit that one node instead of tracing
  into the reference implementation,
- a lowering for every target in ``export.compile.rewrites.TARGETS`` (an onnx-graphsurgeon rewrite, registered
  with ``export.compile.rewrites``; rewrites mark the nodes that must stay float).

A module here registers by existing; tests/test_custom_ops.py fails when a ``models.ops`` op lacks any of
the three, and compares every lowering with the op's reference at several sizes.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import onnx
import onnxscript
from onnx.defs import OpSchema

from models.ops import NAMESPACE

DOMAIN = NAMESPACE  # the ONNX domain of every custom node: seg
VERSION = 1
_FLOAT = ["tensor(float)", "tensor(float16)"]
OPSET = onnxscript.values.Opset(DOMAIN, VERSION)


@dataclass(frozen=True)
class ExportOp:
    torch_name: str  # the op's name in models.ops.CUSTOM_OPS
    onnx_name: str  # the node's op type in the seg domain
    schema: OpSchema
    translation: Callable
    lowerings: dict[str, str]  # target -> name of the rewrite in export.compile.rewrites.REWRITES


EXPORT_OPS: dict[str, ExportOp] = {}


def export_op(torch_name: str, onnx_name: str, doc: str, inputs: list[str], outputs: list[str],
              lowerings: dict[str, Callable], attributes: dict[str, str] | None = None) -> None:
    """Declare the ONNX side of ``models.ops.CUSTOM_OPS[torch_name]``; ``lowerings`` maps each target to a
    rewrite function ``fn(graph) -> nodes rewritten`` (one function may serve several targets);
    ``attributes`` names the op's integer arguments (in order, after its tensors) with a description each:
    they become INT attributes of the node."""
    attributes = dict(attributes or {})
    from ..compile.rewrites import register_rewrite

    if torch_name in EXPORT_OPS:
        raise ValueError(f"the ONNX side of custom op {torch_name!r} is declared twice")
    schema = OpSchema(onnx_name, DOMAIN, VERSION, doc=doc,
                      inputs=[OpSchema.FormalParameter(n, "T") for n in inputs],
                      outputs=[OpSchema.FormalParameter(n, "T") for n in outputs],
                      type_constraints=[("T", _FLOAT, "float tensors")],
                      attributes=[OpSchema.Attribute(a, OpSchema.AttrType.INT, d) for a, d in attributes.items()])
    if not onnx.defs.has(onnx_name, DOMAIN):
        onnx.defs.register_schema(schema)
    node = getattr(OPSET, onnx_name)

    def translation(*args):
        tensors, constants = args[:len(inputs)], args[len(inputs):]
        return node(*tensors, **dict(zip(attributes, constants)))

    by_function: dict[Callable, list[str]] = {}
    for target, fn in lowerings.items():
        by_function.setdefault(fn, []).append(target)
    for fn, targets in by_function.items():
        register_rewrite(*targets)(fn)
    EXPORT_OPS[torch_name] = ExportOp(torch_name, onnx_name, schema, translation,
                                      {t: fn.__name__ for t, fn in lowerings.items()})


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


def translation_table() -> dict:
    """What ``torch.onnx.export(custom_translation_table=...)`` takes: each torch custom op -> its node."""
    import torch

    return {getattr(getattr(torch.ops, NAMESPACE), op.torch_name).default: op.translation
            for op in EXPORT_OPS.values()}
