"""Approaches (static, dynamic, weight-only), formats (QDQ, QOperator), per-op overrides and
recipes, end to end through ``slimgraph compile``."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import yaml
from onnx import numpy_helper

from slimgraph.cli import main

REPO = Path(__file__).resolve().parent.parent


def _compile(tmp_path: Path, spec: dict) -> tuple[dict, onnx.ModelProto]:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert main(["compile", str(path), "-o", str(out), "-q"]) == 0
    return (json.loads((out / "report.json").read_text()),
            onnx.load(out / "model.int8.onnx"))


def _mnist(**quantization: object) -> dict:
    spec = yaml.safe_load((REPO / "specs" / "mnist.yaml").read_text())
    spec["data"]["evaluation"]["limit"] = 200
    spec["quantization"] = {"calibration": {"samples": 50}, **quantization}
    spec["benchmark"] = {"enabled": False}
    spec["tuning"] = {"max_trials": 1}  # no speed refinement: these tests check what is built
    return spec


def _encoder(**quantization: object) -> dict:
    data = {"kind": "custom", "loader": "tiny_models:embeddings"}
    return {
        "model": {"factory": "tiny_models:encoder", "input_shape": [1, 16, 32]},
        "data": {"evaluation": {**data, "options": {"count": 32, "seed": 1}},
                 "calibration": {**data, "options": {"count": 32, "seed": 0}},
                 "batch_size": 8},
        "metric": {"name": "cosine"},
        "quantization": {"calibration": {"samples": 32, "batch_size": 8}, **quantization},
        "benchmark": {"enabled": False},
        # One trial: on a model this small the tuner would otherwise move matrix products
        # back to FP32 because float kernels beat integer ones at this size.
        "tuning": {"max_trials": 1},
    }


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_transformer_gets_dynamic_quantization_by_default(tmp_path: Path) -> None:
    report, model = _compile(tmp_path, _encoder())
    assert report["quantization"]["approach"] == "dynamic"
    ops = _ops(model)
    assert ops.count("MatMulInteger") >= 4 and "DynamicQuantizeLinear" in ops
    assert "QuantizeLinear" not in ops  # nothing calibrated
    assert report["int8"]["accuracy"] > 0.99  # cosine agreement with FP32


def test_static_transformer_with_smooth_quant(tmp_path: Path) -> None:
    spec = _encoder(approach="static",
                    recipes={"smooth_quant": {"enabled": True, "alpha": "auto"}})
    report, model = _compile(tmp_path, spec)
    assert report["quantization"]["approach"] == "static"
    assert report["quantization"]["recipes"]["smooth_quant"].split()[0] != "0"
    assert "QuantizeLinear" in _ops(model)
    assert report["int8"]["accuracy"] > 0.98


def test_weight_only_keeps_activations_float(tmp_path: Path) -> None:
    report, model = _compile(tmp_path, _mnist(approach="weight_only"))
    ops = _ops(model)
    assert "QuantizeLinear" not in ops
    weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len([w for w in weights if len(w.dims) >= 2]) == 3  # two convolutions and the Gemm
    assert report["int8"]["size_bytes"] < report["fp32"]["size_bytes"] / 2


def test_qoperator_format_uses_integer_operators(tmp_path: Path) -> None:
    report, model = _compile(tmp_path, _mnist(format="qoperator"))
    ops = _ops(model)
    assert ops.count("QLinearConv") == 2 and "Conv" not in ops
    assert report["quantization"]["format"] == "qoperator"
    assert abs(report["accuracy_ratio"]) < 0.01


def test_scheme_override_by_op_type(tmp_path: Path) -> None:
    spec = _mnist(overrides={"op_types": {"Conv": {"weights": {"per_channel": False}}}})
    _, model = _compile(tmp_path, spec)
    axes = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0].startswith("Parameter"):
            axes[node.output[0]] = [a.i for a in node.attribute if a.name == "axis"]
    scales = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv_weights = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv in conv_weights:
        dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
        assert scales[dq.input[1]].size == 1  # one scale for the whole weight
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    dq = next(n for n in model.graph.node if n.output[0] == gemm.input[1])
    assert scales[dq.input[1]].size == 10  # per output channel, the default


def test_bias_correction_recipe_is_reported(tmp_path: Path) -> None:
    report, _ = _compile(tmp_path, _mnist(recipes={"bias_correction": True}))
    assert report["quantization"]["recipes"]["bias_correction"] == "3 layer(s)"
