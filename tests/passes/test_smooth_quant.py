"""SmoothQuant on hand-built transformer-style graphs: FP32 outputs unchanged against
onnxruntime, where the division goes (gamma and beta, or a Mul), the near miss it must leave
alone, and lower fake-quantized error on activations with outlier channels."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
import pytest

from slimgraph import ir as sir
from slimgraph.backends.onnxruntime import OrtExecutor, OrtOptions
from slimgraph.ir.quant import QuantDType, QuantScheme, params_from_range, params_from_weight
from slimgraph.passes.quantize.smooth_quant import (
    DEFAULT_ALPHAS,
    SmoothQuant,
    channel_absmax,
    choose_alpha,
    scales_for,
    smoothable_values,
    smoothing_scales,
)

FLOAT = ir.DataType.FLOAT
U8 = QuantScheme(QuantDType.UINT8, symmetric=False)
S8_PER_CHANNEL = QuantScheme(QuantDType.INT8, symmetric=True, per_channel=True)
HIDDEN = 16
# Channels of x made a hundred times larger than the rest, as in LLM activations.
OUTLIERS = [3, 11]


class _Builder:
    """Values and initializers of one small graph, with a fixed random stream."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.initializers: list[ir.Value] = []

    def input(self, name: str, shape: list[int | str]) -> ir.Value:
        return ir.Value(name=name, type=ir.TensorType(FLOAT), shape=ir.Shape(shape))

    def const(self, name: str, array: np.ndarray) -> ir.Value:
        array = np.asarray(array, dtype=np.float32)
        value = ir.Value(
            name=name,
            type=ir.TensorType(FLOAT),
            shape=ir.Shape(array.shape),
            const_value=ir.tensor(array, name=name),
        )
        self.initializers.append(value)
        return value

    def weight(self, name: str, shape: tuple[int, ...]) -> ir.Value:
        return self.const(name, self.rng.standard_normal(shape) * 0.3)

    def model(
        self, nodes: list[ir.Node], inputs: list[ir.Value], outputs: list[ir.Value]
    ) -> ir.Model:
        for node in nodes:
            for i, out in enumerate(node.outputs):
                out.name = out.name or f"{node.name}_out{i}"
        graph = ir.Graph(
            inputs,
            outputs,
            nodes=nodes,
            initializers=self.initializers,
            opset_imports={"": 17, "com.microsoft": 1},
            name="test",
        )
        model = ir.Model(graph, ir_version=8)
        sir.PassManager([common.ShapeInferencePass()]).run(model)
        return model


#   x -> LayerNormalization(gamma, beta) -> h -> MatMul(Wq) -> q
#                                            +-> MatMul(Wk) -> k
#                                            +-> MatMul(Wv) -> v
def layernorm_qkv() -> ir.Model:
    b = _Builder()
    x = b.input("x", ["batch", 5, HIDDEN])
    gamma = b.const("gamma", 1.0 + b.rng.standard_normal(HIDDEN) * 0.5)
    beta = b.const("beta", b.rng.standard_normal(HIDDEN) * 0.2)
    norm = ir.node("LayerNormalization", [x, gamma, beta], attributes={"axis": -1}, name="ln")
    norm.outputs[0].name = "h"
    nodes = [norm]
    for head in "qkv":
        mm = ir.node("MatMul", [norm.outputs[0], b.weight(f"w{head}", (HIDDEN, 8))], name=head)
        mm.outputs[0].name = head
        nodes.append(mm)
    return b.model(nodes, [x], [n.outputs[0] for n in nodes[1:]])


#   x -> SkipLayerNormalization(skip, gamma, beta) -> h -> MatMul(W) -> y   (com.microsoft)
def skip_layernorm_matmul() -> ir.Model:
    b = _Builder(1)
    x, skip = b.input("x", ["batch", 5, HIDDEN]), b.input("skip", ["batch", 5, HIDDEN])
    gamma = b.const("gamma", 1.0 + b.rng.standard_normal(HIDDEN) * 0.5)
    beta = b.const("beta", b.rng.standard_normal(HIDDEN) * 0.2)
    norm = ir.node(
        "SkipLayerNormalization",
        [x, skip, gamma, beta],
        domain="com.microsoft",
        attributes={"epsilon": 1e-5},
        name="skip_ln",
    )
    norm.outputs[0].name = "h"
    norm.outputs[0].type = ir.TensorType(FLOAT)  # shape inference knows no contrib op
    mm = ir.node("MatMul", [norm.outputs[0], b.weight("w", (HIDDEN, 8))], name="proj")
    mm.outputs[0].name = "y"
    return b.model([norm, mm], [x, skip], [mm.outputs[0]])


#   x -> MatMul(W) -> y
def input_matmul() -> ir.Model:
    b = _Builder(2)
    x = b.input("x", ["batch", 5, HIDDEN])
    mm = ir.node("MatMul", [x, b.weight("w", (HIDDEN, 8))], name="proj")
    mm.outputs[0].name = "y"
    return b.model([mm], [x], [mm.outputs[0]])


#   x -> Gemm(W as [N, K], c, transB=1) -> y
def gemm_trans_b() -> ir.Model:
    b = _Builder(3)
    x = b.input("x", ["batch", HIDDEN])
    gemm = ir.node(
        "Gemm",
        [x, b.weight("w", (8, HIDDEN)), b.weight("c", (8,))],
        attributes={"transB": 1},
        name="fc",
    )
    gemm.outputs[0].name = "y"
    return b.model([gemm], [x], [gemm.outputs[0]])


#   x -> MatMul(W) -> y
#   +--> Relu -> r          (near miss: a Relu also reads x)
def matmul_and_relu() -> ir.Model:
    b = _Builder(4)
    x = b.input("x", ["batch", 5, HIDDEN])
    mm = ir.node("MatMul", [x, b.weight("w", (HIDDEN, 8))], name="proj")
    relu = ir.node("Relu", [x], name="relu")
    mm.outputs[0].name, relu.outputs[0].name = "y", "r"
    return b.model([mm, relu], [x], [mm.outputs[0], relu.outputs[0]])


def _executor() -> OrtExecutor:
    return OrtExecutor(OrtOptions(threads=1))


def _feeds(model: ir.Model, batches: int = 3, seed: int = 7) -> list[dict[str, np.ndarray]]:
    """Batches for every input, with the outlier channels of the last axis made large."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        feed = {}
        for value in model.graph.inputs:
            shape = [d if isinstance(d, int) else 4 for d in value.shape]
            array = rng.standard_normal(shape).astype(np.float32)
            array[..., OUTLIERS] *= 100.0
            feed[value.name] = array
        out.append(feed)
    return out


def _smooth(model: ir.Model, alpha: float = 0.5) -> SmoothQuant:
    absmax = channel_absmax(model, smoothable_values(model), _executor(), _feeds(model))
    smooth = SmoothQuant(scales_for(model, absmax, alpha))
    sir.PassManager([smooth]).run(model)
    return smooth


def _assert_same_outputs(before: ir.Model, after: ir.Model) -> None:
    for feed in _feeds(before, batches=2, seed=11):
        expected = _executor().session(before).run(feed)
        found = _executor().session(after).run(feed)
        for e, f in zip(expected, found, strict=True):
            np.testing.assert_allclose(f, e, rtol=1e-4, atol=1e-4 * np.abs(e).max())


def _weight(model: ir.Model, node_name: str) -> np.ndarray:
    node = next(n for n in model.graph if n.name == node_name)
    return node.inputs[1].const_value.numpy()


def test_layernorm_folds_into_gamma_and_beta() -> None:
    model = layernorm_qkv()
    reference = model.clone()
    smooth = _smooth(model)

    assert smooth.smoothed == ["h"] and smooth.folded == 1
    assert sir.op_histogram(model) == sir.op_histogram(reference)  # no Mul added
    norm = next(n for n in model.graph if n.op_type == "LayerNormalization")
    scales = _weight(model, "q")[:, 0] / _weight(reference, "q")[:, 0]
    np.testing.assert_allclose(
        _weight(model, "k") / _weight(reference, "k"),
        np.broadcast_to(scales[:, None], (HIDDEN, 8)),
        rtol=1e-5,
    )
    gamma, gamma_ref = norm.inputs[1].const_value.numpy(), _gamma(reference)
    np.testing.assert_allclose(gamma * scales, gamma_ref, rtol=1e-5)
    _assert_same_outputs(reference, model)


def _gamma(model: ir.Model) -> np.ndarray:
    return (
        next(n for n in model.graph if n.op_type == "LayerNormalization")
        .inputs[1]
        .const_value.numpy()
    )


def test_skip_layernorm_folds_into_gamma_and_beta() -> None:
    model = skip_layernorm_matmul()
    reference = model.clone()
    smooth = _smooth(model)

    assert smooth.folded == 1
    assert sir.op_histogram(model) == sir.op_histogram(reference)
    _assert_same_outputs(reference, model)


def test_input_gets_one_mul() -> None:
    model = input_matmul()
    reference = model.clone()
    smooth = _smooth(model)

    assert smooth.smoothed == ["x"] and smooth.folded == 0
    assert sir.op_histogram(model)["Mul"] == 1
    mul = next(n for n in model.graph if n.op_type == "Mul")
    assert mul.inputs[0] is model.graph.inputs[0]
    assert mul.outputs[0].consumers()[0].op_type == "MatMul"
    _assert_same_outputs(reference, model)


def test_gemm_trans_b_scales_weight_columns() -> None:
    model = gemm_trans_b()
    reference = model.clone()
    feeds = _feeds(model)
    absmax = channel_absmax(model, smoothable_values(model), _executor(), feeds)
    scales = scales_for(model, absmax, 0.5)["x"]
    # W is [N, K]: the input channels are its columns.
    expected = np.sqrt(absmax["x"]) / np.sqrt(np.abs(_weight(reference, "fc")).max(axis=0))
    np.testing.assert_allclose(scales, expected, rtol=1e-5)
    sir.PassManager([SmoothQuant({"x": scales})]).run(model)

    np.testing.assert_allclose(_weight(model, "fc"), _weight(reference, "fc") * scales, rtol=1e-6)
    _assert_same_outputs(reference, model)


def test_value_also_read_by_relu_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    model = matmul_and_relu()
    reference = model.clone()
    assert smoothable_values(model) == []
    smooth = SmoothQuant({"x": np.full(HIDDEN, 2.0, dtype=np.float32)})
    with caplog.at_level(logging.WARNING):
        records = sir.PassManager([smooth]).run(model)

    assert not records[0].modified and smooth.smoothed == []
    assert "Relu 'relu' also reads it" in caplog.text
    np.testing.assert_array_equal(_weight(model, "proj"), _weight(reference, "proj"))
    assert sir.op_histogram(model) == sir.op_histogram(reference)


def test_smoothing_scales_formula_and_zero_guards() -> None:
    act = np.array([4.0, 0.0, 9.0, 1.0])
    w1 = np.array([[1.0, -2.0], [1.0, 1.0], [0.5, 0.25], [0.0, 0.0]])
    w2 = np.array([[0.5], [3.0], [-4.0], [0.0]])
    scales = smoothing_scales(act, [w1, w2], alpha=0.5)
    # max|W_j| over both products: 2, 3, 4, 0. Channel 1 never fires and channel 3 has no
    # weight: both keep 1.
    np.testing.assert_allclose(scales, [2.0 / np.sqrt(2.0), 1.0, 3.0 / 2.0, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        smoothing_scales(act, [w1], alpha=1.5)
    with pytest.raises(ValueError, match="input channels"):
        smoothing_scales(act, [w1.T], alpha=0.5)


def _fake_quant_error(
    feeds: list[dict[str, np.ndarray]], weight: np.ndarray, scales: np.ndarray
) -> float:
    """|X·W - Q(X/s)·Q(W·s)|² / |X·W|², computed here independently of the module."""
    rows = [f["x"].reshape(-1, HIDDEN) for f in feeds]
    smoothed = [r / scales for r in rows]
    act = params_from_range(min(s.min() for s in smoothed), max(s.max() for s in smoothed), U8)
    w = weight * scales[:, None]
    wq = params_from_weight(w, S8_PER_CHANNEL, axis=1)
    w_fake = wq.dequantize(wq.quantize(w))
    error = power = 0.0
    for r, s in zip(rows, smoothed, strict=True):
        exact = r @ weight
        error += float(np.sum((exact - act.dequantize(act.quantize(s)) @ w_fake) ** 2))
        power += float(np.sum(exact**2))
    return error / power


def test_smoothing_lowers_fake_quant_error_on_outlier_channels() -> None:
    model = input_matmul()
    feeds = _feeds(model, batches=4)
    weight = _weight(model, "proj")
    absmax = channel_absmax(model, smoothable_values(model), _executor(), feeds)
    scales = scales_for(model, absmax, 0.5)["x"]

    before = _fake_quant_error(feeds, weight, np.ones(HIDDEN, dtype=np.float32))
    after = _fake_quant_error(feeds, weight, scales)
    assert after < before / 3

    best, errors = choose_alpha(
        model, _executor(), iter(feeds), act_scheme=U8, weight_scheme=S8_PER_CHANNEL
    )
    assert best in DEFAULT_ALPHAS and set(errors) == set(DEFAULT_ALPHAS)
    assert all(np.isfinite(e) and e > 0 for e in errors.values())
    assert errors[best] == min(errors.values())
    # choose_alpha measures what the independent computation above measures.
    np.testing.assert_allclose(errors[0.5], after, rtol=1e-3)
