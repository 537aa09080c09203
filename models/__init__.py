"""PyTorch definitions of segmentation architectures. Importing this package registers every model."""
from .registry import MODELS, ModelSpec, count_parameters, create_model, get_spec, list_models, register_model

from . import bisenetv2, ccnet, segformer  # noqa: E402,F401  (registration side effect)

__all__ = ["MODELS", "ModelSpec", "count_parameters", "create_model", "get_spec", "list_models", "register_model"]
