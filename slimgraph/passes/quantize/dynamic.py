"""Dynamic INT8: weights quantized ahead of time, activations at run time.

For matrix products with a constant weight (the projections of transformers and LSTMs, the
classifier of a CNN) the activation's range is measured per call by
``DynamicQuantizeLinear`` instead of calibrated, so no calibration data is needed and
inputs with unusual ranges (attention masks, padding) cannot be clipped. The product runs as
``MatMulInteger`` and is scaled back to float; onnxruntime fuses the four nodes into one
``DynamicQuantizeMatMul`` kernel.

    A -> DynamicQuantizeLinear -> (a_q, a_scale, a_zp)
    MatMulInteger(a_q, W_q, a_zp, W_zp) -> Cast(float) -> Mul(a_scale * W_scale) -> [Add(b)]

The plan is the same two phases as static quantization: :class:`PlanDynamic` marks nodes
(rules keyed by op type), :class:`InsertDynamic` rewrites them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import onnx_ir as ir

from slimgraph.ir.graphs import all_graphs
from slimgraph.ir.quant import QuantDType, QuantScheme, params_from_weight
from slimgraph.passes.quantize.config import QuantConfig
from slimgraph.passes.quantize.plan import NODE_PLAN_KEY, NodePlan, WeightRequest

__all__ = ["InsertDynamic", "PlanDynamic"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _DynamicRule:
    weight_index: int
    bias_index: int | None


# Ops with an integer kernel for a run-time-quantized activation times a constant weight,
# and embedding lookups (Gather from a constant table), whose table is stored in INT8 and
# dequantized after the lookup.
_RULES = {
    "MatMul": _DynamicRule(weight_index=1, bias_index=None),
    "Gemm": _DynamicRule(weight_index=1, bias_index=2),
    "Gather": _DynamicRule(weight_index=0, bias_index=None),
}


class PlanDynamic(ir.passes.InPlacePass):
    """Mark MatMul and Gemm nodes with a constant 2-D weight for dynamic quantization."""

    def __init__(self, config: QuantConfig) -> None:
        super().__init__()
        self.config = config

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for graph in all_graphs(model):
            for node in graph:
                node.meta[NODE_PLAN_KEY] = self._plan(node)
        return ir.passes.PassResult(model, modified=False)

    def _plan(self, node: ir.Node) -> NodePlan:
        rule = _RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            return NodePlan(False, f"no dynamic integer kernel for {node.op_type}")
        override = self.config.override_for(node)
        if not override.quantize:
            return NodePlan(False, override.reason)
        weight = node.inputs[rule.weight_index]
        if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
            return NodePlan(False, "the weight is not a constant matrix")
        if weight.dtype != ir.DataType.FLOAT:
            return NodePlan(False, "the weight is not float")
        if node.op_type == "Gather":
            table = replace(self.config.weight_for(node), per_channel=False, reduce_range=False)
            return NodePlan(True, "embedding table in INT8",
                            weights={0: WeightRequest(table, None)})
        activation = node.inputs[0]
        if activation is None or activation.dtype != ir.DataType.FLOAT:
            return NodePlan(False, "the input is not float")
        if node.op_type == "Gemm" and not _plain_gemm(node):
            return NodePlan(False, "Gemm with transA, alpha or beta")
        scheme = self.config.weight_for(node)
        # The run-time activation is uint8 with a data-dependent zero point: on x86 without
        # VNNI its u8 x s8 pair sums saturate at full range, so the guard always applies.
        if self.config.saturation_guard:
            scheme = replace(scheme, reduce_range=True)
        # Output channels run along B's columns once B is [K, N] (see InsertDynamic).
        axis = 1 if scheme.per_channel else None
        if scheme.dtype is not QuantDType.INT8:
            scheme = replace(scheme, dtype=QuantDType.INT8)
        return NodePlan(True, "quantized (dynamic)",
                        weights={rule.weight_index: WeightRequest(scheme, axis)})


def _plain_gemm(node: ir.Node) -> bool:
    def attr(name: str, default: float) -> float:
        a = node.attributes.get(name)
        return a.value if a is not None else default

    return attr("transA", 0) == 0 and attr("alpha", 1.0) == 1.0 and attr("beta", 1.0) == 1.0


def _trans_b(node: ir.Node) -> bool:
    a = node.attributes.get("transB")
    return bool(a.as_int()) if a is not None else False


class InsertDynamic(ir.passes.InPlacePass):
    """Rewrite every planned node into the DynamicQuantizeLinear/MatMulInteger form."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        count = 0
        for graph in list(all_graphs(model)):
            for node in list(graph):
                plan = node.meta.get(NODE_PLAN_KEY)
                if isinstance(plan, NodePlan) and plan.quantized and plan.weights:
                    self._rewrite(graph, node, plan)
                    count += 1
        return ir.passes.PassResult(model, modified=count > 0)

    def _rewrite(self, graph: ir.Graph, node: ir.Node, plan: NodePlan) -> None:
        if node.op_type == "Gather":
            self._rewrite_gather(graph, node, plan)
            return
        (index, request), = plan.weights.items()
        weight = node.inputs[index].const_value.numpy()
        if node.op_type == "Gemm" and _trans_b(node):
            weight = weight.T  # MatMulInteger takes B as [K, N]
        axis = None if request.axis is None else 1
        params = params_from_weight(weight, QuantScheme(request.scheme.dtype, True,
                                                        axis is not None,
                                                        request.scheme.reduce_range), axis=axis)
        base = node.name or "matmul"
        w_q = _const(graph, params.quantize(weight), f"{base}_weight_quantized")
        w_zp = _const(graph, params.zero_point.reshape(-1) if axis is not None
                      else params.zero_point, f"{base}_weight_zero_point")
        w_scale = _const(graph, params.scale.astype(np.float32), f"{base}_weight_scale")

        dql = ir.node("DynamicQuantizeLinear", [node.inputs[0]], num_outputs=3,
                      name=f"{base}_DynamicQuantizeLinear")
        a_q, a_scale, a_zp = dql.outputs
        mm = ir.node("MatMulInteger", [a_q, w_q, a_zp, w_zp], name=f"{base}_MatMulInteger")
        cast = ir.node("Cast", [mm.outputs[0]], attributes={"to": ir.DataType.FLOAT},
                       name=f"{base}_Cast")
        scale = ir.node("Mul", [a_scale, w_scale], name=f"{base}_scale")
        out = ir.node("Mul", [cast.outputs[0], scale.outputs[0]], name=f"{base}_rescale")
        new_nodes = [dql, mm, cast, scale, out]
        result = out.outputs[0]
        bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
        if bias is not None:
            add = ir.node("Add", [result, bias], name=f"{base}_bias")
            new_nodes.append(add)
            result = add.outputs[0]
        graph.insert_before(node, new_nodes)
        original = node.outputs[0]
        name, original.name = original.name, None
        result.name = name
        result.type, result.shape = original.type, original.shape
        original.replace_all_uses_with(result, replace_graph_outputs=True)
        graph.remove(node, safe=True)


    @staticmethod
    def _rewrite_gather(graph: ir.Graph, node: ir.Node, plan: NodePlan) -> None:
        """``Gather(table, ids)`` becomes ``DequantizeLinear(Gather(table_q, ids))``."""
        request = plan.weights[0]
        table = node.inputs[0].const_value.numpy()
        params = params_from_weight(table, request.scheme, axis=None)
        base = node.name or "gather"
        table_q = _const(graph, params.quantize(table), f"{base}_table_quantized")
        scale = _const(graph, params.scale.astype(np.float32), f"{base}_table_scale")
        zero = _const(graph, params.zero_point, f"{base}_table_zero_point")
        gather = ir.node("Gather", [table_q, node.inputs[1]], attributes=dict(node.attributes),
                         name=f"{base}_quantized")
        dq = ir.node("DequantizeLinear", [gather.outputs[0], scale, zero],
                     name=f"{base}_DequantizeLinear")
        graph.insert_before(node, [gather, dq])
        original = node.outputs[0]
        name, original.name = original.name, None
        dq.outputs[0].name = name
        dq.outputs[0].type, dq.outputs[0].shape = original.type, original.shape
        original.replace_all_uses_with(dq.outputs[0], replace_graph_outputs=True)
        graph.remove(node, safe=True)


def _const(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    while name in graph.initializers:
        name += "_"
    tensor = ir.tensor(np.array(array, order="C"), name=name)
    value = ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=tensor.shape,
                     const_value=tensor)
    graph.register_initializer(value)
    return value
