"""Range methods: how the clipping range of one activation is chosen from its statistics.

Every method has the :data:`~slimgraph.passes.quantize.params.RangeMethod` signature and is
found by its spec name in :data:`RANGE_METHODS`. ``minmax`` keeps the observed extremes; the
others clip outliers using the histogram kept during calibration (no raw data is kept), so
calibration must run with ``collect_statistics(histogram_bins=DEFAULT_BINS)``.

All ranges returned lie inside the observed ``[min, max]`` widened to include zero, as the
quantization grid always is (see :func:`~slimgraph.ir.quant.params_from_range`): a ReLU
output gets ``[0, t]``.

``entropy`` and ``mse`` search one family of candidates: the histogram's edges ``t`` with the
range ``[-t, t]`` intersected with the data. For a symmetric scheme that is the threshold on
``|x|``; for an asymmetric one it clips whichever tails reach past ``t``, and gives ``[0, t]``
for non-negative data.

Known shortcomings, each inherited from working on a histogram:

- Asymmetric data with two long tails of different lengths is clipped at the same ``t`` on
  both sides; a two-dimensional search over both ends would lift this at the cost of
  squaring the number of candidates.
- ``entropy`` never clips below as many bins as the scheme has levels (128 bins on ``|x|``
  for int8, as in TensorRT): with outliers 50 sigma out its threshold stops at about 8
  sigma. More bins lower that floor.
- ``mse`` takes the values in a bin as spread evenly. When a few extreme values stretch the
  histogram so far that most values share a handful of bins (Student-t with 2 degrees of
  freedom, a million samples), it cannot see where inside them they lie and may clip more
  than measured error would (1.7x the error of ``minmax`` there). More bins lift it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from slimgraph.errors import closest
from slimgraph.ir.quant import QuantScheme, params_from_range
from slimgraph.ir.stats import Histogram, TensorStats
from slimgraph.passes.quantize.params import RangeMethod

__all__ = [
    "DEFAULT_BINS",
    "MSE",
    "RANGE_METHODS",
    "Entropy",
    "MinMax",
    "Percentile",
    "needs_histogram",
    "quant_levels",
    "range_method",
]

logger = logging.getLogger(__name__)

# Histogram bins to calibrate with. A histogram's range is a power of two above the largest
# magnitude, so the data fill at least a quarter of the bins on their longer side: 512 or
# more, enough for entropy's 128 magnitude levels and 256 asymmetric levels.
DEFAULT_BINS = 2048

# Candidate ranges evaluated at once by the MSE search: bounds its temporary arrays to a few
# megabytes whatever the number of bins.
_MSE_CHUNK = 128


def quant_levels(scheme: QuantScheme) -> int:
    """How many grid points the searched range is divided into, for entropy calibration.

    A symmetric scheme is searched on ``|x|`` over ``[0, t]``: its grid is centred on zero
    and ``|q|`` takes ``(qmax - qmin) // 2 + 1`` values, 0 to 127 for int8 (128 levels, as
    in TensorRT), 64 with reduce_range, 128 for uint8 with its zero point at 128. An
    asymmetric scheme spreads one point per integer over ``[low, high]``: 256 for uint8 or
    int8, 128 for uint8 with reduce_range.
    """
    qmin, qmax = _grid_bounds(scheme)
    if scheme.symmetric:
        return (qmax - qmin) // 2 + 1
    return qmax - qmin + 1


@dataclass(frozen=True)
class MinMax:
    """The observed minimum and maximum: nothing is clipped."""

    needs_histogram: ClassVar[bool] = False

    def __call__(self, stats: TensorStats, scheme: QuantScheme) -> tuple[float, float]:
        return stats.min, stats.max


@dataclass(frozen=True)
class Percentile:
    """Clip at a percentile of |x| (symmetric) or at the central percentile range."""

    percentile: float = 99.999
    needs_histogram: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(
                f"range method 'percentile': option percentile must lie in "
                f"(0, 100], found {self.percentile}"
            )

    def __call__(self, stats: TensorStats, scheme: QuantScheme) -> tuple[float, float]:
        hist = _histogram(stats, "percentile")
        if hist.total == 0:
            return stats.min, stats.max
        fraction = self.percentile / 100.0
        if scheme.symmetric:
            counts, edges = hist.magnitude()
            t = _quantile(counts, edges, fraction * hist.total)
            return _within_data(-t, t, stats)
        # Asymmetric: (100 - percentile) % of the values is clipped, half from each tail.
        tail = (1.0 - fraction) / 2.0 * hist.total
        low = _quantile(hist.counts, hist.edges, tail)
        high = _quantile(hist.counts, hist.edges, hist.total - tail)
        return _within_data(low, high, stats)


@dataclass(frozen=True)
class Entropy:
    """Minimise KL(P || Q) between the clipped and the quantized histogram (TensorRT)."""

    needs_histogram: ClassVar[bool] = True

    def __call__(self, stats: TensorStats, scheme: QuantScheme) -> tuple[float, float]:
        hist = _histogram(stats, "entropy")
        if hist.total == 0:
            return stats.min, stats.max
        levels = quant_levels(scheme)
        # Symmetric grids are searched on |x| with the levels of one side; asymmetric ones on
        # the signed histogram with all of them.
        counts, edges = hist.magnitude() if scheme.symmetric else (hist.counts, hist.edges)
        windows = _Windows.of(_without_exact_zeros(counts, edges, hist.zeros), edges)
        best, best_kl = windows.widest, np.inf
        for k in range(1, windows.widest + 1):
            start, stop = windows.bounds(k)
            if stop - start < levels:
                continue  # fewer bins than levels: the window would quantize without loss
            kl = _kl_divergence(windows.counts, start, stop, levels)
            if kl < best_kl:
                best, best_kl = k, kl
        low, high = windows.range(best, fold=scheme.symmetric)
        logger.debug(
            "entropy: %d levels, window %d of %d bins, KL %.3g, range [%g, %g]",
            levels,
            best,
            windows.widest,
            best_kl,
            low,
            high,
        )
        return _within_data(low, high, stats)


@dataclass(frozen=True)
class MSE:
    """Minimise the expected squared error: rounding inside the range plus clipping outside."""

    needs_histogram: ClassVar[bool] = True

    def __call__(self, stats: TensorStats, scheme: QuantScheme) -> tuple[float, float]:
        hist = _histogram(stats, "mse")
        if hist.total == 0:
            return stats.min, stats.max
        # Exact zeros add no error whatever the range; the rest are spread evenly in the bins.
        counts = _without_exact_zeros(hist.counts, hist.edges, hist.zeros)
        windows = _Windows.of(counts, hist.edges)
        if windows.widest == 0:
            return _within_data(0.0, 0.0, stats)
        candidates = [windows.range(k, fold=False) for k in range(1, windows.widest + 1)]
        ranges = np.array([_within_data(low, high, stats) for low, high in candidates])
        errors = np.concatenate(
            [
                _squared_error(counts, hist.edges, ranges[i : i + _MSE_CHUNK], scheme)
                for i in range(0, len(ranges), _MSE_CHUNK)
            ]
        )
        best = int(np.argmin(errors))
        low, high = ranges[best]
        logger.debug(
            "mse: window %d of %d bins, error %.3g (full range %.3g), range [%g, %g]",
            best + 1,
            windows.widest,
            errors[best] / hist.total,
            errors[-1] / hist.total,
            low,
            high,
        )
        return float(low), float(high)


RANGE_METHODS: dict[str, Callable[..., RangeMethod]] = {
    "minmax": MinMax,
    "percentile": Percentile,
    "entropy": Entropy,
    "mse": MSE,
}


def range_method(name: str, **options: float) -> RangeMethod:
    """The range method called ``name`` in a spec, built with ``options``."""
    factory = _factory(name)
    allowed = [f.name for f in fields(factory)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"it takes {allowed}" if allowed else "it takes no options"
        raise ValueError(f"range method {name!r}: unknown option(s) {unknown}; {takes}")
    return factory(**options)


def needs_histogram(name: str) -> bool:
    """Whether the range method called ``name`` needs calibration to keep histograms."""
    return bool(_factory(name).needs_histogram)  # type: ignore[attr-defined]


def _factory(name: str) -> Callable[..., RangeMethod]:
    factory = RANGE_METHODS.get(name)
    if factory is None:
        near = closest(name, RANGE_METHODS)
        hint = f" (did you mean {near!r}?)" if near else ""
        raise ValueError(
            f"range method {name!r} is unknown{hint}; known methods: {', '.join(RANGE_METHODS)}"
        )
    return factory


def _histogram(stats: TensorStats, method: str) -> Histogram:
    if stats.histogram is None:
        raise ValueError(
            f"range method {method!r} needs a histogram of each tensor and these "
            f"statistics have none: calibration must keep histograms "
            f"(collect_statistics(histogram_bins=DEFAULT_BINS))"
        )
    return stats.histogram


def _within_data(low: float, high: float, stats: TensorStats) -> tuple[float, float]:
    """``[low, high]`` intersected with the observed range, then widened to include zero."""
    return min(max(float(low), stats.min), 0.0), max(min(float(high), stats.max), 0.0)


def _grid_bounds(scheme: QuantScheme) -> tuple[int, int]:
    return scheme.dtype.quant_range(symmetric=scheme.symmetric, reduce_range=scheme.reduce_range)


def _quantile(counts: np.ndarray, edges: np.ndarray, rank: float) -> float:
    """The value below which ``rank`` of the counts lie, values spread evenly in each bin."""
    cumulative = np.cumsum(counts)
    index = min(int(np.searchsorted(cumulative, rank, side="left")), counts.size - 1)
    before = float(cumulative[index - 1]) if index > 0 else 0.0
    inside = float(counts[index])
    share = (rank - before) / inside if inside > 0 else 0.0
    return float(edges[index] + (edges[index + 1] - edges[index]) * min(max(share, 0.0), 1.0))


@dataclass(frozen=True)
class _Windows:
    """Candidate ranges on one histogram: windows of bins reaching ``k`` bins out from zero.

    ``counts`` and ``edges`` are cut to the bins between the data's extremes and zero, so a
    window never runs past the data, and ``zero`` is the index of the edge at zero.
    """

    counts: np.ndarray
    edges: np.ndarray
    zero: int

    @classmethod
    def of(cls, counts: np.ndarray, edges: np.ndarray) -> _Windows:
        zero = int(np.argmin(np.abs(edges)))  # an exact edge in histograms of this version
        occupied = np.flatnonzero(counts)
        first = min(zero, int(occupied[0])) if occupied.size else zero
        stop = max(zero, int(occupied[-1]) + 1) if occupied.size else zero
        return cls(counts[first:stop], edges[first : stop + 1], zero - first)

    @property
    def widest(self) -> int:
        return max(self.zero, self.counts.size - self.zero)

    def bounds(self, k: int) -> tuple[int, int]:
        return max(self.zero - k, 0), min(self.zero + k, self.counts.size)

    def range(self, k: int, *, fold: bool) -> tuple[float, float]:
        start, stop = self.bounds(k)
        if fold:  # a window on |x| stands for [-t, t]
            return -float(self.edges[stop]), float(self.edges[stop])
        return float(self.edges[start]), float(self.edges[stop])


def _without_exact_zeros(counts: np.ndarray, edges: np.ndarray, zeros: int) -> np.ndarray:
    """``counts`` less the values that are exactly zero.

    Every grid represents zero exactly, so those values lose nothing to quantization; left
    in, a ReLU's spike at zero dominates the divergence and drags the threshold far down.
    """
    if zeros == 0:
        return counts
    holding_zero = int(np.searchsorted(edges, 0.0, side="right")) - 1
    kept = counts.copy()
    kept[holding_zero] -= min(zeros, int(kept[holding_zero]))
    return kept


def _kl_divergence(counts: np.ndarray, start: int, stop: int, levels: int) -> float:
    """KL(P || Q) for the window ``counts[start:stop]``, as TensorRT computes it.

    P is the window with the values beyond it clipped into its end bins; Q quantizes the
    window (without the clipped values) into ``levels`` equal groups of bins, each group's
    count spread evenly over the bins where P is non-zero.
    """
    window = counts[start:stop].astype(np.float64)
    p = window.copy()
    p[0] += counts[:start].sum()
    p[-1] += counts[stop:].sum()
    groups = (np.arange(levels + 1) * window.size) // levels  # each group >= 1 bin
    level_of_bin = np.repeat(np.arange(levels), np.diff(groups))
    nonzero = p > 0
    group_sums = np.add.reduceat(window, groups[:-1])
    group_nonzero = np.add.reduceat(nonzero.astype(np.float64), groups[:-1])
    spread = group_sums / np.maximum(group_nonzero, 1.0)
    q = np.where(nonzero, spread[level_of_bin], 0.0)
    # A bin P has and Q lacks (clipped values in an empty end group) would make the
    # divergence infinite; as onnxruntime and MXNet do, Q gets 1e-4 of a count there.
    q = np.where(nonzero & (q == 0.0), 1e-4, q)
    p_norm = p[nonzero] / p.sum()
    q_norm = q[nonzero] / q.sum()
    return float(np.sum(p_norm * np.log(p_norm / q_norm)))


def _squared_error(
    counts: np.ndarray, edges: np.ndarray, ranges: np.ndarray, scheme: QuantScheme
) -> np.ndarray:
    """Total squared quantization error of the histogram's values under each candidate range.

    Values are taken as spread evenly inside each bin, and each range is turned into the
    grid it would give (:func:`params_from_range`), so the error is exact for that model:
    inside the grid the rounding error integrated over the bin, outside it the squared
    distance to the nearest grid end.
    """
    occupied = counts > 0
    weights = counts[occupied].astype(np.float64)
    lo, hi = edges[:-1][occupied][None, :], edges[1:][occupied][None, :]
    params = params_from_range(ranges[:, 0], ranges[:, 1], scheme)
    step = params.scale.astype(np.float64)[:, None]
    zero_point = params.zero_point.astype(np.float64)[:, None]
    qmin, qmax = _grid_bounds(scheme)
    grid_lo, grid_hi = (qmin - zero_point) * step, (qmax - zero_point) * step

    inside = _rounding_integral(np.clip(hi, grid_lo, grid_hi), step)
    inside -= _rounding_integral(np.clip(lo, grid_lo, grid_hi), step)
    below = (_cube(np.maximum(grid_lo - lo, 0.0)) - _cube(np.maximum(grid_lo - hi, 0.0))) / 3
    above = (_cube(np.maximum(hi - grid_hi, 0.0)) - _cube(np.maximum(lo - grid_hi, 0.0))) / 3
    density = weights / (hi - lo)
    return (density * (inside + below + above)).sum(axis=1)


def _rounding_integral(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """A primitive of the squared rounding error ``(y - step * round(y / step))**2``.

    The error is a sawtooth of period ``step`` whose square integrates to ``step**3 / 12``
    per period; the partial period adds ``step**3 * ((f**3 + 1/8) / 3)``, ``f`` being the
    position in it from -1/2 to 1/2.
    """
    y = x / step + 0.5
    periods = np.floor(y)
    f = y - periods - 0.5
    return _cube(step) * (periods / 12.0 + (_cube(f) + 0.125) / 3.0)


def _cube(x: np.ndarray) -> np.ndarray:
    return x * x * x  # numpy's ** 3 goes through pow(), several times slower
