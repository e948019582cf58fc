"""ONNX -> IR -> ONNX must be lossless: same graph, same bits, same outputs in onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimgraph import ir as sir

SEED = 0


# ---------------------------------------------------------------------------------------------
# Structural comparison of two protos


def _tensor_key(tensor: onnx.TensorProto) -> tuple[int, tuple[int, ...], bytes]:
    """A tensor's type, dims and exact bytes, whichever field (raw or typed) holds the data."""
    return tensor.data_type, tuple(tensor.dims), numpy_helper.to_array(tensor).tobytes()


def _value_info_key(info: onnx.ValueInfoProto) -> tuple[str, bytes]:
    return info.name, info.type.SerializeToString(deterministic=True)


def _assert_same_attribute(a: onnx.AttributeProto, b: onnx.AttributeProto, where: str) -> None:
    assert (a.name, a.type) == (b.name, b.type), where
    if a.type == onnx.AttributeProto.GRAPH:
        _assert_same_graph(a.g, b.g, f"{where}.{a.name}")
    elif a.type == onnx.AttributeProto.GRAPHS:
        assert len(a.graphs) == len(b.graphs), where
        for i, (ga, gb) in enumerate(zip(a.graphs, b.graphs, strict=True)):
            _assert_same_graph(ga, gb, f"{where}.{a.name}[{i}]")
    elif a.type == onnx.AttributeProto.TENSOR:
        assert _tensor_key(a.t) == _tensor_key(b.t), f"{where}.{a.name}"
    else:
        got, expected = helper.get_attribute_value(b), helper.get_attribute_value(a)
        assert got == expected, f"{where}.{a.name}"


def _assert_same_node(a: onnx.NodeProto, b: onnx.NodeProto, where: str) -> None:
    where = f"{where}/{a.name or a.op_type}"
    assert (a.op_type, a.domain or "", a.name) == (b.op_type, b.domain or "", b.name), where
    assert list(a.input) == list(b.input), where
    assert list(a.output) == list(b.output), where
    assert [x.name for x in a.attribute] == [x.name for x in b.attribute], where
    for attr_a, attr_b in zip(a.attribute, b.attribute, strict=True):
        _assert_same_attribute(attr_a, attr_b, where)


def _assert_same_graph(a: onnx.GraphProto, b: onnx.GraphProto, where: str = "graph") -> None:
    assert a.name == b.name, where
    assert a.doc_string == b.doc_string, where
    assert [_value_info_key(v) for v in a.input] == [_value_info_key(v) for v in b.input]
    assert [_value_info_key(v) for v in a.output] == [_value_info_key(v) for v in b.output]
    assert len(a.node) == len(b.node), where
    for node_a, node_b in zip(a.node, b.node, strict=True):
        _assert_same_node(node_a, node_b, where)

    inits_a = {t.name: _tensor_key(t) for t in a.initializer}
    inits_b = {t.name: _tensor_key(t) for t in b.initializer}
    assert inits_a.keys() == inits_b.keys(), where
    for name, key in inits_a.items():
        assert inits_b[name] == key, f"{where}: initializer {name!r} changed"

    # Every value_info entry survives unchanged. onnx-ir also writes the type of each
    # initializer that is not a graph input into value_info: redundant, but it must agree
    # with the tensor.
    infos_a = dict(_value_info_key(v) for v in a.value_info)
    infos_b = dict(_value_info_key(v) for v in b.value_info)
    for name, type_bytes in infos_a.items():
        assert infos_b.get(name) == type_bytes, f"{where}: value_info {name!r} changed"
    tensors_b = {t.name: t for t in b.initializer}
    for info in b.value_info:
        if info.name in infos_a:
            continue
        assert info.name in tensors_b, f"{where}: value_info {info.name!r} appeared"
        tensor_type = info.type.tensor_type
        assert tensor_type.elem_type == tensors_b[info.name].data_type
        assert [d.dim_value for d in tensor_type.shape.dim] == list(tensors_b[info.name].dims)


def assert_same_model(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    """``b`` says everything ``a`` says: graph, opsets, metadata, model-level fields."""
    for field in (
        "ir_version",
        "producer_name",
        "producer_version",
        "domain",
        "model_version",
        "doc_string",
    ):
        assert getattr(a, field) == getattr(b, field), field
    opsets_a = {o.domain or "": o.version for o in a.opset_import}
    opsets_b = {o.domain or "": o.version for o in b.opset_import}
    assert opsets_a == opsets_b
    assert {p.key: p.value for p in a.metadata_props} == {p.key: p.value for p in b.metadata_props}
    _assert_same_graph(a.graph, b.graph)


# ---------------------------------------------------------------------------------------------
# Running in onnxruntime


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one thread: the same arithmetic order in both runs
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _random_feeds(session: ort.InferenceSession, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in arg.shape]
        feeds[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def assert_same_outputs(
    original: Path, copy: Path, feeds: dict[str, np.ndarray] | None = None
) -> list[np.ndarray]:
    first, second = _session(original), _session(copy)
    feeds = feeds if feeds is not None else _random_feeds(first)
    expected, got = first.run(None, feeds), second.run(None, feeds)
    assert len(got) == len(expected)
    for e, g in zip(expected, got, strict=True):
        assert (e.dtype, e.shape) == (g.dtype, g.shape)
        assert e.tobytes() == g.tobytes()  # bit-identical, not merely close
    return got


def _roundtrip(source: Path, dest: Path, **save_options: object) -> onnx.ModelProto:
    sir.save(sir.load(source), dest, **save_options)
    return onnx.load(dest)


def _leftovers(folder: Path, *expected: str) -> set[str]:
    return {p.name for p in folder.iterdir()} - set(expected)


# ---------------------------------------------------------------------------------------------
# Real models


def test_mnist_round_trip_is_lossless(data_dir: Path, tmp_path: Path) -> None:
    source = data_dir / "models" / "mnist-8.onnx"
    copy = _roundtrip(source, tmp_path / "mnist.onnx")

    assert_same_model(onnx.load(source), copy)
    assert_same_outputs(source, tmp_path / "mnist.onnx")
    assert _leftovers(tmp_path, "mnist.onnx") == set()


@pytest.fixture(scope="module")
def resnet20_onnx(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from slimgraph.zoo.cifar_resnet import resnet20

    model = resnet20(weights=data_dir / "models" / "cifar10_resnet" / "resnet20-12fca82f.th")
    path = tmp_path_factory.mktemp("resnet20") / "resnet20.onnx"
    torch.manual_seed(SEED)
    with warnings.catch_warnings():
        # The legacy (TorchScript) exporter is deprecated but much faster than dynamo.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 32, 32),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )
    return path


def test_resnet20_round_trip_is_lossless(resnet20_onnx: Path, tmp_path: Path) -> None:
    copy = _roundtrip(resnet20_onnx, tmp_path / "resnet20.onnx")

    assert_same_model(onnx.load(resnet20_onnx), copy)
    (logits,) = assert_same_outputs(resnet20_onnx, tmp_path / "resnet20.onnx")
    assert logits.shape == (2, 10)


def test_metadata_and_doc_strings_survive(data_dir: Path, tmp_path: Path) -> None:
    proto = onnx.load(data_dir / "models" / "mnist-8.onnx")
    proto.doc_string = "digits, 28x28 grey"
    proto.graph.doc_string = "the CNTK export"
    helper.set_model_props(proto, {"author": "slimgraph tests", "license": "MIT"})
    source = tmp_path / "annotated.onnx"
    onnx.save(proto, source)

    copy = _roundtrip(source, tmp_path / "copy.onnx")

    assert copy.doc_string == "digits, 28x28 grey"
    assert copy.graph.doc_string == "the CNTK export"
    assert {p.key: p.value for p in copy.metadata_props} == {
        "author": "slimgraph tests",
        "license": "MIT",
    }
    assert_same_model(proto, copy)


# ---------------------------------------------------------------------------------------------
# Control flow: subgraphs with their own nodes and initializers


def _float_info(name: str, shape: list[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


#   cond, x -> If ─ then: Add(x, c_then) -> Relu -> y     (c_then lives in the branch)
#                └ else: Mul(x, c_else) -> y              (c_else lives in the branch)
def if_model() -> onnx.ModelProto:
    c_then = numpy_helper.from_array(np.array([1.0, -2.0, 3.0], np.float32), "c_then")
    c_else = numpy_helper.from_array(np.array([0.5, 0.25, -1.0], np.float32), "c_else")
    then_branch = helper.make_graph(
        [
            helper.make_node("Add", ["x", "c_then"], ["then_sum"], name="then_add"),
            helper.make_node("Relu", ["then_sum"], ["then_y"], name="then_relu"),
        ],
        "then",
        [],
        [_float_info("then_y", [3])],
        [c_then],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Mul", ["x", "c_else"], ["else_y"], name="else_mul")],
        "else",
        [],
        [_float_info("else_y", [3])],
        [c_else],
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                name="choose",
                then_branch=then_branch,
                else_branch=else_branch,
            )
        ],
        "if_model",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), _float_info("x", [3])],
        [_float_info("y", [3])],
    )
    return _model(graph)


#   n, keep, v -> Loop ─ body(i, keep_in, v_in): v_in + step -> v_out, Identity(keep_in)
#                      ├ v_final
#                      └ every v_out stacked
def loop_model() -> onnx.ModelProto:
    step = numpy_helper.from_array(np.array([0.5, -1.5], np.float32), "step")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["keep_in"], ["keep_out"], name="body_keep"),
            helper.make_node("Add", ["v_in", "step"], ["v_out"], name="body_add"),
            helper.make_node("Identity", ["v_out"], ["v_scan"], name="body_copy"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("keep_in", TensorProto.BOOL, []),
            _float_info("v_in", [2]),
        ],
        [
            helper.make_tensor_value_info("keep_out", TensorProto.BOOL, []),
            _float_info("v_out", [2]),
            _float_info("v_scan", [2]),
        ],
        [step],
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "Loop", ["n", "keep", "v"], ["v_final", "v_all"], name="loop", body=body
            )
        ],
        "loop_model",
        [
            helper.make_tensor_value_info("n", TensorProto.INT64, []),
            helper.make_tensor_value_info("keep", TensorProto.BOOL, []),
            _float_info("v", [2]),
        ],
        [_float_info("v_final", [2]), _float_info("v_all", ["steps", 2])],
    )
    return _model(graph)


#   s0, xs -> Scan ─ body(s, x_t): s + k * x_t -> s_next, Identity -> row
#                  ├ s_final
#                  └ rows stacked
def scan_model() -> onnx.ModelProto:
    k = numpy_helper.from_array(np.array([2.0, -1.0, 0.5], np.float32), "k")
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["x_t", "k"], ["scaled"], name="body_scale"),
            helper.make_node("Add", ["s", "scaled"], ["s_next"], name="body_accumulate"),
            helper.make_node("Identity", ["s_next"], ["row"], name="body_row"),
        ],
        "body",
        [_float_info("s", [3]), _float_info("x_t", [3])],
        [_float_info("s_next", [3]), _float_info("row", [3])],
        [k],
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "Scan", ["s0", "xs"], ["s_final", "rows"], name="scan", body=body, num_scan_inputs=1
            )
        ],
        "scan_model",
        [_float_info("s0", [3]), _float_info("xs", [4, 3])],
        [_float_info("s_final", [3]), _float_info("rows", [4, 3])],
    )
    return _model(graph)


def _control_flow_feeds(name: str) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(SEED)
    if name == "if":
        x = rng.standard_normal(3).astype(np.float32)
        return [{"cond": np.array(flag), "x": x} for flag in (True, False)]
    if name == "loop":
        v = rng.standard_normal(2).astype(np.float32)
        return [{"n": np.array(3, np.int64), "keep": np.array(True), "v": v}]
    return [
        {
            "s0": rng.standard_normal(3).astype(np.float32),
            "xs": rng.standard_normal((4, 3)).astype(np.float32),
        }
    ]


@pytest.mark.parametrize(
    ("name", "factory"), [("if", if_model), ("loop", loop_model), ("scan", scan_model)]
)
def test_control_flow_round_trip(name: str, factory, tmp_path: Path) -> None:
    proto = factory()
    source = tmp_path / "source.onnx"
    onnx.save(proto, source)

    copy = _roundtrip(source, tmp_path / "copy.onnx")

    assert_same_model(proto, copy)
    subgraphs = [a.g for a in copy.graph.node[0].attribute if a.type == onnx.AttributeProto.GRAPH]
    assert subgraphs and all(len(g.initializer) == 1 and len(g.node) >= 1 for g in subgraphs)
    for feeds in _control_flow_feeds(name):
        assert_same_outputs(source, tmp_path / "copy.onnx", feeds)


def test_if_branches_compute_what_they_say(tmp_path: Path) -> None:
    source = tmp_path / "if.onnx"
    onnx.save(if_model(), source)
    copy = tmp_path / "copy.onnx"
    sir.save(sir.load(source), copy)
    x = np.array([-3.0, 1.0, 2.0], np.float32)

    session = _session(copy)
    (then_y,) = session.run(None, {"cond": np.array(True), "x": x})
    (else_y,) = session.run(None, {"cond": np.array(False), "x": x})

    np.testing.assert_array_equal(then_y, np.maximum(x + np.array([1.0, -2.0, 3.0], np.float32), 0))
    np.testing.assert_array_equal(else_y, x * np.array([0.5, 0.25, -1.0], np.float32))


# ---------------------------------------------------------------------------------------------
# External data and atomic writes


#   x[1, 64] -> MatMul(w[64, 64]) -> Add(b[64]) -> y      (w: 16 KiB, b: 256 B)
def matmul_model() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
            helper.make_node("Add", ["xw", "b"], ["y"], name="bias"),
        ],
        "matmul_model",
        [_float_info("x", ["batch", 64])],
        [_float_info("y", ["batch", 64])],
        [w, b],
    )
    return _model(graph)


def test_external_data_goes_beside_the_model(tmp_path: Path) -> None:
    proto = matmul_model()
    source = tmp_path / "source" / "model.onnx"
    source.parent.mkdir()
    onnx.save(proto, source)
    out = tmp_path / "out"

    written = sir.save(sir.load(source), out / "model.onnx", external_data=True)

    assert written == out / "model.onnx"
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.onnx.data"}
    stored = onnx.load(written, load_external_data=False)
    w = next(t for t in stored.graph.initializer if t.name == "w")
    assert w.data_location == TensorProto.EXTERNAL
    assert {e.key: e.value for e in w.external_data}["location"] == "model.onnx.data"
    assert (out / "model.onnx.data").stat().st_size >= 64 * 64 * 4
    assert written.stat().st_size < 64 * 64 * 4  # the weights are not in the proto

    assert_same_model(proto, onnx.load(written))
    assert_same_outputs(source, written)


def test_external_data_model_reloads_and_saves_inline(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    onnx.save(matmul_model(), source)
    external = sir.save(sir.load(source), tmp_path / "ext" / "model.onnx", external_data=True)

    # Lazily mapped external weights must still be readable when written back inline.
    inline = sir.save(sir.load(external), tmp_path / "inline" / "model.onnx", external_data=False)

    assert {p.name for p in inline.parent.iterdir()} == {"model.onnx"}
    assert_same_model(onnx.load(source), onnx.load(inline))
    assert_same_outputs(source, inline)


def test_inline_by_default_below_the_threshold(tmp_path: Path) -> None:
    # Near miss: a small model with external_data left to the default stays one file.
    source = tmp_path / "model.onnx"
    onnx.save(matmul_model(), source)
    out = tmp_path / "out"

    sir.save(sir.load(source), out / "model.onnx")

    assert {p.name for p in out.iterdir()} == {"model.onnx"}
    stored = onnx.load(out / "model.onnx", load_external_data=False)
    assert all(t.data_location != TensorProto.EXTERNAL for t in stored.graph.initializer)


def test_save_over_existing_file_replaces_it_atomically(data_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"not a model, about to be replaced")
    mnist = sir.load(data_dir / "models" / "mnist-8.onnx")

    sir.save(mnist, dest)
    first = dest.read_bytes()
    sir.save(sir.load(dest), dest)  # over itself, from a model read from that very file

    assert _leftovers(tmp_path, "model.onnx") == set()
    assert dest.read_bytes() == first
    assert_same_model(onnx.load(data_dir / "models" / "mnist-8.onnx"), onnx.load(dest))


def test_save_over_existing_external_data(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    onnx.save(matmul_model(), source)
    out = tmp_path / "out" / "model.onnx"

    sir.save(sir.load(source), out, external_data=True)
    sir.save(sir.load(out), out, external_data=True)  # reads the .data it replaces

    assert {p.name for p in out.parent.iterdir()} == {"model.onnx", "model.onnx.data"}
    assert_same_outputs(source, out)
