"""Peer quantizers on a hand-built model: what each writes, and failures that come back as data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType

from benchmarks import peers
from slimgraph.target import named

CHANNELS = 8


def tiny_cnn(path: Path) -> Path:
    """A Conv, a Relu and a classifier, with a dynamic batch axis.

    x [N,3,16,16] -> Conv 3x3 pad 1 (8) -> Relu -> Flatten -> Gemm (2048 -> 10) -> y [N,10]
    """
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.normal(0, 0.2, (CHANNELS, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, CHANNELS).astype(np.float32), "b"),
        numpy_helper.from_array(
            rng.normal(0, 0.05, (10, CHANNELS * 256)).astype(np.float32), "fc_w"
        ),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def calibration(count: int = 16) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(count)]


def broken_calibration() -> Iterator[dict[str, np.ndarray]]:
    yield calibration(1)[0]
    raise RuntimeError("calibration source broke at sample 1\nsecond line")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cnn(tmp_path_factory.mktemp("peers") / "fp32.onnx")


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _zero_point_types(model: onnx.ModelProto) -> set[np.dtype]:
    arrays = _initializers(model)
    return {arrays[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear"}


def _conv_weight(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """The Conv's quantized weight, read through its DequantizeLinear, and the weight's scale."""
    arrays = _initializers(model)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
    assert dq.op_type == "DequantizeLinear"
    return arrays[dq.input[0]], arrays[dq.input[1]]


def _max_relative_error(fp32: Path, int8: Path) -> float:
    x = calibration(4)[3]
    expected = ort.InferenceSession(str(fp32)).run(None, x)[0]
    found = ort.InferenceSession(str(int8)).run(None, x)[0]
    return float(np.abs(found - expected).max() / np.abs(expected).max())


def test_static_defaults_are_int8_per_tensor(fp32: Path, tmp_path: Path) -> None:
    out = peers.ort_static_defaults(fp32, calibration(), tmp_path / "defaults.onnx")

    assert out == tmp_path / "defaults.onnx"
    model = onnx.load(out)
    assert _zero_point_types(model) == {np.dtype(np.int8)}
    weight, scale = _conv_weight(model)
    assert weight.dtype == np.int8 and scale.size == 1
    assert np.abs(weight).max() == 127
    assert _max_relative_error(fp32, out) < 0.05


def test_static_best_on_avx2_is_uint8_per_channel_with_7_bit_weights(
    fp32: Path, tmp_path: Path
) -> None:
    out = peers.ort_static_best(fp32, calibration(), tmp_path / "best.onnx", named("x86-avx2"))

    assert isinstance(out, Path)
    model = onnx.load(out)
    assert _zero_point_types(model) == {np.dtype(np.uint8)}
    weight, scale = _conv_weight(model)
    assert weight.dtype == np.int8 and scale.shape == (CHANNELS,)
    assert np.abs(weight).max() == 64
    assert _max_relative_error(fp32, out) < 0.05


def test_static_best_on_vnni_keeps_8_bit_weights(fp32: Path, tmp_path: Path) -> None:
    out = peers.ort_static_best(fp32, calibration(), tmp_path / "vnni.onnx", named("x86-vnni"))

    assert isinstance(out, Path)
    weight, _ = _conv_weight(onnx.load(out))
    assert np.abs(weight).max() == 127


def test_cpu_settings_follow_the_int8_class() -> None:
    avx2, vnni, arm = (
        peers.ort_cpu_settings(named(n)) for n in ("x86-avx2", "x86-vnni", "arm64-dotprod")
    )

    assert (avx2.activation_type, avx2.reduce_range) == (QuantType.QUInt8, True)
    assert (vnni.activation_type, vnni.reduce_range) == (QuantType.QUInt8, False)
    assert (arm.activation_type, arm.reduce_range) == (QuantType.QInt8, False)


def test_dynamic_quantizes_weights_only(fp32: Path, tmp_path: Path) -> None:
    out = peers.ort_dynamic(fp32, tmp_path / "dynamic.onnx", named("x86-avx2"))

    assert isinstance(out, Path)
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops
    assert "QuantizeLinear" not in ops
    assert _max_relative_error(fp32, out) < 0.05


def test_nncf_writes_a_qdq_model(fp32: Path, tmp_path: Path) -> None:
    out = peers.nncf_quantize(fp32, calibration(), tmp_path / "nncf.onnx")

    assert isinstance(out, Path)
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert "QuantizeLinear" in ops and "Conv" in ops
    assert _max_relative_error(fp32, out) < 0.05


@pytest.mark.parametrize(
    "peer",
    [
        lambda fp32, out: peers.ort_static_defaults(fp32, broken_calibration(), out),
        lambda fp32, out: peers.ort_static_best(fp32, broken_calibration(), out),
        lambda fp32, out: peers.nncf_quantize(fp32, broken_calibration(), out),
    ],
    ids=["ort-static-defaults", "ort-static-best", "nncf"],
)
def test_broken_calibration_comes_back_as_a_failure(peer, fp32: Path, tmp_path: Path) -> None:
    failure = peer(fp32, tmp_path / "int8.onnx")

    assert isinstance(failure, peers.PeerFailure)
    assert failure.error == "RuntimeError"
    assert failure.message == "calibration source broke at sample 1"
    assert "broken_calibration" in failure.traceback


def test_unreadable_model_comes_back_as_a_failure(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")

    failure = peers.ort_dynamic(junk, tmp_path / "int8.onnx")

    assert isinstance(failure, peers.PeerFailure)
    assert failure.peer == "ort-dynamic"
    assert failure.message and "\n" not in failure.message
    assert failure.traceback.startswith("Traceback")
