"""Lowering to QOperator ONNX: integer operators (QLinearConv, QLinearMatMul, QGemm,
QLinearAdd...) instead of DequantizeLinear -> op -> QuantizeLinear groups.

The same model, spelled the way older runtimes and tools expect: every group whose inputs
come from DequantizeLinear and whose output goes to one QuantizeLinear becomes one integer
operator reading the integers directly; ops that only move data run on the integers when
their input and output share parameters. QuantizeLinear and DequantizeLinear remain only
where the graph enters or leaves the integer domain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from slimgraph.backends.onnx_qdq import SinkPadIntoIntegers, _same_params
from slimgraph.ir.pass_manager import PassManager

__all__ = ["ToQOperator", "lower_qoperator"]

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"


def lower_qoperator(model: ir.Model) -> ir.Model:
    """Lower a quantized IR model to QOperator ONNX for onnxruntime, in place; returns it."""
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    PassManager([
        SinkPadIntoIntegers(),

        # Fold each DQ -> op -> Q group into its integer operator.
        ToQOperator(),

        # Drop the Q/DQ nodes and float weights the integer operators no longer read.
        common.RemoveUnusedNodesPass(),
        common.TopologicalSortPass(),
    ]).run(model)
    return model


def _dq(value: ir.Value | None) -> ir.Node | None:
    producer = value.producer() if value is not None else None
    return producer if producer is not None and producer.op_type == "DequantizeLinear" else None


def _only_q(value: ir.Value) -> ir.Node | None:
    users = value.consumers()
    if len(users) == 1 and users[0].op_type == "QuantizeLinear" and not value.is_graph_output():
        return users[0]
    return None


def _through_activation(value: ir.Value) -> tuple[ir.Node | None, ir.Node | None]:
    """The QuantizeLinear after ``value``, possibly behind a Relu or Clip whose clipping the
    quantized range already does (zero point at the type's minimum, range inside Clip's)."""
    q = _only_q(value)
    if q is not None:
        return q, None
    users = value.consumers()
    if len(users) != 1 or value.is_graph_output() or users[0].op_type not in ("Relu", "Clip"):
        return None, None
    act = users[0]
    q = _only_q(act.outputs[0])
    if q is None or not _activation_is_redundant(act, q):
        return None, None
    return q, act


def _activation_is_redundant(act: ir.Node, q: ir.Node) -> bool:
    scale, zp = q.inputs[1], q.inputs[2] if len(q.inputs) > 2 else None
    if scale is None or scale.const_value is None or scale.const_value.size != 1:
        return False
    zero = int(zp.const_value.numpy()) if zp is not None and zp.const_value is not None else 0
    dtype = zp.const_value.numpy().dtype if zp is not None and zp.const_value is not None else (
        np.dtype(np.uint8))
    info = np.iinfo(dtype)
    s = float(scale.const_value.numpy())
    low, high = (info.min - zero) * s, (info.max - zero) * s
    if act.op_type == "Relu":
        return zero == info.min
    bounds = [v.const_value.numpy() if v is not None and v.const_value is not None else None
              for v in list(act.inputs[1:3]) + [None] * (3 - len(act.inputs))][:2]
    clip_low = float(bounds[0]) if bounds[0] is not None else -np.inf
    clip_high = float(bounds[1]) if bounds[1] is not None else np.inf
    return clip_low <= low + 1e-6 * s and high <= clip_high + 1e-6 * s


def _qinputs(dq: ir.Node) -> list[ir.Value | None]:
    """(integer tensor, scale, zero point) of a DequantizeLinear."""
    zp = dq.inputs[2] if len(dq.inputs) > 2 else None
    return [dq.inputs[0], dq.inputs[1], zp]


def _per_tensor(node: ir.Node) -> bool:
    scale = node.inputs[1]
    return scale is not None and scale.const_value is not None and scale.const_value.size == 1


Builder = Callable[[ir.Node, list[ir.Node], ir.Node | None], ir.Node | None]


def _conv(node: ir.Node, dqs: list[ir.Node], q: ir.Node | None) -> ir.Node | None:
    if q is None or len(dqs) < 2:
        return None
    inputs = [*_qinputs(dqs[0]), *_qinputs(dqs[1]), q.inputs[1], q.inputs[2]]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = _dq(node.inputs[2])
        if bias is None:
            return None
        inputs.append(bias.inputs[0])
    return ir.node("QLinearConv", inputs, attributes=dict(node.attributes), name=node.name)


def _matmul(node: ir.Node, dqs: list[ir.Node], q: ir.Node | None) -> ir.Node | None:
    if q is None or len(dqs) != 2:
        return None
    inputs = [*_qinputs(dqs[0]), *_qinputs(dqs[1]), q.inputs[1], q.inputs[2]]
    return ir.node("QLinearMatMul", inputs, name=node.name)


def _gemm(node: ir.Node, dqs: list[ir.Node], q: ir.Node | None) -> ir.Node | None:
    if len(dqs) < 2:
        return None
    inputs: list[ir.Value | None] = [*_qinputs(dqs[0]), *_qinputs(dqs[1])]
    bias = None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias_dq = _dq(node.inputs[2])
        if bias_dq is None:
            return None
        bias = bias_dq.inputs[0]
    inputs.append(bias)
    if q is not None:
        inputs += [q.inputs[1], q.inputs[2]]
    attrs = {k: v for k, v in node.attributes.items() if k in ("transA", "transB", "alpha")}
    return ir.node("QGemm", inputs, attributes=attrs, domain=MS_DOMAIN, name=node.name)


def _binary(op: str) -> Builder:
    def build(node: ir.Node, dqs: list[ir.Node], q: ir.Node | None) -> ir.Node | None:
        if q is None or len(dqs) != 2:
            return None
        inputs = [*_qinputs(dqs[0]), *_qinputs(dqs[1]), q.inputs[1], q.inputs[2]]
        return ir.node(op, inputs, domain=MS_DOMAIN, name=node.name)

    return build


def _unary(op: str, extra: dict[str, object] | None = None) -> Builder:
    def build(node: ir.Node, dqs: list[ir.Node], q: ir.Node | None) -> ir.Node | None:
        if q is None or len(dqs) != 1:
            return None
        attrs = {**dict(node.attributes), **(extra or {})}
        inputs = [*_qinputs(dqs[0]), q.inputs[1], q.inputs[2]]
        return ir.node(op, inputs, attributes=attrs, domain=MS_DOMAIN, name=node.name)

    return build


def _concat(node: ir.Node, dqs: list[ir.Node], q: ir.Node | None) -> ir.Node | None:
    if q is None or len(dqs) != len(node.inputs):
        return None
    inputs: list[ir.Value | None] = [q.inputs[1], q.inputs[2]]
    for dq in dqs:
        inputs += _qinputs(dq)
    return ir.node("QLinearConcat", inputs, attributes=dict(node.attributes),
                   domain=MS_DOMAIN, name=node.name)


# Integer operators by float op type; each builder returns None when the group does not fit.
_BUILDERS: dict[str, Builder] = {
    "Conv": _conv,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Add": _binary("QLinearAdd"),
    "Mul": _binary("QLinearMul"),
    "GlobalAveragePool": _unary("QLinearGlobalAveragePool", {"channels_last": 0}),
    "AveragePool": _unary("QLinearAveragePool"),
    "Concat": _concat,
    "Sigmoid": _unary("QLinearSigmoid"),
    "LeakyRelu": _unary("QLinearLeakyRelu"),
}

# Ops that only move or select values: on integers when input and output share parameters.
_DATA_MOVEMENT = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze",
                            "Unsqueeze", "Slice", "Gather", "Expand", "Tile", "Resize"})


class ToQOperator(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        changed = 0
        for graph in (model.graph, *model.graph.subgraphs()):
            for node in list(graph):
                if node.domain not in ("", "ai.onnx") or node.graph is None:
                    continue
                if node.op_type in _BUILDERS:
                    changed += self._fold(graph, node)
                elif node.op_type in _DATA_MOVEMENT:
                    changed += self._on_integers(graph, node)
        return ir.passes.PassResult(model, modified=changed > 0)

    def _fold(self, graph: ir.Graph, node: ir.Node) -> int:
        activation_inputs = [v for i, v in enumerate(node.inputs)
                             if v is not None and not (node.op_type in ("Conv", "Gemm") and i == 2)]
        dqs = [_dq(v) for v in activation_inputs]
        if any(dq is None for dq in dqs):
            return 0
        q, activation = _through_activation(node.outputs[0])
        # Activations must be per tensor; weights (input 1 of Conv/MatMul/Gemm) may be per
        # channel.
        for index, dq in enumerate(dqs):
            if not _per_tensor(dq) and not (index == 1 and node.op_type in ("Conv", "Gemm",
                                                                              "MatMul")):
                return 0
        integer = _BUILDERS[node.op_type](node, dqs, q)
        if integer is None:
            return 0
        graph.insert_before(node, integer)
        target = q.outputs[0] if q is not None else node.outputs[0]
        _take_over(integer.outputs[0], target)
        graph.remove([n for n in (q, activation, node) if n is not None], safe=True)
        return 1

    def _on_integers(self, graph: ir.Graph, node: ir.Node) -> int:
        dq = _dq(node.inputs[0])
        q = _only_q(node.outputs[0])
        if dq is None or q is None or not _same_params(dq, q) or not _per_tensor(dq):
            return 0
        if node.op_type == "MaxPool" and np.any(dq.inputs[1].const_value.numpy() <= 0):
            return 0
        moved = ir.node(node.op_type, [dq.inputs[0], *node.inputs[1:]],
                        attributes=dict(node.attributes), name=node.name)
        graph.insert_before(node, moved)
        _take_over(moved.outputs[0], q.outputs[0])
        graph.remove([q, node], safe=True)
        return 1


def _take_over(new: ir.Value, old: ir.Value) -> None:
    """Make ``new`` replace ``old`` everywhere, keeping ``old``'s name, type and shape."""
    name, old.name = old.name, None
    new.name = name
    new.type, new.shape = old.type, old.shape
    old.replace_all_uses_with(new, replace_graph_outputs=True)
