"""Bias correction on graphs quantized by slimgraph's own passes: the mean output error drops
against FP32 in onnxruntime, biases stay INT32 behind a DequantizeLinear, the Conv still fuses
into QLinearConv, and a layer kept in float is left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxruntime as ort

from slimgraph import ir as sir
from slimgraph.backends.onnx_qdq import lower_qdq
from slimgraph.backends.onnxruntime import OrtExecutor, OrtOptions
from slimgraph.ir.quant import QuantDType, QuantScheme
from slimgraph.passes.calibrate import collect_statistics
from slimgraph.passes.quantize.bias_correction import (
    CorrectBias,
    channel_means,
    float_weights,
    layer_input_means,
)
from slimgraph.passes.quantize.config import QuantConfig
from slimgraph.passes.quantize.insert import InsertQDQ
from slimgraph.passes.quantize.params import AssignParams
from slimgraph.passes.quantize.plan import PlanQuantization, values_to_calibrate

FLOAT = ir.DataType.FLOAT
U8 = QuantScheme(QuantDType.UINT8, symmetric=False)
S8_PER_TENSOR = QuantScheme(QuantDType.INT8, symmetric=True)
# The guard keeps x86 CPUs without VNNI exact: their u8 x s8 pair sums saturate otherwise,
# which adds an error of its own that depends on the machine.
CONFIG = QuantConfig(activation=U8, weight=S8_PER_TENSOR, saturation_guard=True)
# Inputs average well above zero, so that (W_q - W)·E[x] is a visible shift.
INPUT_MEAN, INPUT_STD = 1.0, 0.5


class _Builder:
    """Values and initializers of one small graph, with a fixed random stream."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.initializers: list[ir.Value] = []

    def input(self, name: str, shape: list[int | str]) -> ir.Value:
        return ir.Value(name=name, type=ir.TensorType(FLOAT), shape=ir.Shape(shape))

    def const(self, name: str, shape: tuple[int, ...], scale: float) -> ir.Value:
        array = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        value = ir.Value(
            name=name,
            type=ir.TensorType(FLOAT),
            shape=ir.Shape(shape),
            const_value=ir.tensor(array, name=name),
        )
        self.initializers.append(value)
        return value

    def model(
        self, nodes: list[ir.Node], inputs: list[ir.Value], outputs: list[ir.Value]
    ) -> ir.Model:
        for node in nodes:
            node.outputs[0].name = node.outputs[0].name or f"{node.name}_out"
        graph = ir.Graph(
            inputs,
            outputs,
            nodes=nodes,
            initializers=self.initializers,
            opset_imports={"": 17},
            name="test",
        )
        model = ir.Model(graph, ir_version=8)
        sir.PassManager([common.ShapeInferencePass()]).run(model)
        return model


#   x -> Conv(W, [b]) -> Relu -> Flatten -> Gemm(W2, b2, transB=1) -> y
#
# No padding: at the borders a padded Conv's taps read zeros, so its shift differs there, and
# Flatten -> Gemm weighs every position differently; a bias per channel removes only the
# shift averaged over the positions (with pads 1 here the mean error drops 2 to 4 times).
def conv_relu_gemm(conv_bias: bool = True) -> ir.Model:
    b = _Builder()
    x = b.input("x", ["batch", 3, 6, 6])
    conv_inputs = [x, b.const("w", (4, 3, 3, 3), 0.3)]
    if conv_bias:
        conv_inputs.append(b.const("b", (4,), 0.1))
    conv = ir.node("Conv", conv_inputs, name="conv")
    relu = ir.node("Relu", [conv.outputs[0]], name="relu")
    flat = ir.node("Flatten", [relu.outputs[0]], name="flatten")
    gemm = ir.node(
        "Gemm",
        [flat.outputs[0], b.const("w2", (5, 64), 0.1), b.const("b2", (5,), 0.1)],
        attributes={"transB": 1},
        name="gemm",
    )
    gemm.outputs[0].name = "y"
    return b.model([conv, relu, flat, gemm], [x], [gemm.outputs[0]])


#   x -> Conv(W, b, group=3, pads=1) -> y      (depthwise-style: each output reads one channel)
def padded_grouped_conv() -> ir.Model:
    b = _Builder(2)
    x = b.input("x", ["batch", 3, 6, 6])
    conv = ir.node(
        "Conv",
        [x, b.const("w", (6, 1, 3, 3), 0.3), b.const("b", (6,), 0.1)],
        attributes={"pads": [1, 1, 1, 1], "group": 3},
        name="conv",
    )
    conv.outputs[0].name = "y"
    return b.model([conv], [x], [conv.outputs[0]])


#   x -> MatMul(W) -> y          (no bias: CorrectBias adds an Add)
def matmul() -> ir.Model:
    b = _Builder(1)
    x = b.input("x", ["batch", 24])
    mm = ir.node("MatMul", [x, b.const("w", (24, 6), 0.3)], name="mm")
    mm.outputs[0].name = "y"
    return b.model([mm], [x], [mm.outputs[0]])


#   x -> MatMul(W) -> Add(c) -> y      (a transformer projection: the Add holds the bias)
def matmul_add() -> ir.Model:
    b = _Builder(1)
    x = b.input("x", ["batch", 24])
    mm = ir.node("MatMul", [x, b.const("w", (24, 6), 0.3)], name="mm")
    add = ir.node("Add", [mm.outputs[0], b.const("c", (6,), 0.1)], name="add")
    add.outputs[0].name = "y"
    return b.model([mm, add], [x], [add.outputs[0]])


def _executor() -> OrtExecutor:
    return OrtExecutor(OrtOptions(threads=1))


def _batches(model: ir.Model, count: int, seed: int, size: int = 16) -> list[dict]:
    rng = np.random.default_rng(seed)
    x = model.graph.inputs[0]
    shape = [size if not isinstance(d, int) else d for d in x.shape]
    return [
        {x.name: (INPUT_MEAN + INPUT_STD * rng.standard_normal(shape)).astype(np.float32)}
        for _ in range(count)
    ]


def _quantize(model: ir.Model, config: QuantConfig = CONFIG) -> tuple[dict, dict]:
    """Quantize ``model`` in place as CandidateBuilder does, first taking what CorrectBias
    needs from the FP32 model: its float weights and its layers' input means."""
    calibration = _batches(model, 8, seed=1)
    weights = float_weights(model)
    means = layer_input_means(model, _executor(), calibration)
    sir.PassManager([PlanQuantization(config)]).run(model)
    table = sir.CalibrationTable()
    if not config.weight_only:
        table = collect_statistics(model, values_to_calibrate(model), _executor(), calibration)
    sir.PassManager([AssignParams(table), InsertQDQ()]).run(model)
    return means, weights


def _mean_error(model: ir.Model, reference: ir.Model, axis: int = -1) -> np.ndarray:
    """Mean of (quantized - FP32) per output channel (along ``axis``) over 2048 fresh
    samples."""
    test, ref = _executor().session(model), _executor().session(reference)
    total = 0.0
    batches = _batches(reference, 32, seed=2, size=64)
    for feed in batches:
        diff = test.run(feed)[0].astype(np.float64) - ref.run(feed)[0]
        diff = np.moveaxis(diff, axis, -1)
        total = total + diff.reshape(-1, diff.shape[-1]).mean(axis=0)
    return total / len(batches)


def _node(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def _fused_ops(model: ir.Model, tmp_path: Path) -> list[str]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    payload = sir.to_proto(model).SerializeToString()
    ort.InferenceSession(payload, so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def _int32_bias(node: ir.Node) -> np.ndarray:
    dq = node.inputs[2].producer()
    assert dq is not None and dq.op_type == "DequantizeLinear"
    assert dq.inputs[0].const_value.dtype == ir.DataType.INT32
    return dq.inputs[0].const_value.numpy()


def test_conv_and_gemm_mean_error_drops(tmp_path: Path) -> None:
    model = conv_relu_gemm()
    reference = model.clone()
    means, weights = _quantize(model)
    before_biases = {n: _int32_bias(_node(model, n)).copy() for n in ("conv", "gemm")}
    before = _mean_error(lower_qdq(model.clone()), reference)

    correct = CorrectBias(means, weights)
    sir.PassManager([correct]).run(model)
    lower_qdq(model)
    after = _mean_error(model, reference)

    assert correct.corrected == 2 and 0 < correct.channels <= 4 + 5
    assert np.linalg.norm(after) < np.linalg.norm(before) / 3
    for name in ("conv", "gemm"):  # still INT32 behind a DequantizeLinear, new numbers
        assert not np.array_equal(_int32_bias(_node(model, name)), before_biases[name])
    ops = _fused_ops(model, tmp_path)
    assert ops.count("QLinearConv") == 1 and "Conv" not in ops


def test_conv_without_bias_gets_int32_bias_and_still_fuses(tmp_path: Path) -> None:
    model = conv_relu_gemm(conv_bias=False)
    reference = model.clone()
    means, weights = _quantize(model)
    before = _mean_error(lower_qdq(model.clone()), reference)

    sir.PassManager([CorrectBias(means, weights)]).run(model)
    lower_qdq(model)

    conv = _node(model, "conv")
    _int32_bias(conv)
    x_scale = conv.inputs[0].producer().inputs[1].const_value.numpy()
    w_scale = conv.inputs[1].producer().inputs[1].const_value.numpy()
    np.testing.assert_allclose(
        conv.inputs[2].producer().inputs[1].const_value.numpy(),
        np.full(4, x_scale * w_scale),
        rtol=1e-6,
    )
    assert np.linalg.norm(_mean_error(model, reference)) < np.linalg.norm(before) / 3
    ops = _fused_ops(model, tmp_path)
    assert ops.count("QLinearConv") == 1 and "Conv" not in ops


def test_padded_grouped_conv_corrects_the_mean_over_positions() -> None:
    # Border taps read padding, not E[x]: the shift is averaged over the output positions.
    model = padded_grouped_conv()
    reference = model.clone()
    means, weights = _quantize(model)
    before = _mean_error(model, reference, axis=1)

    sir.PassManager([CorrectBias(means, weights)]).run(model)

    assert np.linalg.norm(_mean_error(model, reference, axis=1)) < np.linalg.norm(before) / 10


def test_matmul_gets_float_add_after_it() -> None:
    model = matmul()
    reference = model.clone()
    means, weights = _quantize(model)
    before = _mean_error(model, reference)

    sir.PassManager([CorrectBias(means, weights)]).run(model)

    add = model.graph.outputs[0].producer()
    assert add.op_type == "Add" and add.inputs[0].producer().op_type == "MatMul"
    assert model.graph.outputs[0].name == "y"
    assert np.linalg.norm(_mean_error(model, reference)) < np.linalg.norm(before) / 3


def test_matmul_bias_in_following_add_is_updated() -> None:
    model = matmul_add()
    reference = model.clone()
    means, weights = _quantize(model)
    before = _mean_error(model, reference)
    ops = sir.op_histogram(model)

    sir.PassManager([CorrectBias(means, weights)]).run(model)

    assert sir.op_histogram(model) == ops  # no node added: the Add's constant changed
    c = _node(model, "add").inputs[1].const_value.numpy()
    assert not np.array_equal(c, _node(reference, "add").inputs[1].const_value.numpy())
    assert np.linalg.norm(_mean_error(model, reference)) < np.linalg.norm(before) / 3


def test_weight_only_updates_float_bias() -> None:
    # Weight-only quantization leaves the activations and the biases in float.
    model = conv_relu_gemm()
    reference = model.clone()
    means, weights = _quantize(model, QuantConfig(U8, S8_PER_TENSOR, weight_only=True))
    before = _mean_error(model, reference)
    bias = _node(model, "gemm").inputs[2].const_value.numpy().copy()

    sir.PassManager([CorrectBias(means, weights)]).run(model)

    assert _node(model, "gemm").inputs[2].const_value.dtype == FLOAT
    assert not np.array_equal(_node(model, "gemm").inputs[2].const_value.numpy(), bias)
    assert np.linalg.norm(_mean_error(model, reference)) < np.linalg.norm(before) / 3


def test_layer_kept_in_float_is_left_alone() -> None:
    model = conv_relu_gemm()
    means, weights = _quantize(model, CONFIG.with_float(nodes=frozenset({"gemm"})))
    gemm = _node(model, "gemm")
    w2, b2 = gemm.inputs[1], gemm.inputs[2]
    b2_data = b2.const_value.numpy().copy()

    correct = CorrectBias(means, weights)
    sir.PassManager([correct]).run(model)

    assert correct.corrected == 1  # the Conv only
    assert gemm.inputs[1] is w2 and gemm.inputs[2] is b2
    np.testing.assert_array_equal(b2.const_value.numpy(), b2_data)


def test_channel_means_per_axis() -> None:
    model = conv_relu_gemm()
    batches = _batches(model, 3, seed=5)
    x = model.graph.inputs[0]
    means = channel_means(model, [x], _executor(), batches, axis=1)["x"]
    expected = np.concatenate([b["x"] for b in batches]).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(means, expected, rtol=1e-5)
    last = channel_means(model, [x], _executor(), batches, axis=-1)["x"]
    np.testing.assert_allclose(
        last, np.concatenate([b["x"] for b in batches]).mean(axis=(0, 1, 2)), rtol=1e-5
    )
