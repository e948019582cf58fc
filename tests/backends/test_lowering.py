"""Lowering to QDQ for onnxruntime, and the onnxruntime executor."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from slimgraph import ir as sir
from slimgraph.backends.onnx_qdq import SinkPadIntoIntegers
from slimgraph.backends.onnxruntime import OrtExecutor, OrtOptions
from slimgraph.errors import DataError, TargetError


def _scalar(name: str, array: np.ndarray, inits: list[ir.Value]) -> ir.Value:
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     shape=ir.Shape(array.shape), const_value=ir.tensor(array, name=name))
    inits.append(value)
    return value


#   x -> Q(s, zp) -> DQ(s, zp) -> Pad(pads, 0.0) -> Q(s2, zp2) -> DQ(s2, zp2) -> y
def qdq_pad(out_scale: float = 0.05, out_zero_point: int = 10) -> ir.Model:
    inits: list[ir.Value] = []
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 2, 3, 3]))
    s = _scalar("s", np.array(0.05, np.float32), inits)
    zp = _scalar("zp", np.array(10, np.uint8), inits)
    s2 = _scalar("s2", np.array(out_scale, np.float32), inits)
    zp2 = _scalar("zp2", np.array(out_zero_point, np.uint8), inits)
    pads = _scalar("pads", np.array([0, 1, 0, 0, 0, 2, 0, 0], np.int64), inits)
    q = ir.node("QuantizeLinear", [x, s, zp], name="q")
    dq = ir.node("DequantizeLinear", [q.outputs[0], s, zp], name="dq")
    pad = ir.node("Pad", [dq.outputs[0], pads], name="pad")
    q2 = ir.node("QuantizeLinear", [pad.outputs[0], s2, zp2], name="q2")
    dq2 = ir.node("DequantizeLinear", [q2.outputs[0], s2, zp2], name="dq2")
    for n in (q, dq, pad, q2, dq2):
        n.outputs[0].name = f"{n.name}_out"
    graph = ir.Graph([x], [dq2.outputs[0]], nodes=[q, dq, pad, q2, dq2], initializers=inits,
                     opset_imports={"": 17}, name="pad")
    model = ir.Model(graph, ir_version=8)
    sir.PassManager([ir.passes.common.ShapeInferencePass()]).run(model)
    return model


def test_pad_moves_onto_integers_and_pads_with_zero_point() -> None:
    model = qdq_pad(out_scale=0.05, out_zero_point=10)
    reference = model.clone()
    records = sir.PassManager([SinkPadIntoIntegers()]).run(model)

    assert records[0].modified
    pad = next(n for n in model.graph if n.op_type == "Pad")
    assert pad.inputs[0].dtype == ir.DataType.UINT8
    assert int(pad.inputs[2].const_value.numpy()) == 10
    assert [n.op_type for n in model.graph].count("QuantizeLinear") == 1
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    executor = OrtExecutor(OrtOptions(optimization="disabled"))
    np.testing.assert_array_equal(executor.session(model).run({"x": x})[0],
                                  executor.session(reference).run({"x": x})[0])


def test_pad_between_different_parameters_is_left_alone() -> None:
    model = qdq_pad(out_scale=0.1, out_zero_point=10)
    records = sir.PassManager([SinkPadIntoIntegers()]).run(model)
    assert not records[0].modified
    pad = next(n for n in model.graph if n.op_type == "Pad")
    assert pad.inputs[0].dtype == ir.DataType.FLOAT


def test_unknown_provider_lists_installed_ones() -> None:
    with pytest.raises(TargetError, match="CPUExecutionProvider"):
        OrtExecutor(OrtOptions(providers=("NoSuchExecutionProvider",)))


def test_bind_checks_inputs() -> None:
    session = OrtExecutor().session(qdq_pad())
    x = np.zeros((1, 2, 3, 3), np.float64)
    assert session.bind([x])["x"].dtype == np.float32  # cast to the declared type
    assert set(session.bind({"x": x, "extra": x})) == {"x"}  # extra keyed inputs ignored
    with pytest.raises(DataError, match="takes 1"):
        session.bind([x, x])
    with pytest.raises(DataError, match="also needs"):
        session.bind({"y": x})
