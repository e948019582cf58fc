"""Clean-up passes on hand-built graphs and on mnist-8: what they rewrite, that the numbers
stay those of onnxruntime on the original, and the near misses they must leave alone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxscript.optimizer._constant_folding import FoldConstantsPass

from slimgraph import ir as sir
from slimgraph.passes.cleanup import cleanup_passes
from slimgraph.passes.fold_batchnorm import FoldBatchNorm
from slimgraph.passes.fold_conv_add import FoldConvAdd
from slimgraph.passes.residual_sum import ResidualAddAsSum
from slimgraph.passes.simplify import Simplify
from slimgraph.passes.upgrade_opset import UpgradeOpset

FLOAT = ir.DataType.FLOAT
ATOL = 1e-5


# ---------------------------------------------------------------------------------------------
# Helpers: build, run, compare


class _Builder:
    """Values and initializers for one small graph, with a fixed random stream."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.initializers: list[ir.Value] = []

    def input(self, name: str, shape: list[int]) -> ir.Value:
        return ir.Value(name=name, type=ir.TensorType(FLOAT), shape=ir.Shape(shape))

    def const(
        self, name: str, shape: tuple[int, ...], scale: float = 0.5, positive: bool = False
    ) -> ir.Value:
        array = self.rng.standard_normal(shape).astype(np.float32) * scale
        if positive:
            array = np.abs(array) + 0.5
        value = ir.Value(
            name=name,
            type=ir.TensorType(FLOAT),
            shape=ir.Shape(list(shape)),
            const_value=ir.tensor(array, name=name),
        )
        self.initializers.append(value)
        return value

    def model(
        self, nodes: list[ir.Node], inputs: list[ir.Value], outputs: list[ir.Value]
    ) -> ir.Model:
        for node in nodes:
            for out in node.outputs:
                out.name = out.name or f"{node.name}_out"
        graph = ir.Graph(
            inputs,
            outputs,
            nodes=nodes,
            initializers=self.initializers,
            opset_imports={"": 17},
            name="test",
        )
        model = ir.Model(graph, ir_version=8)
        sir.verify(model)
        return model


def _session(model: ir.Model | onnx.ModelProto) -> ort.InferenceSession:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _feeds(session: ort.InferenceSession, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        arg.name: rng.standard_normal([d if isinstance(d, int) else 2 for d in arg.shape]).astype(
            np.float32
        )
        for arg in session.get_inputs()
    }


def _outputs(
    model: ir.Model | onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    session = _session(model)
    feeds = feeds if feeds is not None else _feeds(session)
    return feeds, session.run(None, feeds)


def _run_pass(pass_: ir.passes.PassBase, model: ir.Model) -> sir.PassRecord:
    (record,) = sir.PassManager([pass_]).run(model)
    return record


def _assert_same_numbers(before: onnx.ModelProto, after: ir.Model, atol: float = ATOL) -> None:
    feeds, expected = _outputs(before)
    _, got = _outputs(after, feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=0, atol=atol)


def _ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


# ---------------------------------------------------------------------------------------------
# FoldBatchNorm


#   x[1,3,8,8] -> Conv(w[4,3,3,3], b[4]) -> BatchNormalization(gamma, beta, mean, var) -> y
def conv_bn(*, bias: bool = True) -> ir.Model:
    b = _Builder()
    x = b.input("x", [1, 3, 8, 8])
    conv_inputs = [x, b.const("w", (4, 3, 3, 3))]
    if bias:
        conv_inputs.append(b.const("b", (4,)))
    conv = ir.node("Conv", conv_inputs, attributes={"pads": [1, 1, 1, 1]}, name="conv")
    bn = ir.node(
        "BatchNormalization",
        [
            conv.outputs[0],
            b.const("gamma", (4,), positive=True),
            b.const("beta", (4,)),
            b.const("mean", (4,)),
            b.const("var", (4,), positive=True),
        ],
        attributes={"epsilon": 1e-3},
        name="bn",
    )
    bn.outputs[0].name = "y"
    return b.model([conv, bn], [x], [bn.outputs[0]])


@pytest.mark.parametrize("bias", [True, False])
def test_fold_batchnorm_into_conv(bias: bool) -> None:
    model = conv_bn(bias=bias)
    original = ir.serde.serialize_model(model)

    record = _run_pass(FoldBatchNorm(), model)

    assert record.modified and record.delta == {"BatchNormalization": -1}
    assert _ops(model) == ["Conv"]
    conv = model.graph.node(0)
    assert len(conv.inputs) == 3 and all(v.const_value is not None for v in conv.inputs[1:])
    assert [o.name for o in model.graph.outputs] == ["y"]
    _assert_same_numbers(original, model)


#   x -> Conv(w, b) -> BatchNormalization -> y
#   x -> Conv(w)    -> z                      (w shared by both Convs)
def conv_bn_shared_weight() -> ir.Model:
    b = _Builder()
    x = b.input("x", [1, 3, 8, 8])
    w = b.const("w", (4, 3, 3, 3))
    conv = ir.node("Conv", [x, w, b.const("b", (4,))], name="conv")
    other = ir.node("Conv", [x, w], name="other_conv")
    bn = ir.node(
        "BatchNormalization",
        [
            conv.outputs[0],
            b.const("gamma", (4,), positive=True),
            b.const("beta", (4,)),
            b.const("mean", (4,)),
            b.const("var", (4,), positive=True),
        ],
        name="bn",
    )
    return b.model([conv, other, bn], [x], [bn.outputs[0], other.outputs[0]])


#   x, w (graph input) -> Conv -> BatchNormalization -> y
def conv_bn_runtime_weight() -> ir.Model:
    b = _Builder()
    x, w = b.input("x", [1, 3, 8, 8]), b.input("w", [4, 3, 3, 3])
    conv = ir.node("Conv", [x, w], name="conv")
    bn = ir.node(
        "BatchNormalization",
        [
            conv.outputs[0],
            b.const("gamma", (4,), positive=True),
            b.const("beta", (4,)),
            b.const("mean", (4,)),
            b.const("var", (4,), positive=True),
        ],
        name="bn",
    )
    return b.model([conv, bn], [x, w], [bn.outputs[0]])


@pytest.mark.parametrize("factory", [conv_bn_shared_weight, conv_bn_runtime_weight])
def test_fold_batchnorm_leaves_near_misses_alone(factory) -> None:
    model = factory()
    original = ir.serde.serialize_model(model)
    ops = _ops(model)

    record = _run_pass(FoldBatchNorm(), model)

    assert not record.modified and record.delta == {}
    assert _ops(model) == ops
    _assert_same_numbers(original, model, atol=0.0)


# ---------------------------------------------------------------------------------------------
# FoldConvAdd


#   x[1,3,6,6] -> Conv(w[4,3,3,3][, b[4]]) -> Add(c) -> y        c: [1,4,1,1] (or other shape)
def conv_add(
    *, bias: bool, addend_shape: tuple[int, ...] = (1, 4, 1, 1), addend_first: bool = False
) -> ir.Model:
    b = _Builder(seed=2)
    x = b.input("x", [1, 3, 6, 6])
    conv_inputs = [x, b.const("w", (4, 3, 3, 3))]
    if bias:
        conv_inputs.append(b.const("b", (4,)))
    conv = ir.node("Conv", conv_inputs, attributes={"pads": [1, 1, 1, 1]}, name="conv")
    c = b.const("c", addend_shape)
    add = ir.node("Add", [c, conv.outputs[0]] if addend_first else [conv.outputs[0], c], name="add")
    add.outputs[0].name = "y"
    return b.model([conv, add], [x], [add.outputs[0]])


@pytest.mark.parametrize(
    ("bias", "addend_shape", "addend_first"),
    [
        (True, (1, 4, 1, 1), False),
        (False, (1, 4, 1, 1), False),
        (True, (4, 1, 1), True),
        (False, (1,), False),
    ],
)
def test_fold_conv_add_into_bias(
    bias: bool, addend_shape: tuple[int, ...], addend_first: bool
) -> None:
    model = conv_add(bias=bias, addend_shape=addend_shape, addend_first=addend_first)
    original = ir.serde.serialize_model(model)
    c = model.graph.initializers["c"].const_value.numpy().reshape(-1)
    old_bias = model.graph.initializers["b"].const_value.numpy() if bias else np.zeros(4)

    record = _run_pass(FoldConvAdd(), model)

    assert record.modified and record.delta == {"Add": -1}
    assert _ops(model) == ["Conv"]
    conv = model.graph.node(0)
    assert len(conv.inputs) == 3
    np.testing.assert_allclose(conv.inputs[2].const_value.numpy(), old_bias + c, rtol=1e-6)
    assert conv.inputs[2].name in model.graph.initializers
    assert [o.name for o in model.graph.outputs] == ["y"]
    assert model.graph.outputs[0] is conv.outputs[0]
    _assert_same_numbers(original, model)


#   x -> Conv(w, b) -> Add(c[1,4,6,6]) -> y                  (c varies over H and W too)
def test_fold_conv_add_leaves_spatial_addend_alone() -> None:
    model = conv_add(bias=True, addend_shape=(1, 4, 6, 6))
    original = ir.serde.serialize_model(model)

    record = _run_pass(FoldConvAdd(), model)

    assert not record.modified
    assert _ops(model) == ["Conv", "Add"]
    _assert_same_numbers(original, model, atol=0.0)


#   x -> Conv(w, b) -> t ─┬─> Add(c[1,4,1,1]) -> y
#                         └─> Relu -> z                        (t has two users)
def conv_add_two_users() -> ir.Model:
    b = _Builder(seed=3)
    x = b.input("x", [1, 3, 6, 6])
    conv = ir.node("Conv", [x, b.const("w", (4, 3, 3, 3)), b.const("b", (4,))], name="conv")
    add = ir.node("Add", [conv.outputs[0], b.const("c", (1, 4, 1, 1))], name="add")
    relu = ir.node("Relu", [conv.outputs[0]], name="relu")
    return b.model([conv, add, relu], [x], [add.outputs[0], relu.outputs[0]])


def test_fold_conv_add_leaves_shared_conv_output_alone() -> None:
    model = conv_add_two_users()
    original = ir.serde.serialize_model(model)

    record = _run_pass(FoldConvAdd(), model)

    assert not record.modified
    assert _ops(model) == ["Conv", "Add", "Relu"]
    _assert_same_numbers(original, model, atol=0.0)


#   x, b (graph input) -> Conv(w, b) -> Add(c[1,4,1,1]) -> y    (bias known only at run time)
def conv_add_runtime_bias() -> ir.Model:
    model = conv_add(bias=False)
    b = ir.Value(name="b", type=ir.TensorType(FLOAT), shape=ir.Shape([4]))
    model.graph.inputs.append(b)
    conv = model.graph.node(0)
    conv.resize_inputs(3)
    conv.replace_input_with(2, b)
    return model


def test_fold_conv_add_leaves_runtime_bias_alone() -> None:
    model = conv_add_runtime_bias()
    original = ir.serde.serialize_model(model)

    _run_pass(FoldConvAdd(), model)

    assert _ops(model) == ["Conv", "Add"]
    _assert_same_numbers(original, model, atol=0.0)


def test_fold_conv_add_with_runtime_bias_reports_no_change() -> None:
    (record,) = sir.PassManager([FoldConvAdd()]).run(conv_add_runtime_bias())

    assert not record.modified


#   x: FLOAT16 -> Conv(w: FLOAT16) -> Add(c: FLOAT16 [1,4,1,1]) -> y
def test_fold_conv_add_keeps_the_conv_dtype() -> None:
    b = _Builder(seed=6)
    half = ir.DataType.FLOAT16
    x = ir.Value(name="x", type=ir.TensorType(half), shape=ir.Shape([1, 3, 6, 6]))
    w, c = b.const("w", (4, 3, 3, 3)), b.const("c", (1, 4, 1, 1))
    for value in (w, c):
        value.const_value = ir.tensor(value.const_value.numpy().astype(np.float16), name=value.name)
        value.type = ir.TensorType(half)
    conv = ir.node("Conv", [x, w], name="conv")
    add = ir.node("Add", [conv.outputs[0], c], name="add")
    add.outputs[0].name = "y"
    add.outputs[0].type = ir.TensorType(half)
    model = b.model([conv, add], [x], [add.outputs[0]])

    record = _run_pass(FoldConvAdd(), model)

    assert record.modified
    assert model.graph.node(0).inputs[2].dtype == half
    sir.verify(model, deep=True)


# ---------------------------------------------------------------------------------------------
# UpgradeOpset, and the pieces of clean-up on mnist-8


@pytest.fixture
def mnist(data_dir: Path) -> Path:
    return data_dir / "models" / "mnist-8.onnx"


def test_upgrade_opset_8_to_13(mnist: Path) -> None:
    model = sir.load(mnist)
    assert model.opset_imports[""] == 8
    ops = _ops(model)

    record = _run_pass(UpgradeOpset(13), model)

    assert record.modified
    assert model.opset_imports[""] == 13
    assert _ops(model) == ops
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    feeds, expected = _outputs(onnx.load(mnist))
    _, got = _outputs(proto, feeds)
    np.testing.assert_array_equal(got[0], expected[0])


def test_upgrade_opset_leaves_newer_models_alone() -> None:
    model = conv_bn()
    before = ir.serde.serialize_model(model)

    record = _run_pass(UpgradeOpset(13), model)

    assert not record.modified
    assert model.opset_imports[""] == 17
    assert ir.serde.serialize_model(model) == before


def _fold_constants() -> FoldConstantsPass:
    return FoldConstantsPass(
        shape_inference=True, input_size_limit=1 << 20, output_size_limit=1 << 20
    )


def _weight_reshape(model: ir.Model) -> list[ir.Node]:
    """Reshapes whose data input is an initializer (mnist-8 reshapes its dense weight)."""
    return [n for n in model.graph if n.op_type == "Reshape" and n.inputs[0].is_initializer()]


def test_initializers_leave_inputs_then_weight_reshape_folds(mnist: Path) -> None:
    model = sir.load(mnist)
    assert len(_weight_reshape(model)) == 1
    n_inputs = len(model.graph.inputs)

    records = sir.PassManager([common.RemoveInitializersFromInputsPass(), _fold_constants()]).run(
        model
    )

    assert [r.modified for r in records] == [True, True]
    assert records[1].delta == {"Reshape": -1}
    assert [v.name for v in model.graph.inputs] == ["Input3"] and n_inputs == 9
    assert _weight_reshape(model) == []
    matmul = next(n for n in model.graph if n.op_type == "MatMul")
    assert matmul.inputs[1].const_value is not None
    assert matmul.inputs[1].const_value.shape == ir.Shape([256, 10])
    _assert_same_numbers(onnx.load(mnist), model)


def test_weights_that_are_inputs_do_not_fold(mnist: Path) -> None:
    # Near miss: while initializers are also graph inputs they may be fed at run time.
    model = sir.load(mnist)

    (record,) = sir.PassManager([_fold_constants()]).run(model)

    assert not record.modified
    assert len(_weight_reshape(model)) == 1


# ---------------------------------------------------------------------------------------------
# Simplify


#   x[rank] -> MatMul(w[8,5]) -> Add(b[5]) -> y           rank 2: becomes Gemm; rank 3: stays
def matmul_add(x_shape: list[int]) -> ir.Model:
    b = _Builder(seed=4)
    x = b.input("x", x_shape)
    matmul = ir.node("MatMul", [x, b.const("w", (8, 5))], name="matmul")
    matmul.outputs[0].type = ir.TensorType(FLOAT)
    matmul.outputs[0].shape = ir.Shape([*x_shape[:-1], 5])
    add = ir.node("Add", [matmul.outputs[0], b.const("b", (5,))], name="add")
    add.outputs[0].name = "y"
    return b.model([matmul, add], [x], [add.outputs[0]])


def test_simplify_rank2_matmul_add_becomes_gemm() -> None:
    model = matmul_add([3, 8])
    original = ir.serde.serialize_model(model)

    record = _run_pass(Simplify(), model)

    assert record.modified
    assert Counter(_ops(model)) == Counter({"Gemm": 1})
    assert [o.name for o in model.graph.outputs] == ["y"]
    _assert_same_numbers(original, model)


def test_simplify_leaves_rank3_matmul_add_alone() -> None:
    model = matmul_add([2, 3, 8])
    original = ir.serde.serialize_model(model)

    record = _run_pass(Simplify(), model)

    assert not record.modified
    assert _ops(model) == ["MatMul", "Add"]
    _assert_same_numbers(original, model, atol=0.0)


# ---------------------------------------------------------------------------------------------
# ResidualAddAsSum


#   x[1,4,8] -> MatMul(w) -> Add(bias) -> Add(x) -> LayerNormalization -> y
#                                           (also a graph output "r" when shared)
def residual_norm(*, shared: bool = False) -> ir.Model:
    b = _Builder()
    x = b.input("x", [1, 4, 8])
    matmul = ir.node("MatMul", [x, b.const("w", (8, 8))], name="matmul")
    bias = ir.node("Add", [matmul.outputs[0], b.const("bias", (8,))], name="bias")
    residual = ir.node("Add", [bias.outputs[0], x], name="residual")
    norm = ir.node("LayerNormalization", [residual.outputs[0], b.const("gamma", (8,)),
                                          b.const("beta", (8,))], name="norm")
    residual.outputs[0].name, norm.outputs[0].name = "r", "y"
    outputs = [norm.outputs[0], residual.outputs[0]] if shared else [norm.outputs[0]]
    return b.model([matmul, bias, residual, norm], [x], outputs)


def _fused_ops(model: ir.Model, tmp_path: Path) -> list[str]:
    """The op types onnxruntime's CPU provider runs after its own graph optimizations."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    # The fusion is one of the extended optimizations; the level above adds layout changes.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    proto = ir.serde.serialize_model(model)
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_residual_add_as_sum_keeps_onnxruntime_off_skip_layer_norm(tmp_path: Path) -> None:
    model = residual_norm()
    original = ir.serde.serialize_model(model)
    assert "SkipLayerNormalization" in _fused_ops(model, tmp_path)

    record = _run_pass(ResidualAddAsSum(), model)

    assert record.modified and record.delta == {"Add": -1, "Sum": 1}
    assert _ops(model) == ["MatMul", "Add", "Sum", "LayerNormalization"]
    assert "SkipLayerNormalization" not in _fused_ops(model, tmp_path)
    # The original ran fused, in another order of float additions.
    _assert_same_numbers(original, model)


def test_residual_add_as_sum_leaves_a_shared_add_alone() -> None:
    model = residual_norm(shared=True)

    record = _run_pass(ResidualAddAsSum(), model)

    assert not record.modified
    assert _ops(model) == ["MatMul", "Add", "Add", "LayerNormalization"]


def test_cleanup_adds_the_cpu_rewrites_only_for_cpu_sessions() -> None:
    names = [type(p).__name__ for p in cleanup_passes()]
    assert "ResidualAddAsSum" not in names
    assert "ResidualAddAsSum" in [type(p).__name__ for p in cleanup_passes(cpu_only=True)]


# ---------------------------------------------------------------------------------------------
# The whole pipeline


def test_cleanup_pipeline_on_mnist(mnist: Path) -> None:
    model = sir.load(mnist)

    records = sir.PassManager(cleanup_passes()).run(model)

    assert [r.name for r in records][:2] == ["UpgradeOpset", "RemoveInitializersFromInputsPass"]
    assert model.opset_imports[""] == 13
    assert [v.name for v in model.graph.inputs] == ["Input3"]
    ops = Counter(_ops(model))
    assert ops == Counter({"Conv": 2, "Relu": 2, "MaxPool": 2, "Reshape": 1, "Gemm": 1})
    for conv in (n for n in model.graph if n.op_type == "Conv"):
        assert len(conv.inputs) == 3 and conv.inputs[2].const_value is not None
    sir.verify(model, deep=True)
    _assert_same_numbers(onnx.load(mnist), model)


#   x[1,2,5,5] -> Conv(w, b) -> Relu -> y        w, b, and the Add's c come from Constant nodes
#                               ^ Add(c) in between
def constant_weights() -> onnx.ModelProto:
    rng = np.random.default_rng(5)

    def constant(name: str, shape: tuple[int, ...]) -> onnx.NodeProto:
        array = rng.standard_normal(shape).astype(np.float32)
        return helper.make_node(
            "Constant", [], [name], name=f"make_{name}", value=numpy_helper.from_array(array, name)
        )

    graph = helper.make_graph(
        [
            constant("w", (3, 2, 3, 3)),
            constant("b", (3,)),
            constant("c", (1, 3, 1, 1)),
            helper.make_node("Conv", ["x", "w", "b"], ["t"], name="conv"),
            helper.make_node("Add", ["t", "c"], ["u"], name="add"),
            helper.make_node("Relu", ["u"], ["y"], name="relu"),
        ],
        "constant_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 3, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_cleanup_pipeline_lifts_constant_weights() -> None:
    proto = constant_weights()
    model = sir.load(proto)

    records = sir.PassManager(cleanup_passes()).run(model)

    lift = next(r for r in records if r.name == "LiftConstantsToInitializersPass")
    assert lift.modified and lift.delta == {"Constant": -3}
    assert _ops(model) == ["Conv", "Relu"]
    conv = model.graph.node(0)
    assert all(v.is_initializer() and v.const_value is not None for v in conv.inputs[1:])
    assert [o.name for o in model.graph.outputs] == ["y"]
    _assert_same_numbers(proto, model)
