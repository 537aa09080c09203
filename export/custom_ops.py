"""The ONNX side of ``models/ops.py``: each custom op becomes ONE node in the ``seg`` domain.

The schemas are registered with ONNX so that exported graphs pass ``onnx.checker`` and document their
inputs; the translation table tells ``torch.onnx.export(dynamo=True)`` to emit the node instead of tracing
into the reference implementation. Which lowering a node gets is decided later, per target, in
``export/rewrites.py``.
"""
from __future__ import annotations

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema

import models.ops  # noqa: F401  (registers the torch custom ops)

DOMAIN = "seg"
VERSION = 1
_FLOAT = ["tensor(float)", "tensor(float16)"]


def _schema(name: str, doc: str, inputs: list[str], outputs: list[str]) -> OpSchema:
    return OpSchema(
        name, DOMAIN, VERSION, doc=doc,
        inputs=[OpSchema.FormalParameter(n, "T") for n in inputs],
        outputs=[OpSchema.FormalParameter(n, "T") for n in outputs],
        type_constraints=[("T", _FLOAT, "float tensors")],
    )


SCHEMAS = [
    _schema("CrissCrossAttention",
            "Criss-cross attention (CCNet): query, key (B,C',H,W), value (B,C,H,W) -> (B,C,H,W); "
            "reference: models.ops.criss_cross_attention_reference.",
            ["query", "key", "value"], ["output"]),
]

for _s in SCHEMAS:
    if not onnx.defs.has(_s.name, DOMAIN):
        onnx.defs.register_schema(_s)

_seg = onnxscript.values.Opset(DOMAIN, VERSION)


def _criss_cross_attention(query, key, value):
    return _seg.CrissCrossAttention(query, key, value)


TRANSLATION_TABLE = {
    torch.ops.seg.criss_cross_attention.default: _criss_cross_attention,
}
