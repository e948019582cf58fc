"""The verifier: one hand-built graph per broken invariant, and well-formed near misses."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from slimgraph.errors import VerificationError
from slimgraph.ir import QUANT_PARAMS_KEY, Problem, QuantDType, QuantParams, find_problems, verify

FLOAT = ir.DataType.FLOAT


def _value(name: str, dtype: ir.DataType = FLOAT, shape: tuple[int, ...] = (2,)) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(list(shape)))


def _node(op: str, inputs: list[ir.Value | None], name: str, out: str, **kw: object) -> ir.Node:
    node = ir.node(op, inputs, name=name, **kw)
    node.outputs[0].name = out
    return node


def _model(
    nodes: list[ir.Node],
    inputs: list[ir.Value],
    outputs: list[ir.Value],
    initializers: list[ir.Value] = (),
    opsets: dict[str, int] | None = None,
) -> ir.Model:
    graph = ir.Graph(
        inputs,
        outputs,
        nodes=nodes,
        initializers=list(initializers),
        opset_imports=opsets or {"": 17},
        name="main",
    )
    return ir.Model(graph, ir_version=8)


def _only_problem(model: ir.Model, **kw: bool) -> Problem:
    problems = find_problems(model, **kw)
    assert len(problems) == 1, problems
    return problems[0]


#   x -> Relu(relu) -> y
def relu_model() -> ir.Model:
    x = _value("x")
    relu = _node("Relu", [x], "relu", "y")
    return _model([relu], [x], [relu.outputs[0]])


def test_well_formed_model_has_no_problems() -> None:
    model = relu_model()

    assert find_problems(model) == []
    assert find_problems(model, deep=True) == []
    verify(model, deep=True)


#   x -> Relu(first) -> t
#   x -> Neg(second) -> t      (same name, second producer)
def test_duplicate_producer_name() -> None:
    x = _value("x")
    first = _node("Relu", [x], "first", "t")
    second = _node("Neg", [x], "second", "t")
    model = _model([first, second], [x], [second.outputs[0]])

    problem = _only_problem(model)

    assert "second" in problem.where
    assert "'t'" in problem.what
    assert "also defined by" in problem.what and "first" in problem.what


#   x -> Relu(gone) -> mid -> Neg(reader) -> y      then 'gone' is removed
def test_dangling_input_after_producer_removed() -> None:
    x = _value("x")
    gone = _node("Relu", [x], "gone", "mid")
    reader = _node("Neg", [gone.outputs[0]], "reader", "y")
    model = _model([gone, reader], [x], [reader.outputs[0]])
    model.graph.remove(gone, safe=False)

    problem = _only_problem(model)

    assert "reader" in problem.where
    assert "'mid'" in problem.what and "dangling" in problem.what
    assert "gone" in problem.what and "not in the graph" in problem.what


#   x -> Relu(early) -> mid -> Neg(late) -> y      listed as [late, early]
def test_nodes_out_of_order() -> None:
    x = _value("x")
    early = _node("Relu", [x], "early", "mid")
    late = _node("Neg", [early.outputs[0]], "late", "y")
    model = _model([late, early], [x], [late.outputs[0]])

    problem = _only_problem(model)

    assert "late" in problem.where
    assert "'mid'" in problem.what and "produced later" in problem.what
    assert "early" in problem.what


def test_same_nodes_in_order_are_fine() -> None:
    # Near miss of the test above: the same two nodes in producer-first order.
    x = _value("x")
    early = _node("Relu", [x], "early", "mid")
    late = _node("Neg", [early.outputs[0]], "late", "y")

    assert find_problems(_model([early, late], [x], [late.outputs[0]])) == []


#   x ─> Add(ping) -> p -> Relu(pong) -> q ─┐
#        ^ input 1 <────────────────────────┘
def test_cycle() -> None:
    x = _value("x")
    ping = _node("Add", [x, x], "ping", "p")
    pong = _node("Relu", [ping.outputs[0]], "pong", "q")
    ping.replace_input_with(1, pong.outputs[0])
    model = _model([ping, pong], [x], [pong.outputs[0]])

    problem = _only_problem(model)

    assert "main" in problem.where
    assert "cycle" in problem.what
    assert "ping" in problem.what and "pong" in problem.what


#   x -> Relu(relu) -> y ;  graph outputs: y, ghost      (nothing produces ghost)
def test_graph_output_nothing_produces() -> None:
    x = _value("x")
    relu = _node("Relu", [x], "relu", "y")
    ghost = _value("ghost")
    model = _model([relu], [x], [relu.outputs[0], ghost])

    problem = _only_problem(model)

    assert "main" in problem.where
    assert "'ghost'" in problem.what and "not produced" in problem.what


#   x -> Relu(gone) -> y (graph output)      then 'gone' is removed
def test_graph_output_whose_producer_was_removed() -> None:
    x = _value("x")
    gone = _node("Relu", [x], "gone", "y")
    model = _model([gone], [x], [gone.outputs[0]])
    model.graph.remove(gone, safe=False)

    problem = _only_problem(model)

    assert "main" in problem.where
    assert "output 0 'y'" in problem.what and "not produced" in problem.what


#   x -> Add(w) -> y      w declared INT64[3], data FLOAT[2]
def test_initializer_dtype_and_shape_mismatch() -> None:
    x = _value("x")
    w = ir.Value(
        name="w",
        type=ir.TensorType(ir.DataType.INT64),
        shape=ir.Shape([3]),
        const_value=ir.tensor(np.zeros(2, np.float32), name="w"),
    )
    add = _node("Add", [x, w], "add", "y")
    model = _model([add], [x], [add.outputs[0]], [w])

    problems = find_problems(model)

    assert {p.where for p in problems} == {"initializer 'w'"}
    whats = " | ".join(p.what for p in problems)
    assert "declared INT64, data is FLOAT" in whats
    assert "declared shape [3], data has shape [2]" in whats


def test_initializer_that_matches_its_declaration_is_fine() -> None:
    x = _value("x")
    w = ir.Value(
        name="w",
        type=ir.TensorType(FLOAT),
        shape=ir.Shape([2]),
        const_value=ir.tensor(np.zeros(2, np.float32), name="w"),
    )
    add = _node("Add", [x, w], "add", "y")

    assert find_problems(_model([add], [x], [add.outputs[0]], [w])) == []


#   x, x -> Relu(relu2) -> y      (Relu takes one input)
def test_too_many_inputs_for_schema() -> None:
    x = _value("x")
    relu = _node("Relu", [x, x], "relu2", "y")
    model = _model([relu], [x], [relu.outputs[0]])

    problem = _only_problem(model)

    assert "relu2" in problem.where and "Relu" in problem.where
    assert "has 2 inputs" in problem.what and "1 to 1" in problem.what


def test_trailing_empty_optional_inputs_do_not_count() -> None:
    # Near miss: Clip(x, None, None) has three input slots but only one value.
    x = _value("x")
    clip = _node("Clip", [x, None, None], "clip", "y")

    assert find_problems(_model([clip], [x], [clip.outputs[0]])) == []


#   x -> com.example::Frob(frob) -> y      with and without an opset import for com.example
def _custom_domain_model(opsets: dict[str, int]) -> ir.Model:
    x = _value("x")
    frob = _node("Frob", [x], "frob", "y", domain="com.example")
    return _model([frob], [x], [frob.outputs[0]], opsets=opsets)


def test_missing_opset_import_for_custom_domain() -> None:
    problem = _only_problem(_custom_domain_model({"": 17}))

    assert "frob" in problem.where
    assert "'com.example'" in problem.what and "no opset import" in problem.what


def test_custom_domain_with_opset_import_is_fine() -> None:
    assert find_problems(_custom_domain_model({"": 17, "com.example": 1})) == []


#   x -> Relu(relu) -> y      x and y carry quantization parameters
def _quantized_relu(x_params: QuantParams, y_params: QuantParams) -> ir.Model:
    model = relu_model()
    model.graph.inputs[0].meta[QUANT_PARAMS_KEY] = x_params
    model.graph.outputs[0].meta[QUANT_PARAMS_KEY] = y_params
    return model


def _params(
    scale: float | list[float],
    zero_point: int | list[int],
    dtype: QuantDType,
    axis: int | None = None,
) -> QuantParams:
    return QuantParams(
        np.asarray(scale, np.float32), np.asarray(zero_point, np.int64), dtype, axis=axis
    )


def test_quant_params_negative_scale() -> None:
    good = _params(0.1, 0, QuantDType.UINT8)
    model = _quantized_relu(good, _params(-0.5, 0, QuantDType.UINT8))

    problem = _only_problem(model)

    assert problem.where == "value 'y'"
    assert "scale must be finite and > 0" in problem.what and "-0.5" in problem.what


def test_quant_params_zero_point_out_of_range() -> None:
    good = _params(0.1, 0, QuantDType.INT8)
    model = _quantized_relu(_params(0.1, 300, QuantDType.UINT8), good)

    problem = _only_problem(model)

    assert problem.where == "value 'x'"
    assert "zero point 300" in problem.what and "UINT8 range [0, 255]" in problem.what


def test_quant_params_at_the_edges_are_fine() -> None:
    # Near miss: zero points on the ends of their range and tiny positive scales, per channel.
    edges = _params([1e-30, 3.0], [0, 255], QuantDType.UINT8, axis=0)
    model = _quantized_relu(_params(1.0, -128, QuantDType.INT8), edges)

    assert find_problems(model) == []


#   x: FLOAT, i: INT64 -> Add(mixed) -> y      (only type inference notices)
def test_deep_catches_type_error() -> None:
    x, i = _value("x"), _value("i", ir.DataType.INT64)
    add = _node("Add", [x, i], "mixed", "y")
    model = _model([add], [x, i], [add.outputs[0]])

    assert find_problems(model) == []
    problems = find_problems(model, deep=True)

    assert problems
    assert all(p.where == "type and shape inference" for p in problems)
    text = " ".join(p.what for p in problems)
    assert "Add" in text and "mixed" in text
    with pytest.raises(VerificationError, match="type and shape inference"):
        verify(model, deep=True)


#   cond, x -> If(choose) ─ then: Relu(then_relu)(x) -> then_y     x read from the outer graph
#                         └ else: Neg(else_neg)(x)   -> else_y
def if_reading_outer_scope() -> ir.Model:
    cond, x = _value("cond", ir.DataType.BOOL, ()), _value("x")
    then_relu = _node("Relu", [x], "then_relu", "then_y")
    else_neg = _node("Neg", [x], "else_neg", "else_y")
    then_branch = ir.Graph([], [then_relu.outputs[0]], nodes=[then_relu], name="then")
    else_branch = ir.Graph([], [else_neg.outputs[0]], nodes=[else_neg], name="else")
    choose = _node(
        "If",
        [cond],
        "choose",
        "y",
        attributes={"then_branch": then_branch, "else_branch": else_branch},
    )
    for out in (then_relu.outputs[0], else_neg.outputs[0], choose.outputs[0]):
        out.type, out.shape = ir.TensorType(FLOAT), ir.Shape([2])
    return _model([choose], [cond, x], [choose.outputs[0]])


def test_subgraph_reading_outer_scope_value_is_fine() -> None:
    model = if_reading_outer_scope()

    assert find_problems(model, deep=True) == []
    verify(model, deep=True)

    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([-1.5, 2.0], np.float32)
    (then_y,) = session.run(None, {"cond": np.array(True), "x": x})
    (else_y,) = session.run(None, {"cond": np.array(False), "x": x})
    np.testing.assert_array_equal(then_y, [0.0, 2.0])
    np.testing.assert_array_equal(else_y, [1.5, -2.0])


def test_subgraph_value_shadowing_outer_name() -> None:
    model = if_reading_outer_scope()
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    then_branch.node(0).outputs[0].name = "x"  # the outer graph's input

    problem = _only_problem(model)

    assert "then_relu" in problem.where
    assert "'x'" in problem.what and "shadows" in problem.what


#   x -> Relu(relu2)(x, x) -> y ;  x -> Frob(frob) -> f ;  graph outputs y, f
def test_verify_lists_every_problem() -> None:
    x = _value("x")
    relu = _node("Relu", [x, x], "relu2", "y")
    frob = _node("Frob", [x], "frob", "f", domain="com.example")
    model = _model([relu, frob], [x], [relu.outputs[0], frob.outputs[0]])
    model.graph.outputs[0].meta[QUANT_PARAMS_KEY] = _params(0.0, 0, QuantDType.UINT8)
    problems = find_problems(model)
    assert len(problems) == 3

    with pytest.raises(VerificationError) as caught:
        verify(model)

    message = str(caught.value)
    assert "'main'" in message and "3 problem(s)" in message
    for problem in problems:
        assert str(problem) in message
