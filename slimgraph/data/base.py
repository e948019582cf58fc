"""What the compiler needs from data: batches to feed a model, and metrics over its outputs.

Sources stream: they read and decode one batch at a time, so memory does not grow with the
number of samples. Metrics accumulate running counts, never the outputs themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Batch", "DataSource", "Metric"]


@dataclass(frozen=True)
class Batch:
    """One batch of model inputs and, for labelled data, the labels.

    ``inputs`` is either positional (bound to the model's inputs in order) or keyed by the
    model's input names, for sources that know them (tokenised text gives ``input_ids``,
    ``attention_mask``...).
    """

    inputs: tuple[np.ndarray, ...] | Mapping[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def size(self) -> int:
        first = next(iter(self.inputs.values())) if isinstance(self.inputs, Mapping) else (
            self.inputs[0]
        )
        return int(first.shape[0])


@runtime_checkable
class DataSource(Protocol):
    """A finite, re-iterable stream of batches in a fixed order."""

    def __len__(self) -> int:
        """Number of samples the source holds."""
        ...

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        """Yield batches of ``batch_size`` samples (the last may be smaller), at most
        ``limit`` samples in all, in the same order on every call."""
        ...


@runtime_checkable
class Metric(Protocol):
    """A running metric over model outputs.

    ``needs_labels`` metrics compare outputs with labels; ``needs_reference`` metrics compare
    them with the reference (FP32) model's outputs on the same batch.
    """

    name: str
    higher_is_better: bool
    needs_labels: bool
    needs_reference: bool

    def reset(self) -> None: ...

    def update(
        self,
        outputs: Sequence[np.ndarray],
        labels: np.ndarray | None,
        reference: Sequence[np.ndarray] | None,
    ) -> None: ...

    def result(self) -> float: ...
