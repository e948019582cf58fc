"""Lowering to an ONNX QDQ model for onnxruntime.

onnxruntime's graph optimizer turns DequantizeLinear -> op -> QuantizeLinear groups into
integer kernels for the ops it knows. The lowering prepares the graph for that and covers
what the optimizer leaves in float.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from slimgraph.ir.pass_manager import PassManager

__all__ = ["SinkPadIntoIntegers", "lower_qdq"]

logger = logging.getLogger(__name__)


def lower_qdq(model: ir.Model) -> ir.Model:
    """Lower a quantized IR model to QDQ ONNX for onnxruntime, in place; returns it."""
    PassManager([
        # onnxruntime has integer Pad but no QDQ fusion for it: move Pad onto the integers.
        SinkPadIntoIntegers(),

        # Drop what the rewrites left unused, then keep the node order topological.
        common.RemoveUnusedNodesPass(),
        common.TopologicalSortPass(),
    ]).run(model)
    return model


def _single_quantize_user(value: ir.Value) -> ir.Node | None:
    users = value.consumers()
    if len(users) == 1 and users[0].op_type == "QuantizeLinear" and not value.is_graph_output():
        return users[0]
    return None


def _same_constant(a: ir.Value | None, b: ir.Value | None) -> bool:
    if a is b:
        return True
    if a is None or b is None or a.const_value is None or b.const_value is None:
        return False
    return np.array_equal(a.const_value.numpy(), b.const_value.numpy()) and (
        a.const_value.dtype == b.const_value.dtype
    )


def _same_params(dq: ir.Node, q: ir.Node) -> bool:
    axis_dq = dq.attributes.get("axis")
    axis_q = q.attributes.get("axis")
    if (axis_dq.as_int() if axis_dq else None) != (axis_q.as_int() if axis_q else None):
        return False
    return _same_constant(dq.inputs[1], q.inputs[1]) and _same_constant(
        dq.inputs[2] if len(dq.inputs) > 2 else None, q.inputs[2] if len(q.inputs) > 2 else None
    )


class SinkPadIntoIntegers(ir.passes.InPlacePass):
    """``DQ(x) -> Pad -> Q`` with equal parameters becomes ``Pad(x)`` padding with the zero
    point (other pad values only when they quantize exactly)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        changed = 0
        for graph in (model.graph, *model.graph.subgraphs()):
            for pad in [n for n in graph if n.op_type == "Pad" and n.domain in ("", "ai.onnx")]:
                changed += self._sink(graph, pad)
        return ir.passes.PassResult(model, modified=changed > 0)

    def _sink(self, graph: ir.Graph, pad: ir.Node) -> int:
        dq = pad.inputs[0].producer() if pad.inputs[0] is not None else None
        q = _single_quantize_user(pad.outputs[0])
        if dq is None or dq.op_type != "DequantizeLinear" or q is None:
            return 0
        if not _same_params(dq, q) or dq.attributes.get("axis") is not None:
            return 0
        if len(pad.inputs) > 3 and pad.inputs[3] is not None:
            return 0  # padding only some axes: keep it simple, leave it in float
        zero_point = dq.inputs[2] if len(dq.inputs) > 2 else None
        if zero_point is None or zero_point.const_value is None:
            return 0
        fill = pad.inputs[2] if len(pad.inputs) > 2 else None
        mode = pad.attributes.get("mode")
        if (mode is None or mode.as_string() == "constant") and not _fill_is_zero(fill):
            return 0
        new_pad = ir.node(
            "Pad",
            [dq.inputs[0], pad.inputs[1], zero_point],
            attributes={k: v for k, v in pad.attributes.items()},
            name=pad.name,
        )
        graph.insert_before(pad, new_pad)
        q_out = q.outputs[0]
        name, q_out.name = q_out.name, None
        new_pad.outputs[0].name = name
        new_pad.outputs[0].type = q_out.type
        new_pad.outputs[0].shape = pad.outputs[0].shape
        q_out.replace_all_uses_with(new_pad.outputs[0], replace_graph_outputs=True)
        graph.remove([q, pad], safe=True)
        return 1


def _fill_is_zero(fill: ir.Value | None) -> bool:
    if fill is None:
        return True
    if fill.const_value is None:
        return False
    return bool(np.all(fill.const_value.numpy() == 0))
