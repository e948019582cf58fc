"""Data from a user function named in the spec."""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, Literal

import numpy as np
from pydantic import Field

from slimgraph._callables import resolve_callable
from slimgraph.data._common import SourceConfigBase, sample_spans
from slimgraph.data.base import Batch, DataSource
from slimgraph.errors import DataError, SpecError

__all__ = ["CustomConfig", "LimitedSource", "SampleSource"]

logger = logging.getLogger(__name__)


class CustomConfig(SourceConfigBase):
    """Calls ``loader(**options)``, which returns a DataSource or ``(inputs, label)`` samples.

    A sample's inputs are one array, a tuple of arrays (one per model input) or a dict of
    arrays keyed by input name, all without the batch axis; its label is a number, an array
    or None. Samples are stacked into batches in the order the iterable gives them.
    """

    kind: Literal["custom"] = Field(
        default="custom", description="Source kind: a user function supplies the data."
    )
    loader: str = Field(description="'package.module:function' returning the data.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the loader."
    )

    def open(self) -> DataSource:
        loader = resolve_callable(self.loader, field="custom.loader")
        try:
            inspect.signature(loader).bind(**self.options)
        except TypeError as exc:
            raise SpecError(
                f"custom.options: {self.loader!r} does not accept options "
                f"{sorted(self.options)} ({exc})"
            ) from exc
        except ValueError:
            pass  # no introspectable signature (a builtin): let the call decide
        made = loader(**self.options)
        if isinstance(made, DataSource):
            source: DataSource = LimitedSource(made, self.limit)
        elif isinstance(made, Iterable) and not isinstance(made, str | bytes | Mapping):
            source = SampleSource(made, self.limit)
        else:
            raise DataError(
                f"custom.loader: {self.loader!r} returned a {type(made).__name__}; expected a "
                "DataSource (batches and __len__) or an iterable of (inputs, label) pairs"
            )
        logger.info("custom: %d samples from %s", len(source), self.loader)
        return source


class LimitedSource:
    """Another source, cut to its first ``limit`` samples."""

    def __init__(self, source: DataSource, limit: int | None) -> None:
        self._source = source
        self._limit = limit

    def __len__(self) -> int:
        total = len(self._source)
        return total if self._limit is None else min(total, self._limit)

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        cut = min((n for n in (limit, self._limit) if n is not None), default=None)
        return self._source.batches(batch_size, limit=cut)


class SampleSource:
    """Stacks ``(inputs, label)`` samples into batches.

    A one-shot iterator (a generator) is read into a list once, so that every pass sees the
    same samples; a re-iterable sized collection is walked afresh on each pass.
    """

    def __init__(self, samples: Iterable[Any], limit: int | None = None) -> None:
        if isinstance(samples, Iterator) or not isinstance(samples, Sized):
            samples = list(itertools.islice(samples, limit))
        self._samples: Iterable[Any] = samples
        total = len(samples)
        self._total = total if limit is None else min(total, limit)

    def __len__(self) -> int:
        return self._total

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        spans = sample_spans(self._total, batch_size, limit)
        samples = enumerate(self._samples)
        for start, stop in spans:
            chunk = list(itertools.islice(samples, stop - start))
            yield _stack(chunk, start)


def _stack(chunk: list[tuple[int, Any]], first: int) -> Batch:
    inputs_list: list[Any] = []
    labels_list: list[Any] = []
    for index, sample in chunk:
        if not isinstance(sample, Sequence) or isinstance(sample, str) or len(sample) != 2:
            raise DataError(
                f"custom.loader: sample {index} is a {type(sample).__name__}; expected an "
                "(inputs, label) pair"
            )
        inputs_list.append(sample[0])
        labels_list.append(sample[1])
    has_labels = {label is not None for label in labels_list}
    if len(has_labels) > 1:
        raise DataError(
            f"custom.loader: samples {first}-{first + len(chunk) - 1} mix None and real labels"
        )
    labels = np.stack([np.asarray(v) for v in labels_list]) if True in has_labels else None
    try:
        return Batch(inputs=_stack_inputs(inputs_list), labels=labels)
    except (ValueError, KeyError, IndexError) as exc:
        raise DataError(
            f"custom.loader: samples {first}-{first + len(chunk) - 1} cannot be stacked "
            f"into a batch ({exc})"
        ) from exc


def _stack_inputs(inputs_list: list[Any]) -> tuple[np.ndarray, ...] | dict[str, np.ndarray]:
    first = inputs_list[0]
    if isinstance(first, Mapping):
        return {name: np.stack([np.asarray(s[name]) for s in inputs_list]) for name in first}
    if isinstance(first, tuple | list):
        return tuple(np.stack([np.asarray(s[i]) for s in inputs_list]) for i in range(len(first)))
    return (np.stack([np.asarray(s) for s in inputs_list]),)
