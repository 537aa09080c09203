"""PyTorch definitions of segmentation architectures. Importing this package registers every model.

A module of this package registers its variants by containing ``@register_model`` (architecture files
only: shared parts live in ``backbones/``, ``heads/``, ``ops/``, ``base.py`` and ``upsampling.py``); a new
architecture is a new file here, with no import list to edit.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from .registry import (MODELS, ModelSpec, align_corners_families, count_parameters, create_model, get_spec,
                       list_models, register_model, training_only_keys)

for _module in pkgutil.iter_modules(__path__):
    _path = Path(__path__[0]) / (_module.name + ("/__init__.py" if _module.ispkg else ".py"))
    if not _module.name.startswith("_") and "@register_model" in _path.read_text():
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "ModelSpec", "align_corners_families", "count_parameters", "create_model", "get_spec", "list_models", "register_model",
           "training_only_keys"]
