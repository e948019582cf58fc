"""Quantization numbers (ranges, scales, zero points, rounding) against onnxruntime, the
calibration summaries, and the networkx view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimgraph.ir import (
    CalibrationTable,
    Histogram,
    QuantDType,
    QuantParams,
    QuantScheme,
    TensorStats,
    params_from_range,
    params_from_weight,
    to_networkx,
)

INT8, UINT8 = QuantDType.INT8, QuantDType.UINT8
S8 = QuantScheme(INT8, symmetric=True)
U8 = QuantScheme(UINT8, symmetric=False)
S8_PER_CHANNEL = QuantScheme(INT8, symmetric=True, per_channel=True)


# ---------------------------------------------------------------------------------------------
# Integer ranges


@pytest.mark.parametrize(
    ("dtype", "symmetric", "reduce_range", "expected"),
    [
        (INT8, False, False, (-128, 127)),
        (INT8, True, False, (-127, 127)),
        (INT8, False, True, (-64, 63)),
        (INT8, True, True, (-63, 63)),
        (UINT8, False, False, (0, 255)),
        (UINT8, True, False, (0, 255)),
        (UINT8, False, True, (0, 127)),
        (UINT8, True, True, (0, 127)),
    ],
)
def test_quant_range(
    dtype: QuantDType, symmetric: bool, reduce_range: bool, expected: tuple[int, int]
) -> None:
    assert dtype.quant_range(symmetric=symmetric, reduce_range=reduce_range) == expected


def test_dtype_properties() -> None:
    assert (INT8.range, INT8.bits, INT8.signed, INT8.onnx) == (
        (-128, 127),
        8,
        True,
        ir.DataType.INT8,
    )
    assert (UINT8.range, UINT8.signed, UINT8.numpy) == ((0, 255), False, np.uint8)


# ---------------------------------------------------------------------------------------------
# Parameters from a range


@pytest.mark.parametrize(
    "scheme",
    [
        U8,
        S8,
        QuantScheme(UINT8, symmetric=True),
        QuantScheme(INT8, symmetric=False, reduce_range=True),
    ],
)
@pytest.mark.parametrize(("low", "high"), [(-1.3, 2.7), (0.5, 2.0), (-4.0, -0.25)])
def test_zero_is_exactly_representable(scheme: QuantScheme, low: float, high: float) -> None:
    params = params_from_range(low, high, scheme)
    zero = np.zeros(3, np.float32)

    q = params.quantize(zero)

    assert np.all(q == params.zero_point)
    assert np.all(params.dequantize(q) == 0.0)
    qmin, qmax = scheme.dtype.quant_range(
        symmetric=scheme.symmetric, reduce_range=scheme.reduce_range
    )
    assert qmin <= int(params.zero_point) <= qmax


@pytest.mark.parametrize("scheme", [U8, S8])
def test_all_zero_tensor_gets_a_valid_scale(scheme: QuantScheme) -> None:
    params = params_from_range(0.0, 0.0, scheme)

    assert np.isfinite(params.scale) and params.scale > 0
    assert params.quantize(np.zeros(4, np.float32)).tolist() == [int(params.zero_point)] * 4


def test_symmetric_int8_has_zero_point_zero() -> None:
    params = params_from_range(-0.5, 2.54, S8)

    assert params.zero_point == 0 and params.zero_point.dtype == np.int8
    assert params.scale == pytest.approx(2.54 / 127, rel=1e-6)
    assert params.quantize(np.array([2.54, -2.54], np.float32)).tolist() == [127, -127]


def test_asymmetric_uint8_of_non_negative_range_has_zero_point_zero() -> None:
    params = params_from_range(0.0, 5.1, U8)

    assert params.zero_point == 0 and params.zero_point.dtype == np.uint8
    assert params.scale == pytest.approx(5.1 / 255, rel=1e-6)
    assert params.quantize(np.array([0.0, 5.1], np.float32)).tolist() == [0, 255]


def test_asymmetric_uint8_of_mixed_range() -> None:
    # Near miss of the test above: a negative low end moves the zero point up.
    params = params_from_range(-1.0, 3.0, U8)

    assert params.scale == pytest.approx(4.0 / 255, rel=1e-6)
    assert params.zero_point == round(1.0 / (4.0 / 255))


# ---------------------------------------------------------------------------------------------
# Parameters from a weight


def test_per_channel_weight_axis_0() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    weight[2] *= 10.0  # one channel with a much wider range

    params = params_from_weight(weight, S8_PER_CHANNEL, axis=0)

    assert params.axis == 0 and params.scale.shape == (4,)
    expected = np.abs(weight).reshape(4, -1).max(axis=1) / 127
    np.testing.assert_allclose(params.scale, expected, rtol=1e-6)
    assert params.zero_point.tolist() == [0, 0, 0, 0]
    _assert_round_trip_within_half_scale(params, weight)


def test_per_channel_weight_axis_1() -> None:
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((6, 5)).astype(np.float32) * np.arange(1, 6, dtype=np.float32)

    params = params_from_weight(weight, S8_PER_CHANNEL, axis=1)

    assert params.axis == 1 and params.scale.shape == (5,)
    np.testing.assert_allclose(params.scale, np.abs(weight).max(axis=0) / 127, rtol=1e-6)
    _assert_round_trip_within_half_scale(params, weight)


def test_per_tensor_weight_ignores_axis() -> None:
    weight = np.linspace(-2.0, 1.0, 12, dtype=np.float32).reshape(3, 4)

    params = params_from_weight(weight, S8, axis=0)

    assert params.axis is None and params.scale.shape == ()
    assert params.scale == pytest.approx(2.0 / 127, rel=1e-6)


def test_per_channel_without_axis_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="channel axis"):
        params_from_weight(np.ones((2, 2), np.float32), S8_PER_CHANNEL, axis=None)


def _assert_round_trip_within_half_scale(params: QuantParams, x: np.ndarray) -> None:
    error = np.abs(params.dequantize(params.quantize(x)) - x)
    shape = [1] * x.ndim
    if params.axis is not None:
        shape[params.axis] = -1
    bound = params.scale.astype(np.float64).reshape(shape) / 2
    assert np.all(error <= bound * (1 + 1e-6))


@pytest.mark.parametrize("scheme", [U8, S8, QuantScheme(UINT8, symmetric=False, reduce_range=True)])
def test_quantize_dequantize_error_within_half_scale(scheme: QuantScheme) -> None:
    x = np.random.default_rng(2).standard_normal(1000).astype(np.float32) * 3

    params = params_from_range(x.min(), x.max(), scheme)

    _assert_round_trip_within_half_scale(params, x)


# ---------------------------------------------------------------------------------------------
# QuantParams.quantize against onnxruntime's QuantizeLinear


#   x -> QuantizeLinear(scale, zero_point[, axis]) -> q
def quantize_linear(params: QuantParams, shape: list[int]) -> ort.InferenceSession:
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(params.dtype.numpy))
    attributes = {} if params.axis is None else {"axis": params.axis}
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], **attributes)],
        "quantize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("q", dtype, shape)],
        [
            numpy_helper.from_array(params.scale.astype(np.float32), "scale"),
            numpy_helper.from_array(params.zero_point.astype(params.dtype.numpy), "zp"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _ort_quantize(params: QuantParams, x: np.ndarray) -> np.ndarray:
    (q,) = quantize_linear(params, list(x.shape)).run(None, {"x": x})
    return q


@pytest.mark.parametrize(("dtype", "zero_point"), [(UINT8, 128), (UINT8, 0), (INT8, 0), (INT8, -3)])
def test_ties_round_half_to_even_like_onnxruntime(dtype: QuantDType, zero_point: int) -> None:
    params = QuantParams(np.array(0.5, np.float32), np.array(zero_point), dtype)
    halves = np.array([-2.5, -1.5, -0.5, 0.25, 0.5, 0.75, 1.5, 2.5, 3.5], np.float32) * 0.5

    ours = params.quantize(halves)

    np.testing.assert_array_equal(ours, _ort_quantize(params, halves))
    assert ours.dtype == dtype.numpy
    low, high = dtype.range
    expected = np.clip(np.array([-2, -2, 0, 0, 0, 1, 2, 2, 4]) + zero_point, low, high)
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("dtype", [UINT8, INT8])
def test_saturation_like_onnxruntime(dtype: QuantDType) -> None:
    params = QuantParams(np.array(0.1, np.float32), np.array(3), dtype)
    x = np.array([-1e6, -30.0, -12.9, 0.0, 12.4, 25.0, 1e6], np.float32)

    ours = params.quantize(x)

    np.testing.assert_array_equal(ours, _ort_quantize(params, x))
    assert ours[0] == dtype.range[0] and ours[-1] == dtype.range[1]


@pytest.mark.parametrize("scheme", [U8, S8, QuantScheme(UINT8, symmetric=True)])
def test_random_values_match_onnxruntime(scheme: QuantScheme) -> None:
    x = np.random.default_rng(3).standard_normal(4096).astype(np.float32) * 3

    params = params_from_range(x.min() * 0.8, x.max() * 0.8, scheme)  # some saturate

    np.testing.assert_array_equal(params.quantize(x), _ort_quantize(params, x))


def test_per_channel_matches_onnxruntime() -> None:
    weight = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    weight[1] *= 0.01

    params = params_from_weight(weight, S8_PER_CHANNEL, axis=0)

    np.testing.assert_array_equal(params.quantize(weight), _ort_quantize(params, weight))


def test_same_numbers() -> None:
    a = params_from_range(-1.0, 1.0, S8)
    b = params_from_range(-1.0, 1.0, S8, origin="shared with x")

    assert a.same_numbers(b)
    assert not a.same_numbers(params_from_range(-1.0, 1.01, S8))
    assert not a.same_numbers(params_from_range(-1.0, 1.0, U8))


# ---------------------------------------------------------------------------------------------
# Calibration statistics


def test_streaming_stats_equal_one_pass() -> None:
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((4, 16)).astype(np.float32) * s for s in (0.5, 3.0, 1.0)]
    streamed, whole = TensorStats(), TensorStats()

    for batch in batches:
        streamed.update(batch)
    whole.update(np.concatenate(batches))

    assert (streamed.min, streamed.max, streamed.count) == (whole.min, whole.max, whole.count)
    assert streamed.count == 3 * 64


def test_stats_skip_non_finite_and_empty() -> None:
    stats = TensorStats()

    stats.update(np.array([1.0, np.inf, -np.nan, -2.0], np.float32))
    stats.update(np.zeros(0, np.float32))
    stats.update(np.array([np.inf], np.float32))

    assert (stats.min, stats.max, stats.count) == (-2.0, 1.0, 2)


def _one_pass(hist: Histogram, *batches: np.ndarray) -> np.ndarray:
    """What one ``np.histogram`` over all the data gives with ``hist``'s final range."""
    data = np.concatenate([np.ravel(b) for b in batches])
    return np.histogram(data, bins=hist.bins, range=(hist.edges_min, hist.edges_max))[0]


def test_histogram_widening_keeps_total_counts() -> None:
    rng = np.random.default_rng(6)
    hist = Histogram(bins=16)
    first = rng.uniform(-1.0, 1.0, 500)
    second = rng.uniform(-7.0, 7.0, 300)

    hist.update(first)
    assert (hist.edges_min, hist.edges_max) == (-1.0, 1.0)
    hist.update(second)

    assert hist.counts.sum() == 800 and hist.counts.size == 16
    assert (hist.edges_min, hist.edges_max) == (-8.0, 8.0)  # doubled three times
    assert hist.edges[8] == 0.0  # zero stays on the middle edge
    np.testing.assert_array_equal(hist.counts, _one_pass(hist, first, second))


def test_histogram_is_the_same_whatever_the_batching() -> None:
    rng = np.random.default_rng(9)
    data = rng.standard_normal(3000) * np.repeat([0.1, 1.0, 20.0], 1000)
    streamed, whole = Histogram(bins=64), Histogram(bins=64)

    for batch in np.split(data, 6):
        streamed.update(batch)
    whole.update(data)

    assert (streamed.edges_min, streamed.edges_max) == (whole.edges_min, whole.edges_max)
    np.testing.assert_array_equal(streamed.counts, whole.counts)
    np.testing.assert_array_equal(streamed.counts, _one_pass(streamed, data))


def test_histogram_inside_range_does_not_widen() -> None:
    # Near miss: a second batch inside the first's range leaves the edges alone.
    hist = Histogram(bins=8)
    hist.update(np.array([-2.0, 2.0]))
    edges = (hist.edges_min, hist.edges_max)
    hist.update(np.array([-1.9, 0.1, 3.9]))

    assert (hist.edges_min, hist.edges_max) == edges == (-4.0, 4.0)
    assert hist.counts.sum() == 5


def test_one_sided_histogram_widens_to_negatives() -> None:
    rng = np.random.default_rng(7)
    hist = Histogram(bins=8)
    positives = rng.uniform(0.0, 1.0, 200)
    positives[0] = 1.0
    negatives = np.array([-0.3, -1.7, -3.5])

    hist.update(positives)
    assert (hist.edges_min, hist.edges_max) == (0.0, 2.0)
    one_sided = hist.counts.copy()
    hist.update(negatives)

    assert (hist.edges_min, hist.edges_max) == (-4.0, 4.0)
    assert hist.counts.sum() == 203
    # [0, 2] in 8 bins became [0, 4] in the upper 4 bins of [-4, 4], merged 4 to 1.
    assert hist.counts[4:].tolist() == [one_sided[:4].sum(), one_sided[4:].sum(), 0, 0]
    assert hist.counts[:4].tolist() == [1, 0, 1, 1]
    np.testing.assert_array_equal(hist.counts, _one_pass(hist, positives, negatives))


def test_one_sided_histogram_widens_upwards() -> None:
    hist = Histogram(bins=4)
    hist.update(np.array([0.1, 0.3, 0.6, 1.0]))
    assert (hist.edges_min, hist.edges_max) == (0.0, 2.0)

    hist.update(np.array([3.0]))

    assert (hist.edges_min, hist.edges_max) == (0.0, 4.0)
    assert hist.counts.tolist() == [3, 1, 0, 1]  # 1.0 sits on the edge of bin [1, 2)


def test_histogram_bins_must_split_in_quarters() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        Histogram(bins=6)


def test_calibration_table_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    with_hist = TensorStats(histogram=Histogram(bins=32))
    with_hist.update(rng.standard_normal(1000).astype(np.float32))
    plain = TensorStats()
    plain.update(np.array([0.25, 4.0], np.float32))
    table = CalibrationTable({"conv_out": with_hist, "x": plain}, samples=10, key="mnist/10")
    path = tmp_path / "cache" / "calibration.json"

    table.save(path)
    loaded = CalibrationTable.load(path)

    assert [p.name for p in path.parent.iterdir()] == ["calibration.json"]
    assert (loaded.samples, loaded.key, list(loaded), len(loaded)) == (
        10,
        "mnist/10",
        ["conv_out", "x"],
        2,
    )
    assert "x" in loaded and "y" not in loaded
    assert (loaded["x"].min, loaded["x"].max, loaded["x"].count) == (0.25, 4.0, 2)
    assert loaded["x"].histogram is None
    got, expected = loaded["conv_out"], table["conv_out"]
    assert (got.min, got.max, got.count) == (expected.min, expected.max, expected.count)
    assert got.histogram.bins == 32
    assert (got.histogram.edges_min, got.histogram.edges_max) == (
        expected.histogram.edges_min,
        expected.histogram.edges_max,
    )
    np.testing.assert_array_equal(got.histogram.counts, expected.histogram.counts)
    assert got.histogram.counts.dtype == np.int64


# ---------------------------------------------------------------------------------------------
# networkx view


#   x -> Relu(relu) -> r ─┬─> Add(add)(r, r) -> s -> Mul(mul)(s, w) -> y
#                         └─────(twice)─────┘          w: initializer
def relu_add_mul() -> ir.Graph:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2]))
    w = ir.Value(
        name="w",
        type=ir.TensorType(ir.DataType.FLOAT),
        shape=ir.Shape([2]),
        const_value=ir.tensor(np.ones(2, np.float32), name="w"),
    )
    relu = ir.node("Relu", [x], name="relu")
    add = ir.node("Add", [relu.outputs[0], relu.outputs[0]], name="add")
    mul = ir.node("Mul", [add.outputs[0], w], name="mul")
    return ir.Graph(
        [x],
        [mul.outputs[0]],
        nodes=[relu, add, mul],
        initializers=[w],
        opset_imports={"": 17},
        name="small",
    )


def test_to_networkx() -> None:
    graph = relu_add_mul()
    relu, add, mul = list(graph)

    view = to_networkx(graph)

    assert view.graph["name"] == "small"
    assert list(view.nodes) == [relu, add, mul]  # no node for x or w
    assert [view.nodes[n]["op_type"] for n in view] == ["Relu", "Add", "Mul"]
    assert [view.nodes[n]["order"] for n in view] == [0, 1, 2]
    assert view.number_of_edges() == 3
    relu_to_add = sorted(d["index"] for d in view.get_edge_data(relu, add).values())
    assert relu_to_add == [0, 1]
    assert all(d["value"] is relu.outputs[0] for d in view.get_edge_data(relu, add).values())
    (add_to_mul,) = view.get_edge_data(add, mul).values()
    assert add_to_mul == {"value": add.outputs[0], "index": 0}
    assert not view.has_edge(relu, mul)
