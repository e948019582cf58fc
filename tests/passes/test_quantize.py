"""Static INT8 quantization on hand-built graphs: the plan, the Q/DQ insertion, and the
numbers against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from slimgraph import ir as sir
from slimgraph.backends.onnx_qdq import lower_qdq
from slimgraph.backends.onnxruntime import OrtExecutor, OrtOptions
from slimgraph.errors import PassError
from slimgraph.ir.quant import QUANT_PARAMS_KEY, QuantDType, QuantScheme
from slimgraph.passes.calibrate import collect_statistics
from slimgraph.passes.quantize.config import OpOverride, QuantConfig
from slimgraph.passes.quantize.insert import REDUCED_WEIGHTS_KEY, InsertQDQ
from slimgraph.passes.quantize.params import AssignParams
from slimgraph.passes.quantize.plan import (
    ACTIVATION_REQUEST_KEY,
    NODE_PLAN_KEY,
    PlanQuantization,
    values_to_calibrate,
)

U8 = QuantScheme(QuantDType.UINT8, symmetric=False)
S8_PER_CHANNEL = QuantScheme(QuantDType.INT8, symmetric=True, per_channel=True)
CONFIG = QuantConfig(activation=U8, weight=S8_PER_CHANNEL)
RNG = np.random.default_rng(0)


def _const(graph_inits: list[ir.Value], name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     shape=ir.Shape(array.shape), const_value=ir.tensor(array, name=name))
    graph_inits.append(value)
    return value


def _model(nodes: list[ir.Node], inputs: list[ir.Value], outputs: list[ir.Value],
           inits: list[ir.Value]) -> ir.Model:
    graph = ir.Graph(inputs, outputs, nodes=nodes, initializers=inits, opset_imports={"": 17},
                     name="test")
    return ir.Model(graph, ir_version=8)


def _input(name: str, shape: list[int]) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(shape))


#   x -> Conv(W, b) -> Relu -> MaxPool -> Flatten -> Gemm(W2, b2) -> y
def conv_relu_pool_gemm() -> ir.Model:
    inits: list[ir.Value] = []
    x = _input("x", [1, 3, 8, 8])
    w = _const(inits, "w", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3)
    b = _const(inits, "b", RNG.standard_normal(4).astype(np.float32) * 0.1)
    w2 = _const(inits, "w2", RNG.standard_normal((5, 64)).astype(np.float32) * 0.1)
    b2 = _const(inits, "b2", RNG.standard_normal(5).astype(np.float32) * 0.1)
    conv = ir.node("Conv", [x, w, b], attributes={"pads": [1, 1, 1, 1]}, name="conv")
    relu = ir.node("Relu", [conv.outputs[0]], name="relu")
    pool = ir.node("MaxPool", [relu.outputs[0]], attributes={"kernel_shape": [2, 2],
                                                             "strides": [2, 2]}, name="pool")
    flat = ir.node("Flatten", [pool.outputs[0]], name="flatten")
    gemm = ir.node("Gemm", [flat.outputs[0], w2, b2], attributes={"transB": 1}, name="gemm")
    gemm.outputs[0].name = "y"
    for n in (conv, relu, pool, flat):
        n.outputs[0].name = f"{n.name}_out"
    nodes = [conv, relu, pool, flat, gemm]
    model = _model(nodes, [x], [gemm.outputs[0]], inits)
    sir.PassManager([ir.passes.common.ShapeInferencePass()]).run(model)
    return model


#   x -> Sigmoid -> Add(c) -> y      (no integer kernel; Add's input arrives in float)
def float_only() -> ir.Model:
    inits: list[ir.Value] = []
    x = _input("x", [1, 4])
    c = _const(inits, "c", np.ones(4, dtype=np.float32))
    tanh = ir.node("Tanh", [x], name="tanh")
    add = ir.node("Add", [tanh.outputs[0], c], name="add")
    tanh.outputs[0].name, add.outputs[0].name = "s", "y"
    model = _model([tanh, add], [x], [add.outputs[0]], inits)
    sir.PassManager([ir.passes.common.ShapeInferencePass()]).run(model)
    return model


def _executor() -> OrtExecutor:
    return OrtExecutor(OrtOptions(threads=1))


def _quantize(model: ir.Model, config: QuantConfig = CONFIG, samples: int = 32) -> ir.Model:
    sir.PassManager([PlanQuantization(config)]).run(model)
    name = model.graph.inputs[0].name
    shape = [d if isinstance(d, int) else 1 for d in model.graph.inputs[0].shape]
    feeds = [{name: RNG.standard_normal(shape).astype(np.float32)} for _ in range(samples)]
    table = collect_statistics(model, values_to_calibrate(model), _executor(), feeds)
    sir.PassManager([AssignParams(table), InsertQDQ()]).run(model)
    return lower_qdq(model)


def _plan(model: ir.Model, name: str):  # type: ignore[no-untyped-def]
    return next(n for n in model.graph if n.name == name).meta[NODE_PLAN_KEY]


def test_plan_quantizes_compute_and_absorbs_relu() -> None:
    model = conv_relu_pool_gemm()
    sir.PassManager([PlanQuantization(CONFIG)]).run(model)

    assert _plan(model, "conv").quantized
    assert _plan(model, "conv").weights[1].axis == 0
    assert _plan(model, "conv").bias == (2, 0, 1)
    assert _plan(model, "relu").absorbed_into.name == "conv"
    assert _plan(model, "pool").quantized and _plan(model, "flatten").quantized
    assert _plan(model, "gemm").weights[1].axis == 0  # transB=1: rows are output channels
    # The ReLU output carries its own range; the pool and flatten share it.
    by_name = {v.name: v for n in model.graph for v in n.outputs}
    relu_request = by_name["relu_out"].meta[ACTIVATION_REQUEST_KEY]
    assert relu_request.share_with is None
    assert by_name["pool_out"].meta[ACTIVATION_REQUEST_KEY].share_with is by_name["relu_out"]
    assert ACTIVATION_REQUEST_KEY not in by_name["conv_out"].meta  # absorbed: no Q after conv
    # Gemm's output goes to no quantized user: QGemm writes float directly.
    assert ACTIVATION_REQUEST_KEY not in model.graph.outputs[0].meta
    assert [v.name for v in values_to_calibrate(model)] == ["x", "relu_out"]


def test_plan_leaves_float_only_graph_alone() -> None:
    model = float_only()
    sir.PassManager([PlanQuantization(CONFIG)]).run(model)

    assert not _plan(model, "tanh").quantized
    assert "no integer kernel" in _plan(model, "tanh").reason
    assert not _plan(model, "add").quantized
    assert "arrives in float" in _plan(model, "add").reason
    assert values_to_calibrate(model) == []


def test_keep_float_by_op_type_and_node_name() -> None:
    model = conv_relu_pool_gemm()
    config = CONFIG.with_float(op_types=frozenset({"Gemm"}), nodes=frozenset({"pool"}))
    sir.PassManager([PlanQuantization(config)]).run(model)

    assert _plan(model, "conv").quantized
    assert _plan(model, "gemm").reason == "kept in float by the spec"
    assert _plan(model, "pool").reason == "kept in float by the spec"
    # With the pool in float, flatten's input arrives in float: left alone too.
    assert not _plan(model, "flatten").quantized


def test_override_scheme_by_node() -> None:
    model = conv_relu_pool_gemm()
    per_tensor = QuantScheme(QuantDType.INT8, symmetric=True, per_channel=False)
    config = QuantConfig(U8, S8_PER_CHANNEL, by_node={"conv": OpOverride(weight=per_tensor)})
    sir.PassManager([PlanQuantization(config)]).run(model)

    assert _plan(model, "conv").weights[1].axis is None
    assert _plan(model, "gemm").weights[1].axis == 0


def test_insert_qdq_structure_and_numbers() -> None:
    model = conv_relu_pool_gemm()
    reference = model.clone()
    # The guard keeps x86 CPUs without VNNI exact (x has a zero point near 128); without it
    # the integer kernels there saturate and drift from the Q/DQ arithmetic.
    _quantize(model, QuantConfig(U8, S8_PER_CHANNEL, saturation_guard=True))
    sir.verify(model)

    ops = sir.op_histogram(model)
    # One pair after x, relu, pool and flatten; pool and flatten reuse relu's parameters.
    assert ops["QuantizeLinear"] == 4
    # Weights and biases of conv and gemm are stored as integers behind a DequantizeLinear.
    weight_dq = [n for n in model.graph if n.op_type == "DequantizeLinear"
                 and n.inputs[0].const_value is not None]
    dtypes = sorted(n.inputs[0].const_value.dtype.name for n in weight_dq)
    assert dtypes == ["INT32", "INT32", "INT8", "INT8"]
    conv = next(n for n in model.graph if n.op_type == "Conv")
    bias_dq = conv.inputs[2].producer()
    x_scale = conv.inputs[0].producer().inputs[1].const_value.numpy()
    w_scale = conv.inputs[1].producer().inputs[1].const_value.numpy()
    np.testing.assert_allclose(bias_dq.inputs[1].const_value.numpy(), x_scale * w_scale,
                               rtol=1e-6)

    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    fp32 = _executor().session(reference).run({"x": x})[0]
    fused = _executor().session(model).run({"x": x})[0]
    simulated = OrtExecutor(OrtOptions(optimization="disabled")).session(model).run({"x": x})[0]
    # Integer kernels compute what the Q/DQ graph describes, up to float rounding...
    np.testing.assert_allclose(fused, simulated, atol=1e-3 * np.abs(simulated).max())
    # ...and that stays close to the float model.
    cosine = np.sum(fused * fp32) / (np.linalg.norm(fused) * np.linalg.norm(fp32))
    assert cosine > 0.995


def test_quantized_model_fuses_into_integer_kernels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import onnx
    import onnxruntime as ort

    model = conv_relu_pool_gemm()
    _quantize(model)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    payload = sir.to_proto(model).SerializeToString()
    ort.InferenceSession(payload, so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    # Everything between the input's QuantizeLinear and the Gemm runs on integers.
    assert ops.count("QLinearConv") == 1 and ops.count("QGemm") == 1
    assert "Relu" not in ops and "Conv" not in ops and "Gemm" not in ops
    assert ops.count("QuantizeLinear") == 1


def test_relu_absorbed_gives_zero_point_at_type_minimum() -> None:
    model = conv_relu_pool_gemm()
    _quantize(model)
    relu = next(n for n in model.graph if n.op_type == "Relu")
    q = relu.outputs[0].consumers()[0]
    assert q.op_type == "QuantizeLinear"
    assert int(q.inputs[2].const_value.numpy()) == 0


def test_saturation_guard_reduces_only_inputs_with_raised_zero_point() -> None:
    # x is standard normal (zero point near 128): the conv reading it gets 7-bit weights;
    # the Gemm reads the ReLU's range (zero point 0) and keeps 8 bits.
    model = conv_relu_pool_gemm()
    _quantize(model, QuantConfig(U8, S8_PER_CHANNEL, saturation_guard=True))
    conv = next(n for n in model.graph if n.op_type == "Conv")
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert conv.meta.get(REDUCED_WEIGHTS_KEY)
    assert not gemm.meta.get(REDUCED_WEIGHTS_KEY)
    conv_weights = conv.inputs[1].producer().inputs[0].const_value.numpy()
    gemm_weights = gemm.inputs[1].producer().inputs[0].const_value.numpy()
    assert np.abs(conv_weights).max() <= 63
    assert np.abs(gemm_weights).max() == 127


def test_shared_parameters_are_the_same_constants() -> None:
    model = conv_relu_pool_gemm()
    _quantize(model)
    pool = next(n for n in model.graph if n.op_type == "MaxPool")
    dq_in = pool.inputs[0].producer()
    q_out = pool.outputs[0].consumers()[0]
    assert dq_in.inputs[1] is q_out.inputs[1] and dq_in.inputs[2] is q_out.inputs[2]


def test_assign_params_fails_naming_value_without_statistics() -> None:
    model = conv_relu_pool_gemm()
    sir.PassManager([PlanQuantization(CONFIG)]).run(model)
    with pytest.raises(PassError, match="value 'x' needs calibration statistics"):
        sir.PassManager([AssignParams(sir.CalibrationTable())]).run(model)


def test_graph_output_keeps_float_value() -> None:
    # x -> Conv -> y (graph output): the Conv still gets a Q/DQ on its input, and y stays float.
    inits: list[ir.Value] = []
    x = _input("x", [1, 2, 4, 4])
    w = _const(inits, "w", RNG.standard_normal((2, 2, 1, 1)).astype(np.float32))
    conv = ir.node("Conv", [x, w], name="conv")
    conv.outputs[0].name = "y"
    model = _model([conv], [x], [conv.outputs[0]], inits)
    sir.PassManager([ir.passes.common.ShapeInferencePass()]).run(model)
    _quantize(model)
    assert model.graph.outputs[0].name == "y"
    assert model.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert QUANT_PARAMS_KEY in model.graph.outputs[0].meta
