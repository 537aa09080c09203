"""Compilation: PyTorch -> ONNX (``onnx_export``) -> graph surgery per target (``rewrites``, the lowerings in
``export/ops/``) -> TensorRT op-table check (``compat``) -> precision (``precision``, ``accuracy_guard``,
``pre_post``) -> engines, orchestrated by ``build``."""
