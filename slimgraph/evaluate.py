"""Accuracy: stream evaluation data through the reference and candidate models side by side.

Each batch is read and decoded once and run through every model; metrics keep running
counts, so nothing grows with the data set.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from slimgraph.data import DataSource, Metric
from slimgraph.errors import DataError
from slimgraph.progress import track

__all__ = ["Evaluation", "evaluate"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """Scores of each model on the same samples."""

    metric: str
    higher_is_better: bool
    scores: Mapping[str, float]
    samples: int
    seconds: float


def evaluate(
    source: DataSource,
    sessions: Mapping[str, object],
    make_metric: Callable[[], Metric],
    *,
    batch_size: int,
    reference: str | None,
) -> Evaluation:
    """Score every session in ``sessions`` (name -> OrtSession-like) on ``source``.

    ``reference`` names the session whose outputs agreement metrics (cosine, MSE) compare
    against; it scores itself too, trivially. It may be None for metrics that need none.
    """
    metrics = {name: make_metric() for name in sessions}
    for metric in metrics.values():
        metric.reset()
    first = next(iter(metrics.values()))
    start = time.perf_counter()
    samples = 0
    total = math.ceil(len(source) / batch_size)
    for batch in track(source.batches(batch_size), total=total, desc="evaluating"):
        if first.needs_labels and batch.labels is None:
            raise DataError(f"metric {first.name} needs labels; the evaluation data has none")
        if first.needs_reference and reference is None:
            raise ValueError(f"metric {first.name} compares with a reference model; none given")
        outputs = {name: _run(session, batch.inputs) for name, session in sessions.items()}
        for name, metric in metrics.items():
            metric.update(outputs[name], batch.labels,
                          outputs[reference] if reference is not None else None)
        samples += batch.size
    if samples == 0:
        raise DataError("evaluation data is empty: no sample was read")
    seconds = time.perf_counter() - start
    scores = {name: float(metric.result()) for name, metric in metrics.items()}
    logger.info("evaluation: %d samples, %s (%.1f s)", samples,
                ", ".join(f"{n} {first.name} {s:.4f}" for n, s in scores.items()), seconds)
    return Evaluation(first.name, first.higher_is_better, scores, samples, seconds)


def _run(session: object, inputs: Sequence[object] | Mapping[str, object]) -> list[object]:
    feeds = session.bind(inputs)  # type: ignore[attr-defined]
    return session.run(feeds)  # type: ignore[attr-defined]
