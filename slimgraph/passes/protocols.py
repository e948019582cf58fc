"""What passes need from a runtime, as protocols: a pass that must run a model (calibration,
sensitivity analysis) receives an executor and never imports a backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import onnx_ir as ir

__all__ = ["Executor", "Session"]


class Session(Protocol):
    """A model loaded in a runtime, ready to run."""

    @property
    def input_names(self) -> Sequence[str]: ...

    @property
    def output_names(self) -> Sequence[str]: ...

    def run(self, feeds: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> list[np.ndarray]: ...


class Executor(Protocol):
    """Loads IR models into sessions."""

    def session(self, model: ir.Model) -> Session: ...
