"""The one small interface every engine runner has, so export/check and runtime/ treat backends alike."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import numpy as np


class EngineError(Exception):
    """A problem with an engine file or backend that the user can fix; the message says how."""


class Runner(ABC):
    """Life cycle like Polygraphy's runners: ``activate`` allocates, ``infer`` runs, ``deactivate`` frees.

    Use as a context manager. ``infer`` takes and returns host numpy arrays keyed by tensor name
    (``images`` in, ``logits`` out for every engine this project builds).
    """

    name = "runner"

    def __init__(self) -> None:
        self.is_active = False

    def activate(self) -> "Runner":
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise EngineError(f"{self.name}: call activate() (or use it as a context manager) before infer()")
        return self.infer_impl(feed)

    def submit(self, feed: Mapping[str, np.ndarray]) -> object:
        """Start inference on ``feed`` and return a ticket for ``collect``. Backends that can overlap the copy
        of one batch with the inference of the previous one (TensorRT, two buffer sets) override this pair;
        the default runs synchronously, so callers can always pipeline submit(n+1) before collect(n)."""
        return self.infer(feed)

    def collect(self, ticket: object) -> dict[str, np.ndarray]:
        """The outputs of a ``submit``, in submission order."""
        return ticket  # type: ignore[return-value]

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    @abstractmethod
    def activate_impl(self) -> None:
        """Load the engine and allocate what inference needs."""

    @abstractmethod
    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""

    @abstractmethod
    def deactivate_impl(self) -> None:
        """Free everything activate_impl allocated."""
