"""Sampling a source: a seeded, spread-out subset, for calibration.

Data sets are often sorted by class (CIFAR's folders, ImageNet's list), so the first N
samples are a poor calibration set. :func:`sample` picks N indices at random with a fixed
seed. Sources that can read any sample (a ``subset`` method) read only those; others are
streamed once and filtered, which keeps memory at one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from slimgraph.data.base import Batch, DataSource

__all__ = ["FilteredSource", "sample", "sample_indices"]


def sample_indices(total: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct indices of ``range(total)``, sorted, drawn with ``seed``."""
    if count >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=count, replace=False))


def sample(source: DataSource, count: int, seed: int) -> DataSource:
    """At most ``count`` samples of ``source``, spread over all of it."""
    indices = sample_indices(len(source), count, seed)
    if len(indices) == len(source):
        return source
    subset = getattr(source, "subset", None)
    if callable(subset):
        return subset(indices)
    return FilteredSource(source, indices)


class FilteredSource:
    """The samples of ``source`` at ``indices`` (sorted), found by streaming it once."""

    def __init__(self, source: DataSource, indices: Sequence[int], read_batch: int = 64) -> None:
        self._source = source
        self._indices = np.asarray(indices, dtype=np.int64)
        self._read_batch = read_batch

    def __len__(self) -> int:
        return int(self._indices.size)

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        wanted = self._indices[:limit] if limit is not None else self._indices
        pending: list[Batch] = []
        held = 0
        offset = 0
        for batch in self._source.batches(self._read_batch):
            size = batch.size
            local = wanted[(wanted >= offset) & (wanted < offset + size)] - offset
            offset += size
            if local.size:
                pending.append(_take(batch, local))
                held += int(local.size)
            while held >= batch_size:
                first, pending, held = _split(pending, batch_size)
                yield first
            if offset > (wanted[-1] if wanted.size else -1):
                break
        if held:
            yield _concat(pending)


def _take(batch: Batch, rows: np.ndarray) -> Batch:
    if isinstance(batch.inputs, dict) or not isinstance(batch.inputs, tuple):
        inputs = {k: v[rows] for k, v in dict(batch.inputs).items()}
    else:
        inputs = tuple(a[rows] for a in batch.inputs)
    labels = batch.labels[rows] if batch.labels is not None else None
    return Batch(inputs, labels)


def _concat(parts: list[Batch]) -> Batch:
    first = parts[0]
    if isinstance(first.inputs, tuple):
        inputs = tuple(np.concatenate([p.inputs[i] for p in parts])
                       for i in range(len(first.inputs)))
    else:
        inputs = {k: np.concatenate([p.inputs[k] for p in parts]) for k in first.inputs}
    labels = (np.concatenate([p.labels for p in parts])
              if first.labels is not None else None)
    return Batch(inputs, labels)


def _split(parts: list[Batch], size: int) -> tuple[Batch, list[Batch], int]:
    whole = _concat(parts)
    n = whole.size
    head = _take(whole, np.arange(size))
    rest = [_take(whole, np.arange(size, n))] if n > size else []
    return head, rest, n - size
