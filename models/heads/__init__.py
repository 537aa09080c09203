"""Heads shared by the architectures: each takes the backbone's feature list (or one map of it) and returns
logits at the stride of the feature it reads."""
from .fcn import FCNHead
from .psp import PSPHead, PyramidPoolingModule

__all__ = ["FCNHead", "PSPHead", "PyramidPoolingModule"]
