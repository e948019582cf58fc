"""Calibration statistics: running summaries of the values a tensor takes over a data set.

Each summary merges batch by batch and keeps a fixed amount of state (a range, a histogram of
fixed size), so memory does not grow with the number of samples. A
:class:`CalibrationTable` maps value names to summaries and is saved beside a workspace so
that tuning trials reuse it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CalibrationTable", "Histogram", "TensorStats"]


@dataclass
class Histogram:
    """A histogram over a symmetric or one-sided range that widens by merging bins.

    When a batch falls outside the current range the range doubles (bins merge pairwise), so
    the bin count stays fixed and earlier counts stay valid.
    """

    bins: int
    edges_max: float = 0.0
    edges_min: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if self.counts.size == 0:
            self.counts = np.zeros(self.bins, dtype=np.int64)
            span = max(abs(lo), abs(hi), 1e-8)
            self.edges_min, self.edges_max = (-span if lo < 0 else 0.0), span
        while lo < self.edges_min or hi > self.edges_max:
            self._widen(to_negative=lo < self.edges_min and self.edges_min == 0.0)
        counts, _ = np.histogram(x, bins=self.bins, range=(self.edges_min, self.edges_max))
        self.counts += counts

    def _widen(self, *, to_negative: bool) -> None:
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        if to_negative:
            # One-sided [0, m] becomes symmetric [-m, m]: the old bins fill the upper half.
            self.counts = np.concatenate([np.zeros(self.bins // 2, dtype=np.int64), merged])
            self.edges_min = -self.edges_max
            return
        if self.edges_min < 0:
            # Symmetric: double both ends, keeping zero on a bin edge in the middle.
            quarter = self.bins // 4
            new = np.zeros(self.bins, dtype=np.int64)
            new[quarter : quarter + merged.size] = merged
            self.counts = new
            self.edges_min *= 2
        else:
            self.counts = np.concatenate([merged, np.zeros(self.bins // 2, dtype=np.int64)])
        self.edges_max *= 2

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.edges_min, self.edges_max, self.bins + 1)


@dataclass
class TensorStats:
    """Running statistics of one tensor: range, per-channel range when asked, histogram."""

    min: float = float("inf")
    max: float = float("-inf")
    count: int = 0
    histogram: Histogram | None = None

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        finite = x[np.isfinite(x)] if not np.all(np.isfinite(x)) else x
        if finite.size == 0:
            return
        self.min = min(self.min, float(finite.min()))
        self.max = max(self.max, float(finite.max()))
        self.count += int(finite.size)
        if self.histogram is not None:
            self.histogram.update(finite)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"min": self.min, "max": self.max, "count": self.count}
        if self.histogram is not None:
            out["histogram"] = {
                "bins": self.histogram.bins,
                "edges_min": self.histogram.edges_min,
                "edges_max": self.histogram.edges_max,
                "counts": self.histogram.counts.tolist(),
            }
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> TensorStats:
        stats = cls(min=float(data["min"]), max=float(data["max"]), count=int(data["count"]))
        hist = data.get("histogram")
        if isinstance(hist, Mapping):
            stats.histogram = Histogram(
                bins=int(hist["bins"]),
                edges_min=float(hist["edges_min"]),
                edges_max=float(hist["edges_max"]),
                counts=np.asarray(hist["counts"], dtype=np.int64),
            )
        return stats


@dataclass
class CalibrationTable:
    """Statistics per value name, gathered over one calibration set."""

    stats: dict[str, TensorStats] = field(default_factory=dict)
    samples: int = 0
    # What produced the table (data source, sample count, model hash); a cached table is
    # reused only when this matches.
    key: str = ""

    def __getitem__(self, name: str) -> TensorStats:
        return self.stats[name]

    def __contains__(self, name: object) -> bool:
        return name in self.stats

    def __iter__(self) -> Iterator[str]:
        return iter(self.stats)

    def __len__(self) -> int:
        return len(self.stats)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table as JSON, atomically."""
        payload = {
            "key": self.key,
            "samples": self.samples,
            "stats": {name: s.to_json() for name, s in self.stats.items()},
        }
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle)
        os.replace(tmp, dest)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationTable:
        payload = json.loads(Path(path).read_text())
        return cls(
            stats={n: TensorStats.from_json(s) for n, s in payload["stats"].items()},
            samples=int(payload["samples"]),
            key=str(payload["key"]),
        )
