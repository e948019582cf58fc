"""Throughput measured side by side: models interleaved, warm-up first, median of repeats.

Machines are noisy and absolute times do not carry from one to another, so the figure that
matters is the ratio of two models measured in the same run. Every repeat times each model
in turn (A, B, A, B, ...), so a slow spell hits both.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from slimgraph.progress import track

__all__ = ["Throughput", "measure_throughput"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Throughput:
    """One model's speed: samples per second (median over repeats) and latency percentiles."""

    samples_per_second: float
    latency_p50_ms: float
    latency_p90_ms: float
    repeats: tuple[float, ...]


def measure_throughput(
    sessions: Mapping[str, object],
    feeds: Mapping[str, np.ndarray],
    *,
    warmup: int,
    iterations: int,
    repeats: int,
) -> dict[str, Throughput]:
    """Time each session on the same ``feeds`` (one batch), interleaved."""
    batch = int(next(iter(feeds.values())).shape[0])
    for session in sessions.values():
        for _ in range(warmup):
            session.run(feeds)  # type: ignore[attr-defined]
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    latencies: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in track(range(repeats), total=repeats, desc="timing", unit="repeat"):
        for name, session in sessions.items():
            times = _time_runs(session, feeds, iterations)
            latencies[name].extend(times)
            rates[name].append(batch * iterations / sum(times))
    result = {}
    for name in sessions:
        lat_ms = np.asarray(latencies[name]) * 1e3
        result[name] = Throughput(
            samples_per_second=statistics.median(rates[name]),
            latency_p50_ms=float(np.percentile(lat_ms, 50)),
            latency_p90_ms=float(np.percentile(lat_ms, 90)),
            repeats=tuple(rates[name]),
        )
    logger.info("throughput at batch %d: %s", batch, ", ".join(
        f"{n} {t.samples_per_second:.1f}/s" for n, t in result.items()))
    return result


def _time_runs(session: object, feeds: Mapping[str, np.ndarray], iterations: int) -> list[float]:
    times = []
    run = session.run  # type: ignore[attr-defined]
    for _ in range(iterations):
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return times
