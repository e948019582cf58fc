"""Streaming histograms: fixed memory, exact merging, and counts equal to one np.histogram."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimgraph.ir.stats import CalibrationTable, Histogram, TensorStats

SEED = 0


def _streamed(batches: list[np.ndarray], bins: int = 64) -> Histogram:
    hist = Histogram(bins)
    for batch in batches:
        hist.update(batch)
    return hist


def _one_shot(data: np.ndarray, hist: Histogram) -> np.ndarray:
    return np.histogram(data, bins=hist.bins, range=(hist.edges_min, hist.edges_max))[0]


# ---------------------------------------------------------------------------------------------
# Exact merging


@pytest.mark.parametrize("bins", [8, 64, 2048])
def test_stream_of_growing_batches_equals_one_histogram_of_all_data(bins: int) -> None:
    rng = np.random.default_rng(SEED)
    # Non-negative first (one-sided), then negatives (symmetric), then ranges 3x and 40x wider.
    batches = [
        np.abs(rng.standard_normal(1000)).astype(np.float32) * 0.1,
        rng.standard_normal(1000).astype(np.float32),
        rng.standard_normal(1000).astype(np.float32) * 3,
        rng.standard_normal(10).astype(np.float32) * 40,
    ]
    data = np.concatenate(batches)
    hist = _streamed(batches, bins)

    assert hist.counts.shape == (bins,)
    assert hist.edges_min == -hist.edges_max
    np.testing.assert_array_equal(hist.counts, _one_shot(data, hist))
    assert hist.total == data.size


def test_batching_does_not_change_range_or_counts() -> None:
    rng = np.random.default_rng(SEED)
    data = np.concatenate([rng.standard_normal(5000), rng.standard_t(2, 50)]).astype(np.float32)
    rng.shuffle(data)
    whole = _streamed([data], 256)
    for parts in (2, 7, 50):
        split = _streamed(np.array_split(data, parts), 256)
        assert (split.edges_min, split.edges_max) == (whole.edges_min, whole.edges_max)
        np.testing.assert_array_equal(split.counts, whole.counts)


def test_range_is_smallest_power_of_two_above_the_largest_magnitude() -> None:
    hist = _streamed([np.array([0.3, 0.9], np.float32)], 8)
    assert (hist.edges_min, hist.edges_max) == (0.0, 1.0)
    hist.update(np.array([-1.0], np.float32))  # exactly 1.0 must not land on the closed edge
    assert (hist.edges_min, hist.edges_max) == (-2.0, 2.0)


def test_value_on_the_old_upper_edge_lands_where_one_histogram_puts_it() -> None:
    # The maximum of the first batch, 1.0, is a power of two: a range of exactly [0, 1]
    # would count it in the last bin, which after widening to [0, 2] is the wrong half.
    batches = [np.array([0.25, 1.0], np.float32), np.array([1.5], np.float32)]
    hist = _streamed(batches, 4)
    assert (hist.edges_min, hist.edges_max) == (0.0, 2.0)
    np.testing.assert_array_equal(hist.counts, [1, 0, 1, 1])
    np.testing.assert_array_equal(hist.counts, _one_shot(np.concatenate(batches), hist))


def test_one_sided_histogram_becomes_symmetric_when_negatives_arrive() -> None:
    # [0, 4) in 8 bins of 0.5, then -1.0: [-4, 4) in 8 bins of 1.0, old counts in the top half.
    hist = _streamed([np.array([0.0, 0.1, 0.6, 1.2, 3.9], np.float32)], 8)
    assert (hist.edges_min, hist.edges_max) == (0.0, 4.0)
    np.testing.assert_array_equal(hist.counts, [2, 1, 1, 0, 0, 0, 0, 1])

    hist.update(np.array([-1.0], np.float32))

    assert (hist.edges_min, hist.edges_max) == (-4.0, 4.0)
    np.testing.assert_array_equal(hist.counts, [0, 0, 0, 1, 3, 1, 0, 1])


def test_zero_is_the_middle_edge_of_a_symmetric_range() -> None:
    tiny = np.float32(1e-30)
    hist = _streamed([np.array([-0.3, -tiny, 0.0, tiny, 0.7], np.float32)], 8)
    middle = hist.bins // 2
    assert hist.edges[middle] == 0.0
    assert hist.counts[:middle].sum() == 2  # -0.3 and -tiny below zero
    assert hist.counts[middle:].sum() == 3
    hist.update(np.array([5.0], np.float32))  # widening keeps zero in the middle
    assert hist.edges[middle] == 0.0
    assert hist.counts[middle - 1] == 2 and hist.counts[middle] == 3


def test_magnitude_folds_exactly() -> None:
    rng = np.random.default_rng(SEED)
    data = rng.standard_normal(10_000).astype(np.float32)
    hist = _streamed([data], 64)
    counts, edges = hist.magnitude()
    reference = np.histogram(np.abs(data), bins=32, range=(0.0, hist.edges_max))[0]
    np.testing.assert_array_equal(counts, reference)
    assert edges[0] == 0.0 and edges[-1] == hist.edges_max


# ---------------------------------------------------------------------------------------------
# Awkward data


def test_nan_and_inf_are_not_counted() -> None:
    data = np.array([np.nan, 1.0, -np.inf, -0.5, np.inf, 0.0], np.float32)
    stats = TensorStats(histogram=Histogram(8))
    stats.update(data)
    direct = _streamed([data], 8)
    for hist in (stats.histogram, direct):
        assert hist is not None
        assert hist.total == 3
        assert np.isfinite([hist.edges_min, hist.edges_max]).all()
    assert (stats.min, stats.max, stats.count) == (-0.5, 1.0, 3)


def test_only_nan_leaves_everything_empty() -> None:
    stats = TensorStats(histogram=Histogram(8))
    stats.update(np.full(4, np.nan, np.float32))
    assert stats.count == 0 and stats.histogram is not None and stats.histogram.total == 0


def test_first_batch_of_zeros_gets_a_positive_range_then_takes_the_data_scale() -> None:
    hist = _streamed([np.zeros(100, np.float32)], 8)
    assert hist.edges_max > 0.0 and hist.edges_min == 0.0
    assert hist.counts[0] == 100 and hist.zeros == 100

    later = np.array([0.001, -0.002, 0.003], np.float32)
    hist.update(later)

    # The range is the one the non-zero data alone would give, the zeros in the bin at zero.
    alone = _streamed([later], 8)
    assert (hist.edges_min, hist.edges_max) == (alone.edges_min, alone.edges_max)
    data = np.concatenate([np.zeros(100, np.float32), later])
    np.testing.assert_array_equal(hist.counts, _one_shot(data, hist))
    assert hist.counts[hist.bins // 2] == 100


def test_exact_zeros_are_counted_apart() -> None:
    hist = _streamed([np.array([0.0, -0.0, 1e-30, 0.5], np.float32)], 8)
    assert hist.zeros == 2 and hist.total == 4


def test_bins_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match=r"power of two.*found 6; 8 is the nearest"):
        Histogram(6)
    with pytest.raises(ValueError, match="power of two"):
        Histogram(2)
    with pytest.raises(ValueError, match="power of two"):
        Histogram(1000)


WIDE = [2.0**-140, 1e-30, 1e-3, 1.0, 3e3, 1e30]


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(np.float32, s) for s in WIDE]
    + [(np.float64, s) for s in WIDE]
    + [(np.float16, s) for s in (1e-3, 1.0, 3e3)],  # np.histogram itself fails beyond
)
def test_binning_equals_np_histogram_at_every_scale(dtype: type, scale: float) -> None:
    # Values on and next to bin edges, subnormals and signed zeros: the arithmetic binning
    # must put each exactly where np.histogram's edge comparisons do.
    rng = np.random.default_rng(SEED)
    data = (rng.standard_normal(20_000) * scale).astype(dtype)
    hist = _streamed([data], 64)
    edges = hist.edges[:-1].astype(dtype)
    tiny = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40], np.float64).astype(dtype)
    awkward = np.concatenate(
        [edges, np.nextafter(edges, dtype(np.inf)), np.nextafter(edges, dtype(-np.inf)), tiny]
    ).astype(dtype)
    awkward = awkward[np.abs(awkward.astype(np.float64)) < hist.edges_max]
    hist.update(awkward)
    every = np.concatenate([data, awkward])
    np.testing.assert_array_equal(hist.counts, _one_shot(every, hist))
    assert hist.total == every.size


def test_memory_is_fixed() -> None:
    rng = np.random.default_rng(SEED)
    hist = Histogram(128)
    for scale in (1.0, 1e3, 1e-3, 1e6):
        hist.update(rng.standard_normal(1000).astype(np.float32) * scale)
    assert hist.counts.shape == (128,)
    assert hist.total == 4000


# ---------------------------------------------------------------------------------------------
# Saved tables


def test_table_round_trip_then_more_batches_equals_uninterrupted(tmp_path) -> None:
    rng = np.random.default_rng(SEED)
    first, second = (rng.standard_normal(500).astype(np.float32) * s for s in (1.0, 8.0))
    table = CalibrationTable(stats={"a": TensorStats(histogram=Histogram(64))}, samples=2)
    table["a"].update(np.maximum(first, 0.0))
    table.save(tmp_path / "table.json")

    loaded = CalibrationTable.load(tmp_path / "table.json")
    loaded["a"].update(second)
    straight = TensorStats(histogram=Histogram(64))
    straight.update(np.maximum(first, 0.0))
    straight.update(second)

    got, want = loaded["a"], straight
    assert (got.min, got.max, got.count) == (want.min, want.max, want.count)
    assert got.histogram is not None and want.histogram is not None
    assert got.histogram.zeros == want.histogram.zeros > 0
    assert (got.histogram.edges_min, got.histogram.edges_max) == (
        want.histogram.edges_min,
        want.histogram.edges_max,
    )
    np.testing.assert_array_equal(got.histogram.counts, want.histogram.counts)


def test_table_written_before_zeros_were_counted_still_loads(tmp_path) -> None:
    # A range that is not a power of two, and no "zeros" key: what earlier versions wrote.
    payload = {
        "key": "k",
        "samples": 3,
        "stats": {
            "a": {
                "min": -0.3,
                "max": 0.3,
                "count": 3,
                "histogram": {
                    "bins": 4,
                    "edges_min": -0.3,
                    "edges_max": 0.3,
                    "counts": [1, 0, 1, 1],
                },
            },
            "b": {"min": 0.0, "max": 1.0, "count": 2},
        },
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(payload))
    table = CalibrationTable.load(path)
    hist = table["a"].histogram
    assert hist is not None and hist.zeros == 0 and hist.total == 3
    assert table["b"].histogram is None
    hist.update(np.array([0.5], np.float32))  # still widens by merging
    assert hist.total == 4 and hist.edges_max == pytest.approx(0.6)
