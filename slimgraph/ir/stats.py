"""Calibration statistics: running summaries of the values a tensor takes over a data set.

Each summary merges batch by batch and keeps a fixed amount of state (a range, a histogram of
fixed size), so memory does not grow with the number of samples. A
:class:`CalibrationTable` maps value names to summaries and is saved beside a workspace so
that tuning trials reuse it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CalibrationTable", "Histogram", "TensorStats"]

# The narrowest range a histogram starts with (the smallest normal float32): a first batch of
# zeros gets a range this small, and the first non-zero batch widens it to its own scale.
_MIN_SPAN = 2.0**-126
# Values binned at once: bounds the temporary index arrays to a few megabytes.
_BLOCK = 1 << 18


@dataclass
class Histogram:
    """Counts over ``bins`` equal bins of ``[edges_min, edges_max]`` that widen by merging.

    The range is one-sided, ``[0, m]``, while every value seen is non-negative, and symmetric,
    ``[-m, m]``, once a negative one arrives. ``m`` is a power of two strictly above every
    magnitude seen, so all edges are exact binary fractions and zero is an edge of a
    symmetric range. When a batch does not fit, ``m`` doubles and pairs of bins merge: every
    old bin lies inside exactly one new bin, so earlier counts stay exact and the counts
    equal those of one ``np.histogram`` over all the data with the final range, whatever the
    batching. NaN and infinities are not counted.
    """

    bins: int
    edges_max: float = 0.0
    edges_min: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # How many of the counted values are exactly zero (ReLU's floor, padding): they sit in the
    # bin starting at zero, and every quantization grid represents them exactly.
    zeros: int = 0

    def __post_init__(self) -> None:
        # A power of two keeps every edge an exact binary fraction, and symmetric widening
        # needs the bins to split in quarters. A histogram read from a table is taken as it
        # is; one of an earlier version with other bins still loads and updates.
        fresh = self.counts.size == 0
        if fresh and (self.bins < 4 or self.bins & (self.bins - 1)):
            raise ValueError(
                f"histogram bins: expected a power of two, 4 or more (a multiple of 4 whose "
                f"edges are all exact), found {self.bins}; {_suggest_bins(self.bins)} is the "
                f"nearest"
            )
        if not fresh and self.counts.size != self.bins:
            raise ValueError(f"histogram: {self.counts.size} counts for {self.bins} bins")

    def update(self, x: np.ndarray) -> None:
        """Count the finite values of ``x``, widening the range first when they do not fit."""
        x = np.asarray(x)
        finite = np.isfinite(x)
        self._add(x if finite.all() else x[finite])

    def _add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if self.counts.size == 0:
            self.counts = np.zeros(self.bins, dtype=np.int64)
            self.edges_max = _power_of_two_above(max(-lo, hi))
            self.edges_min = -self.edges_max if lo < 0 else 0.0
        while not self._covers(lo, hi):
            self._widen(to_negative=lo < 0 and self.edges_min == 0.0)
        self.counts += self._bin_counts(x)
        self.zeros += int(x.size - np.count_nonzero(x))

    def _bin_counts(self, x: np.ndarray) -> np.ndarray:
        """Counts of ``x`` in the current bins, the same as ``np.histogram`` gives."""
        scale = self.bins / (self.edges_max - self.edges_min)
        if not _is_power_of_two(scale) or self.edges_min not in (0.0, -self.edges_max):
            # A range read from an earlier version's table: edges are not binary fractions.
            span = (np.float64(self.edges_min), np.float64(self.edges_max))
            return np.histogram(x, bins=self.bins, range=span)[0]
        # The bin width is a power of two and the edges are its multiples, so x / width is
        # exact and its floor is the bin: three times faster than np.histogram's search.
        # float32 products are exact while the scale fits float32 (wide ranges use float64).
        dtype = np.float32 if x.dtype == np.float32 and 1.0 <= scale < 2.0**64 else np.float64
        offset = round(-self.edges_min * scale)
        counts = np.zeros(self.bins, dtype=np.int64)
        flat = x.reshape(-1)
        for start in range(0, flat.size, _BLOCK):
            block = flat[start : start + _BLOCK]
            product = np.multiply(block, scale, dtype=dtype)
            index = np.floor(product).astype(np.intp)
            if scale < 1.0:
                # A scale below 1 can round a tiny negative value to -0.0, whose floor is 0:
                # it belongs just below zero.
                index[(product == 0.0) & (block < 0)] = -1
            counts += np.bincount(index + offset, minlength=self.bins)
        return counts

    def _covers(self, lo: float, hi: float) -> bool:
        # Strictly inside on the right: np.histogram closes its last bin, and a value on the
        # closed edge would land in a different bin after the next widening.
        return self.edges_min <= lo and hi < self.edges_max and -lo < self.edges_max

    def _widen(self, *, to_negative: bool) -> None:
        if self.bins % 4:
            raise ValueError(
                f"histogram of {self.bins} bins (from an earlier version's "
                f"table) cannot widen; calibrate again"
            )
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        half = np.zeros(self.bins // 2, dtype=np.int64)
        if to_negative:
            # [0, m] becomes [-m, m]: the old bins, merged in pairs, fill the upper half.
            self.counts = np.concatenate([half, merged])
            self.edges_min = -self.edges_max
        elif self.edges_min < 0:
            # [-m, m] becomes [-2m, 2m]: the merged bins fill the middle half, zero stays in
            # the middle.
            quarter = self.bins // 4
            self.counts = np.concatenate([half[:quarter], merged, half[:quarter]])
            self.edges_min *= 2
            self.edges_max *= 2
        else:
            self.counts = np.concatenate([merged, half])
            self.edges_max *= 2

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.edges_min, self.edges_max, self.bins + 1)

    @property
    def width(self) -> float:
        """The width of one bin."""
        return (self.edges_max - self.edges_min) / self.bins

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def magnitude(self) -> tuple[np.ndarray, np.ndarray]:
        """Counts and edges of ``|x|`` over ``[0, edges_max]``.

        Exact for a symmetric range because zero is the middle edge: bin ``k`` above zero and
        its mirror below fold into one. (A histogram read from an older table whose range
        was not a power of two may not have zero on an edge; its fold is approximate.)
        """
        if self.edges_min >= 0 or self.counts.size == 0:
            return self.counts.copy(), self.edges
        middle = self.bins // 2
        folded = self.counts[middle:] + self.counts[:middle][::-1]
        return folded, np.linspace(0.0, self.edges_max, middle + 1)


def _is_power_of_two(value: float) -> bool:
    return value > 0.0 and math.frexp(value)[0] == 0.5


def _suggest_bins(bins: int) -> int:
    return 1 << max(2, round(math.log2(max(bins, 1))))


def _power_of_two_above(magnitude: float) -> float:
    """The smallest power of two strictly above ``magnitude`` (and not below the floor)."""
    if magnitude < _MIN_SPAN:
        return _MIN_SPAN
    _, exponent = math.frexp(magnitude)  # magnitude = f * 2**exponent with 0.5 <= f < 1
    return math.ldexp(1.0, exponent)


@dataclass
class TensorStats:
    """Running statistics of one tensor: range, per-channel range when asked, histogram."""

    min: float = float("inf")
    max: float = float("-inf")
    count: int = 0
    histogram: Histogram | None = None

    def update(self, x: np.ndarray) -> None:
        """Fold the finite values of ``x`` into the summary; NaN and infinities are skipped."""
        x = np.asarray(x)
        if x.size == 0:
            return
        mask = np.isfinite(x)
        finite = x if mask.all() else x[mask]
        if finite.size == 0:
            return
        self.min = min(self.min, float(finite.min()))
        self.max = max(self.max, float(finite.max()))
        self.count += int(finite.size)
        if self.histogram is not None:
            self.histogram._add(finite)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"min": self.min, "max": self.max, "count": self.count}
        if self.histogram is not None:
            out["histogram"] = {
                "bins": self.histogram.bins,
                "edges_min": self.histogram.edges_min,
                "edges_max": self.histogram.edges_max,
                "counts": self.histogram.counts.tolist(),
                "zeros": self.histogram.zeros,
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
                zeros=int(hist.get("zeros", 0)),  # absent from tables of earlier versions
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
