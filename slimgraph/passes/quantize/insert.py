"""Phase two of quantization: materialise the plan as QuantizeLinear/DequantizeLinear nodes.

For each node the plan quantizes, weights become integer initializers behind a
DequantizeLinear (per channel along the rule's axis), and the bias becomes INT32 with
scale = input scale x weight scale and zero point 0, which is what integer kernels add to
their accumulators. Then every value with parameters gets a QuantizeLinear/DequantizeLinear
pair right after its producer, and its users read the dequantized value. Graph outputs keep
the float value.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace

import numpy as np
import onnx_ir as ir

from slimgraph.errors import PassError
from slimgraph.ir.edit import NameSource, add_initializer
from slimgraph.ir.graphs import all_graphs
from slimgraph.ir.quant import (
    QUANT_PARAMS_KEY,
    QuantDType,
    QuantParams,
    params_from_weight,
)
from slimgraph.passes.quantize.plan import ACTIVATION_REQUEST_KEY, NODE_PLAN_KEY, NodePlan

__all__ = ["REDUCED_WEIGHTS_KEY", "InsertQDQ"]

# Set on nodes whose weights were given 7 bits by the saturation guard.
REDUCED_WEIGHTS_KEY = "slimgraph.quant.reduced_weights"

logger = logging.getLogger(__name__)

_INT32_LIMIT = float(np.iinfo(np.int32).max)
# Keep biases well inside INT32: the kernel adds them to accumulated products.
_BIAS_HEADROOM = 0.5


class InsertQDQ(ir.passes.InPlacePass):
    """Rewrite the planned model into a QDQ model."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        counts: Counter[str] = Counter()
        names = NameSource(model.graph)
        rewriters = [_GraphRewriter(graph, counts, names, is_subgraph=graph is not model.graph)
                     for graph in list(all_graphs(model))]
        # Weights and biases first, everywhere: a bias's scale needs its input's parameters,
        # which a pair inserted for an outer value would hide behind a DequantizeLinear.
        for rewriter in rewriters:
            rewriter.quantize_constants()
        for rewriter in rewriters:
            rewriter.insert_pairs()
        self.counts = counts
        logger.debug("inserted %s", dict(counts))
        return ir.passes.PassResult(model, modified=bool(counts))


class _GraphRewriter:
    def __init__(self, graph: ir.Graph, counts: Counter[str], names: NameSource, *,
                 is_subgraph: bool) -> None:
        self.graph = graph
        self.counts = counts
        self.names = names
        self.is_subgraph = is_subgraph
        # One set of scale/zero-point initializers per parameter object, shared by all pairs
        # that use it, so the runtime sees the same constants.
        self.param_values: dict[int, tuple[ir.Value, ir.Value]] = {}

    def quantize_constants(self) -> None:
        for node in list(self.graph):
            plan = node.meta.get(NODE_PLAN_KEY)
            if isinstance(plan, NodePlan) and plan.quantized:
                self._quantize_constants(node, plan)

    def insert_pairs(self) -> None:
        values = list(self.graph.inputs) + list(self.graph.initializers.values())
        values += [v for node in list(self.graph) for v in node.outputs]
        for value in values:
            params = value.meta.get(QUANT_PARAMS_KEY)
            if params is not None and ACTIVATION_REQUEST_KEY in value.meta:
                self._insert_pair(value, params)

    # -- constants: weights, biases, constant activation inputs ---------------------------

    def _quantize_constants(self, node: ir.Node, plan: NodePlan) -> None:
        weight_params: dict[int, QuantParams] = {}
        for index, request in plan.weights.items():
            weight = node.inputs[index]
            scheme = request.scheme
            if request.saturation_guard and _input_above_minimum(node, plan):
                scheme = replace(scheme, reduce_range=True)
                node.meta[REDUCED_WEIGHTS_KEY] = True
                self.counts["7-bit weights (saturation guard)"] += 1
            params = params_from_weight(weight.const_value.numpy(), scheme, axis=request.axis)
            if plan.bias is not None and plan.bias[2] == index:
                params = _widen_for_bias(node, plan, params)
            weight_params[index] = params
            self._dequantize_constant(node, index, params, "weight")
        if plan.bias is not None:
            bias_index, act_index, weight_index = plan.bias
            act_params = node.inputs[act_index].meta.get(QUANT_PARAMS_KEY)
            if act_params is not None and weight_index in weight_params:
                self._quantize_bias(node, bias_index, act_params, weight_params[weight_index])
        for index, value in enumerate(node.inputs):
            request = value.meta.get(ACTIVATION_REQUEST_KEY) if value is not None else None
            if request is not None and request.constant and index not in plan.weights:
                self._dequantize_constant(node, index, value.meta[QUANT_PARAMS_KEY], "constant")

    def _dequantize_constant(self, node: ir.Node, index: int, params: QuantParams,
                             kind: str) -> None:
        value = node.inputs[index]
        data = value.const_value.numpy()
        quantized = self._initializer(params.quantize(data), f"{value.name}_quantized")
        dq = self._dequantize_node(quantized, params, f"{value.name}_dequantized")
        self.graph.insert_before(node, dq)
        node.replace_input_with(index, dq.outputs[0])
        self._drop_if_unused(value)
        self.counts[f"{kind} DequantizeLinear"] += 1

    def _quantize_bias(self, node: ir.Node, index: int, act: QuantParams,
                       weight: QuantParams) -> None:
        value = node.inputs[index]
        bias = value.const_value.numpy().astype(np.float64)
        if bias.ndim != 1 and bias.size == max(bias.shape):
            bias = bias.reshape(-1)  # Gemm's C as [1, N]: the same bias as a vector
        if bias.ndim != 1:
            return  # a bias per row and column stays float
        scale = act.scale.astype(np.float64).reshape(-1) * weight.scale.astype(np.float64)
        scale = np.broadcast_to(scale, bias.shape).copy()
        quantized = np.rint(bias / scale)
        if np.any(np.abs(quantized) > _INT32_LIMIT):
            raise PassError(
                f"bias {value.name!r} of {node.name!r} does not fit INT32 at scale input x "
                "weight; its weights are nearly zero: keep this node in float"
            )
        params = QuantParams(
            scale=scale.astype(np.float32),
            zero_point=np.zeros(scale.shape, dtype=np.int32),
            dtype=QuantDType.INT32,
            axis=0,
            origin="bias",
        )
        q_init = self._initializer(quantized.astype(np.int32), f"{value.name}_quantized")
        dq = self._dequantize_node(q_init, params, f"{value.name}_dequantized")
        self.graph.insert_before(node, dq)
        node.replace_input_with(index, dq.outputs[0])
        self._drop_if_unused(value)
        self.counts["bias DequantizeLinear"] += 1

    # -- activations ----------------------------------------------------------------------

    def _insert_pair(self, value: ir.Value, params: QuantParams) -> None:
        """A Q/DQ pair after ``value`` for its users in this graph, and one at the top of
        each subgraph that reads it (onnxruntime fuses a Q/DQ group only within one graph).
        A subgraph's own output is replaced by the dequantized value; the main graph's
        outputs keep the float value the user asked for."""
        by_graph: dict[int, list[tuple[ir.Node, int]]] = {}
        graphs: dict[int, ir.Graph] = {}
        for user, index in value.uses():
            if user.graph is not None:
                by_graph.setdefault(id(user.graph), []).append((user, index))
                graphs[id(user.graph)] = user.graph
        own = self.graph
        is_sub_output = value.is_graph_output() and self.is_subgraph
        if id(own) not in by_graph and is_sub_output:
            by_graph[id(own)], graphs[id(own)] = [], own
        for key, uses in by_graph.items():
            graph = graphs[key]
            q, dq = self._pair(value, params)
            for user, index in uses:
                user.replace_input_with(index, dq.outputs[0])
            producer = value.producer()
            if graph is own and producer is not None and producer.graph is own:
                graph.insert_after(producer, [q, dq])
            else:
                graph.insert_before(self._first_user(graph, uses), [q, dq])
            if graph is own and is_sub_output:
                outputs = graph.outputs
                outputs[list(outputs).index(value)] = dq.outputs[0]
            self.counts["activation Q/DQ pairs"] += 1

    def _pair(self, value: ir.Value, params: QuantParams) -> tuple[ir.Node, ir.Node]:
        scale, zero_point = self._param_initializers(params)
        base = value.name or "value"
        q_out = ir.Value(name=self.names.fresh(f"{base}_q"), type=ir.TensorType(params.dtype.onnx),
                         shape=value.shape)
        dq_out = ir.Value(name=self.names.fresh(f"{base}_dq"), type=value.type, shape=value.shape)
        attrs = {"axis": params.axis} if params.axis is not None else {}
        q = ir.node("QuantizeLinear", [value, scale, zero_point], attributes=attrs,
                    outputs=[q_out], name=self.names.fresh(f"{base}_QuantizeLinear"))
        dq = ir.node("DequantizeLinear", [q_out, scale, zero_point], attributes=attrs,
                     outputs=[dq_out], name=self.names.fresh(f"{base}_DequantizeLinear"))
        return q, dq

    @staticmethod
    def _first_user(graph: ir.Graph, uses: list[tuple[ir.Node, int]]) -> ir.Node:
        position = {node: i for i, node in enumerate(graph)}
        local = [user for user, _ in uses if user in position]
        return min(local, key=position.__getitem__) if local else next(iter(graph))

    # -- helpers --------------------------------------------------------------------------

    def _param_initializers(self, params: QuantParams) -> tuple[ir.Value, ir.Value]:
        key = id(params)
        if key not in self.param_values:
            scale = self._initializer(params.scale.astype(np.float32), "scale")
            zp = self._initializer(params.zero_point, "zero_point")
            self.param_values[key] = (scale, zp)
        return self.param_values[key]

    def _dequantize_node(self, quantized: ir.Value, params: QuantParams, name: str) -> ir.Node:
        scale = self._initializer(params.scale.astype(np.float32), f"{name}_scale")
        zp = self._initializer(params.zero_point, f"{name}_zero_point")
        attrs = {"axis": params.axis} if params.axis is not None else {}
        out = ir.Value(name=self.names.fresh(name), type=ir.TensorType(ir.DataType.FLOAT),
                       shape=quantized.shape)
        return ir.node("DequantizeLinear", [quantized, scale, zp], attributes=attrs,
                       outputs=[out], name=self.names.fresh(f"{name}_node"))

    def _initializer(self, array: np.ndarray, name: str) -> ir.Value:
        return add_initializer(self.graph, array, self.names.fresh(name))

    def _drop_if_unused(self, value: ir.Value) -> None:
        if not value.uses() and value.is_initializer() and not value.is_graph_output():
            self.graph.initializers.pop(value.name, None)


def _widen_for_bias(node: ir.Node, plan: NodePlan, weight: QuantParams) -> QuantParams:
    """Weight parameters whose scale is large enough for the bias to fit INT32.

    The bias is stored as bias / (input scale x weight scale). A channel whose weights are
    all nearly zero (a dead channel after BatchNorm folding) gets a tiny weight scale, and
    its bias would overflow; its weight scale is raised just enough, which costs nothing
    since its weights round to zero either way.
    """
    bias_index, act_index, _ = plan.bias  # type: ignore[misc]
    act = node.inputs[act_index].meta.get(QUANT_PARAMS_KEY) if node.inputs[act_index] else None
    bias = node.inputs[bias_index]
    if act is None or bias is None or bias.const_value is None:
        return weight
    values = bias.const_value.numpy().astype(np.float64).reshape(-1)
    if values.size not in (1, weight.scale.size):
        return weight
    needed = np.abs(values) / (
        float(act.scale) * _BIAS_HEADROOM * _INT32_LIMIT)
    scale = weight.scale.astype(np.float64)
    widened = np.maximum(scale, needed if scale.ndim else needed.max())
    if np.array_equal(widened, scale):
        return weight
    return QuantParams(widened.astype(np.float32), weight.zero_point, weight.dtype,
                       weight.axis, weight.origin)


def _input_above_minimum(node: ir.Node, plan: NodePlan) -> bool:
    """Whether any activation input of ``node`` has a zero point above its type's minimum."""
    for index, value in enumerate(node.inputs):
        if value is None or index in plan.weights:
            continue
        params = value.meta.get(QUANT_PARAMS_KEY)
        low = params.dtype.range[0] if params is not None else 0
        if params is not None and params.dtype.bits == 8 and np.any(
            params.zero_point.astype(np.int64) > low
        ):
            return True
    return False
