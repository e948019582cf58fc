"""Real exported models keep weights in Constant nodes and whole networks inside If branches.
Both must be quantized, not skipped and not mistaken for activations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import yaml
from onnx import TensorProto, helper, numpy_helper

from slimgraph.cli import main

RNG = np.random.default_rng(0)


def _branch(name: str, seed: int) -> onnx.GraphProto:
    """x -> Conv(W from a Constant node, b) -> Relu -> Conv(W2 from a Constant) -> y_<name>"""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], [f"{name}_w1"],
                         value=numpy_helper.from_array(w1, f"{name}_w1_value")),
        helper.make_node("Constant", [], [f"{name}_w2"],
                         value=numpy_helper.from_array(w2, f"{name}_w2_value")),
        helper.make_node("Conv", ["x", f"{name}_w1"], [f"{name}_c1"], pads=[1, 1, 1, 1],
                         name=f"{name}_conv1"),
        helper.make_node("Relu", [f"{name}_c1"], [f"{name}_r1"], name=f"{name}_relu"),
        helper.make_node("Conv", [f"{name}_r1", f"{name}_w2"], [f"y_{name}"],
                         name=f"{name}_conv2"),
    ]
    out = helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, [1, 4, 8, 8])
    return helper.make_graph(nodes, f"{name}_branch", [], [out])


#   x, use_a -> If(use_a, then: branch a, else: branch b) -> y
def if_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    cond = helper.make_tensor_value_info("use_a", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    node = helper.make_node("If", ["use_a"], ["y"], name="choose",
                            then_branch=_branch("a", 1), else_branch=_branch("b", 2))
    graph = helper.make_graph([node], "if_model", [x, cond], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_weights_in_constants_inside_if_branches_are_quantized(tmp_path: Path) -> None:
    onnx.save(if_model(), tmp_path / "if.onnx")
    x = RNG.standard_normal((64, 3, 8, 8)).astype(np.float32)
    # Half the samples take each branch, so calibration sees both.
    cond = np.arange(64) % 2 == 0
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "cond.npy", cond)
    spec = {
        "model": {"path": "if.onnx"},
        "data": {"evaluation": {"kind": "arrays", "inputs": ["x.npy", "cond.npy"]},
                 "batch_size": 1},
        "metric": {"name": "cosine"},
        "quantization": {"calibration": {"samples": 64, "batch_size": 1}},
        "benchmark": {"iterations": 5, "repeats": 1, "warmup": 1},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"

    assert main(["compile", str(tmp_path / "spec.yaml"), "-o", str(out), "-q"]) == 0

    report = json.loads((out / "report.json").read_text())
    assert report["int8"]["accuracy"] > 0.99  # cosine agreement with FP32
    quantized = onnx.load(out / "model.int8.onnx")
    if_node = next(n for n in quantized.graph.node if n.op_type == "If")
    branches = {a.name: a.g for a in if_node.attribute}
    for branch in branches.values():
        ops = [n.op_type for n in branch.node]
        # Both convolutions read INT8 weights (no Constant left) and quantized activations.
        assert ops.count("Conv") == 2 and "Constant" not in ops
        weights = [i for i in branch.initializer
                   if i.data_type == TensorProto.INT8 and len(i.dims) == 4]
        assert len(weights) == 2
        # x, the ReLU and the branch's output are quantized inside the branch, where
        # onnxruntime can fuse them with the convolutions.
        assert ops.count("QuantizeLinear") == 3
    assert [n.op_type for n in quantized.graph.node] == ["If"]

    # onnxruntime turns the convolutions inside both branches into integer kernels.
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(out / "model.int8.onnx"), so,
                                   providers=["CPUExecutionProvider"])
    optimized = onnx.load(so.optimized_model_filepath)
    inner = [n.op_type for node in optimized.graph.node if node.op_type == "If"
             for attr in node.attribute for n in attr.g.node]
    assert inner.count("QLinearConv") == 4
    reference = ort.InferenceSession(str(out / "model.fp32.onnx"),
                                     providers=["CPUExecutionProvider"])
    for flag in (True, False):
        feeds = {"x": x[:1], "use_a": np.array(flag)}
        got, want = session.run(None, feeds)[0], reference.run(None, feeds)[0]
        assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_branch_never_taken_in_calibration_stays_float(tmp_path: Path) -> None:
    onnx.save(if_model(), tmp_path / "if.onnx")
    np.save(tmp_path / "x.npy", RNG.standard_normal((16, 3, 8, 8)).astype(np.float32))
    np.save(tmp_path / "cond.npy", np.ones(16, dtype=bool))  # only branch a runs
    spec = {
        "model": {"path": "if.onnx"},
        "data": {"evaluation": {"kind": "arrays", "inputs": ["x.npy", "cond.npy"]},
                 "batch_size": 1},
        "metric": {"name": "cosine"},
        "benchmark": {"enabled": False},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert main(["compile", str(tmp_path / "spec.yaml"), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    reasons = {(op["op_type"], op["reason"]) for op in report["float_ops"]}
    assert ("Conv", "its input never appeared in the calibration data") in reasons
