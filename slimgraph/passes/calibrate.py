"""Calibration: stream data through the model and keep running statistics of chosen values.

The model is copied with the values to observe added as outputs; each batch's activations
update the running :class:`TensorStats` and are dropped before the next batch is read, so
memory depends on the batch size, not on the number of samples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from slimgraph.errors import DataError
from slimgraph.ir.stats import CalibrationTable, Histogram, TensorStats
from slimgraph.passes.protocols import Executor
from slimgraph.progress import track

__all__ = ["collect_statistics", "observable"]

logger = logging.getLogger(__name__)


def observable(model: ir.Model, value: ir.Value) -> bool:
    """Whether calibration can observe ``value``: it lives in the main graph."""
    producer = value.producer()
    owner = producer.graph if producer is not None else value.graph
    return owner is model.graph


def collect_statistics(
    model: ir.Model,
    values: Sequence[ir.Value],
    executor: Executor,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    total_batches: int | None = None,
    histogram_bins: int | None = None,
    key: str = "",
) -> CalibrationTable:
    """Run ``feeds`` through ``model`` and summarise each of ``values``.

    ``histogram_bins`` keeps a histogram per value as well (for percentile, entropy and MSE
    ranges). Values outside the main graph cannot be observed and raise ``ValueError``.
    """
    names = [v.name for v in values]
    for value in values:
        if not observable(model, value):
            raise ValueError(f"value {value.name!r} is inside a subgraph; it cannot be observed")
    session = executor.session(_with_outputs(model, names))
    table = CalibrationTable(key=key)
    for name in names:
        table.stats[name] = TensorStats(
            histogram=Histogram(histogram_bins) if histogram_bins else None
        )
    start = time.perf_counter()
    batches = 0
    for feed in track(feeds, total=total_batches, desc="calibrating"):
        arrays = session.run(feed, names)
        for name, array in zip(names, arrays, strict=True):
            table.stats[name].update(np.asarray(array, dtype=np.float32))
        table.samples += int(next(iter(feed.values())).shape[0])
        batches += 1
        del arrays
    if batches == 0:
        raise DataError("calibration data is empty: no batch was read")
    logger.info("calibration: %d samples in %d batches, %d tensors observed (%.1f s)",
                table.samples, batches, len(names), time.perf_counter() - start)
    return table


def _with_outputs(model: ir.Model, names: Sequence[str]) -> ir.Model:
    """A copy of ``model`` whose outputs also include the values named ``names``."""
    copy = model.clone()
    by_name: dict[str, ir.Value] = {v.name: v for v in copy.graph.inputs if v.name}
    for node in copy.graph:
        for value in node.outputs:
            if value.name:
                by_name[value.name] = value
    existing = {v.name for v in copy.graph.outputs}
    for name in names:
        if name not in existing:
            copy.graph.outputs.append(by_name[name])
    return copy
