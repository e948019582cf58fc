"""The pass manager: verify around passes, log what each changed, name the pass that broke."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from slimgraph.errors import ModelError, PassError, VerificationError
from slimgraph.ir import PassManager, PassRecord, op_histogram

FLOAT = ir.DataType.FLOAT
LOGGER = "slimgraph.ir.pass_manager"


#   x -> Relu(relu) -> a -> Identity(ident) -> b -> Neg(neg) -> y
def relu_identity_neg() -> ir.Model:
    x = ir.Value(name="x", type=ir.TensorType(FLOAT), shape=ir.Shape([2, 3]))
    relu = ir.node("Relu", [x], name="relu")
    ident = ir.node("Identity", [relu.outputs[0]], name="ident")
    neg = ir.node("Neg", [ident.outputs[0]], name="neg")
    for node, out in ((relu, "a"), (ident, "b"), (neg, "y")):
        node.outputs[0].name = out
        node.outputs[0].type, node.outputs[0].shape = ir.TensorType(FLOAT), ir.Shape([2, 3])
    graph = ir.Graph(
        [x], [neg.outputs[0]], nodes=[relu, ident, neg], opset_imports={"": 17}, name="main"
    )
    return ir.Model(graph, ir_version=8)


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    return y


class NoChange(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=False)


class DropIdentities(ir.passes.InPlacePass):
    """Removes every Identity, wiring its users to its input."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        identities = [n for n in model.graph if n.op_type == "Identity"]
        for node in identities:
            node.outputs[0].replace_all_uses_with(node.inputs[0])
            model.graph.remove(node, safe=True)
        return ir.passes.PassResult(model, modified=bool(identities))


class Explode(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise RuntimeError("the pass hit a defect")


class DropWithoutRewiring(ir.passes.InPlacePass):
    """Removes the Identity but leaves its user reading the removed node's output."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        node = next(n for n in model.graph if n.op_type == "Identity")
        model.graph.remove(node, safe=False)
        return ir.passes.PassResult(model, modified=True)


class RejectModel(ir.passes.InPlacePass):
    error = ModelError("model file m.onnx: input 'x' has no shape; give one in the spec")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise self.error


def test_pass_that_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    model = relu_identity_neg()
    before = op_histogram(model)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        records = PassManager([NoChange()]).run(model)

    assert records == [PassRecord("NoChange", False, records[0].seconds, {})]
    assert records[0].describe() == "no change"
    assert op_histogram(model) == before
    (line,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert line.startswith("pass NoChange: no change (")


def test_pass_that_removes_a_node(caplog: pytest.LogCaptureFixture) -> None:
    model = relu_identity_neg()
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    expected = _run(model, x)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        records = PassManager([NoChange(), DropIdentities()]).run(model)

    assert [r.name for r in records] == ["NoChange", "DropIdentities"]
    assert records[1].modified
    assert records[1].delta == {"Identity": -1}
    assert records[1].describe() == "Identity -1"
    assert records[1].seconds >= 0
    assert [n.op_type for n in model.graph] == ["Relu", "Neg"]
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 2
    assert lines[1].startswith("pass DropIdentities: Identity -1 (")
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == LOGGER)
    np.testing.assert_array_equal(_run(model, x), expected)

    # Near miss: run again, there is nothing left to drop.
    (again,) = PassManager([DropIdentities()]).run(model)
    assert (again.modified, again.delta) == (False, {})


def test_pass_that_raises_names_itself_and_what_ran_before() -> None:
    model = relu_identity_neg()

    with pytest.raises(PassError) as caught:
        PassManager([NoChange(), DropIdentities(), Explode(), NoChange()]).run(model)

    message = str(caught.value)
    assert "Explode" in message
    assert "after NoChange, DropIdentities" in message
    assert "the pass hit a defect" in message
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_first_pass_that_raises_says_nothing_ran_before() -> None:
    with pytest.raises(PassError, match=r"pass Explode failed \(after nothing\)"):
        PassManager([Explode()]).run(relu_identity_neg())


def test_pass_that_leaves_a_dangling_value() -> None:
    model = relu_identity_neg()

    with pytest.raises(PassError) as caught:
        PassManager([NoChange(), DropWithoutRewiring()]).run(model)

    message = str(caught.value)
    assert "DropWithoutRewiring left a malformed model" in message
    assert "'neg'" in message and "dangling" in message
    assert isinstance(caught.value.__cause__, VerificationError)


def test_dangling_value_unnoticed_without_verification() -> None:
    # Near miss: with verification off, the manager does not look.
    model = relu_identity_neg()

    records = PassManager([DropWithoutRewiring()], verify=False).run(model)

    assert records[0].delta == {"Identity": -1}


def test_malformed_input_model_is_a_verification_error_not_a_pass_error() -> None:
    model = relu_identity_neg()
    model.graph.remove(model.graph.node(1), safe=False)

    with pytest.raises(VerificationError, match="dangling"):
        PassManager([NoChange()]).run(model)


def test_user_error_in_a_pass_propagates_unchanged() -> None:
    reject = RejectModel()

    with pytest.raises(ModelError) as caught:
        PassManager([NoChange(), reject]).run(relu_identity_neg())

    assert caught.value is RejectModel.error
    assert not isinstance(caught.value, PassError)


def test_pass_returning_a_new_model_is_refused() -> None:
    class Replace(ir.passes.FunctionalPass):
        def call(self, model: ir.Model) -> ir.passes.PassResult:
            return ir.passes.PassResult(relu_identity_neg(), modified=True)

    with pytest.raises(PassError, match="Replace returned a new model"):
        PassManager([Replace()]).run(relu_identity_neg())
