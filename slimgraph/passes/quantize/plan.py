"""Phase one of quantization: decide, per node and per value, what to quantize.

The pass walks every graph (subgraphs included) in topological order and applies the rule
table. It writes typed decisions into ``meta`` and changes no node:

* every node gets a :class:`NodePlan`: quantized or not, and why, with its weight and bias
  inputs;
* every value that will carry a QuantizeLinear/DequantizeLinear pair gets an
  :class:`ActivationRequest`: its scheme, and the value whose parameters it shares, if any.

The values that need calibration are those with requests of their own
(:func:`values_to_calibrate`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from slimgraph.ir.graphs import all_graphs, subgraph_holders
from slimgraph.ir.quant import QuantScheme
from slimgraph.passes.quantize.config import QuantConfig
from slimgraph.passes.quantize.rules import (
    ACTIVATION_FUSIONS,
    InputRole,
    OpKind,
    OpRule,
    OutputPolicy,
    rules_for,
)

__all__ = [
    "ACTIVATION_REQUEST_KEY",
    "NODE_PLAN_KEY",
    "ActivationRequest",
    "NodePlan",
    "PlanQuantization",
    "WeightRequest",
    "values_to_calibrate",
]

logger = logging.getLogger(__name__)

NODE_PLAN_KEY = "slimgraph.quant.node_plan"
ACTIVATION_REQUEST_KEY = "slimgraph.quant.activation"

_FLOAT_TYPES = frozenset({ir.DataType.FLOAT})


@dataclass(frozen=True, eq=False)
class ActivationRequest:
    """A value to carry Q/DQ: with its own calibrated parameters, or another value's."""

    scheme: QuantScheme
    share_with: ir.Value | None = None
    # A constant activation input (Add's addend): parameters come from its own data.
    constant: bool = False


@dataclass(frozen=True)
class WeightRequest:
    scheme: QuantScheme
    axis: int | None
    # Switch to 7-bit weights when the activation input turns out to have a zero point
    # above its type's minimum (known only once parameters are assigned).
    saturation_guard: bool = False


@dataclass(frozen=True, eq=False)
class NodePlan:
    """The decision for one node."""

    quantized: bool
    reason: str
    weights: Mapping[int, WeightRequest] = field(default_factory=dict)
    # Bias input index, and the (activation, weight) input indices whose scales multiply.
    bias: tuple[int, int, int] | None = None
    absorbed_into: ir.Node | None = None


class PlanQuantization(ir.passes.InPlacePass):
    """Attach a :class:`NodePlan` to every node and requests to the values to quantize."""

    def __init__(self, config: QuantConfig) -> None:
        super().__init__()
        self.config = config
        self.rules = rules_for(config.format)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        parents = subgraph_holders(model)
        for graph in all_graphs(model):
            _GraphPlanner(graph, self.config, self.rules,
                          observable=_in_if_branches(graph, model, parents)).run()
        return ir.passes.PassResult(model, modified=False)


def _in_if_branches(graph: ir.Graph, model: ir.Model, holders: Mapping[int, ir.Node]) -> bool:
    """Whether ``graph`` is the main graph or nested only in If branches, whose values
    calibration can read out (Loop and Scan bodies it cannot)."""
    while graph is not model.graph:
        holder = holders.get(id(graph))
        if holder is None or holder.op_type != "If" or holder.graph is None:
            return False
        graph = holder.graph
    return True


class _GraphPlanner:
    def __init__(self, graph: ir.Graph, config: QuantConfig, rules: Mapping[str, OpRule], *,
                 observable: bool) -> None:
        self.graph = graph
        # Calibration reads values out through graph outputs, which works in the main graph
        # and in If branches; ops inside Loop and Scan bodies stay in float.
        self.observable = observable
        self.config = config
        self.rules = rules
        self.absorbed: dict[ir.Node, ir.Node] = {}  # activation node -> producer
        self.deferred: list[tuple[ir.Node, ir.Value, QuantScheme]] = []

    def run(self) -> None:
        for node in self.graph:
            node.meta[NODE_PLAN_KEY] = self._plan(node)
        for node, value, scheme in self.deferred:
            if any(_consumes_quantized(user, value) for user in value.consumers()):
                value.meta[ACTIVATION_REQUEST_KEY] = ActivationRequest(scheme)
                logger.debug("%s: output %s quantized for its users", node.name, value.name)

    def _plan(self, node: ir.Node) -> NodePlan:
        if node in self.absorbed:
            return NodePlan(False, f"absorbed into the output range of {self.absorbed[node].name}",
                            absorbed_into=self.absorbed[node])
        rule = self.rules.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            return NodePlan(False, f"no integer kernel for {node.op_type} in this format")
        override = self.config.override_for(node)
        if not override.quantize:
            return NodePlan(False, override.reason)
        if self.config.weight_only:
            return self._weights_only(node, rule)
        if not self.observable:
            return NodePlan(False, "inside a Loop or Scan body, where calibration cannot "
                            "observe values")
        why_not = self._blocker(node, rule)
        if why_not:
            return NodePlan(False, why_not)
        return self._quantize(node, rule)

    def _weights_only(self, node: ir.Node, rule: OpRule) -> NodePlan:
        weights = {}
        for index, value in enumerate(node.inputs):
            role = rule.role(index)
            if (value is not None and value.const_value is not None
                    and role in (InputRole.WEIGHT, InputRole.WEIGHT_OR_ACTIVATION)
                    and value.dtype in _FLOAT_TYPES):
                weights[index] = self._weight_request(node, rule, value)
        if not weights:
            return NodePlan(False, "no constant weight to quantize")
        return NodePlan(True, "weights in INT8", weights=weights)

    def _blocker(self, node: ir.Node, rule: OpRule) -> str | None:
        """Why ``node`` cannot be quantized under ``rule``, or None when it can."""
        activations = []
        for index, value in enumerate(node.inputs):
            role = rule.role(index)
            if value is None or role is InputRole.IGNORE:
                continue
            if value.dtype not in _FLOAT_TYPES:
                if role in (InputRole.ACTIVATION, InputRole.WEIGHT_OR_ACTIVATION) or (
                    role is InputRole.WEIGHT
                ):
                    return f"input {index} is {value.dtype.name if value.dtype else 'untyped'}"
                continue
            constant = value.const_value is not None
            if role in (InputRole.WEIGHT, InputRole.BIAS) and not constant:
                return f"input {index} ({role.value}) is not a constant"
            if role is InputRole.ACTIVATION and not constant:
                activations.append(value)
            if role is InputRole.WEIGHT_OR_ACTIVATION and not constant:
                activations.append(value)
        if not activations:
            return "no activation input to quantize"
        if rule.kind is OpKind.FOLLOWER:
            first = activations[0] if rule.output is OutputPolicy.SHARED else None
            arriving = [v for v in activations if _arrives_quantized(v)]
            if (first is not None and not _arrives_quantized(first)) or not arriving:
                return "its input arrives in float; quantizing it alone would add conversions"
        return None

    def _quantize(self, node: ir.Node, rule: OpRule) -> NodePlan:
        act_scheme = self.config.activation_for(node)
        weights: dict[int, WeightRequest] = {}
        bias: tuple[int, int, int] | None = None
        first_activation: int | None = None
        for index, value in enumerate(node.inputs):
            role = rule.role(index)
            if value is None or role is InputRole.IGNORE:
                continue
            constant = value.const_value is not None
            if role is InputRole.BIAS:
                weight_index = next(i for i, r in enumerate(rule.inputs) if r is InputRole.WEIGHT)
                bias = (index, first_activation or 0, weight_index)
            elif role is InputRole.WEIGHT or (role is InputRole.WEIGHT_OR_ACTIVATION and constant):
                weights[index] = self._weight_request(node, rule, value)
            elif constant:
                _request(value, ActivationRequest(act_scheme, constant=True))
            else:
                first_activation = index if first_activation is None else first_activation
                if not _arrives_quantized(value):
                    _request(value, ActivationRequest(act_scheme))
        if bias is not None and bias[2] not in weights:
            bias = None  # a bias next to a float weight stays float
        self._plan_output(node, rule, act_scheme, first_activation or 0)
        return NodePlan(True, "quantized", weights=weights, bias=bias)

    def _weight_request(self, node: ir.Node, rule: OpRule, value: ir.Value) -> WeightRequest:
        scheme = self.config.weight_for(node)
        axis = None
        if scheme.per_channel and rule.weight_axis is not None:
            axis = rule.weight_axis(node)
            if axis < 0:
                axis += len(value.const_value.shape)
            if len(value.const_value.shape) < 2:
                axis = None
        if axis is None and scheme.per_channel:
            scheme = replace(scheme, per_channel=False)
        guard = self.config.saturation_guard and not scheme.reduce_range
        return WeightRequest(scheme, axis, saturation_guard=guard)

    def _plan_output(self, node: ir.Node, rule: OpRule, scheme: QuantScheme,
                     source_index: int) -> None:
        output = node.outputs[0]
        if rule.output is OutputPolicy.NONE:
            return
        if rule.output is OutputPolicy.SHARED:
            source = node.inputs[source_index]
            _request(output, ActivationRequest(scheme, share_with=_params_root(source)))
            return
        activation = self._absorbable_activation(node, rule)
        if activation is not None:
            self.absorbed[activation] = node
            asym = replace(scheme, symmetric=False)
            _request(activation.outputs[0], ActivationRequest(asym))
            return
        if rule.output is OutputPolicy.IF_CONSUMED:
            self.deferred.append((node, output, scheme))
            return
        _request(output, ActivationRequest(scheme))

    def _absorbable_activation(self, node: ir.Node, rule: OpRule) -> ir.Node | None:
        """The Relu/Clip right after ``node`` whose clipping the quantized range can do."""
        if not (rule.absorbs_activation and self.config.absorb_activations):
            return None
        if rule.output is not OutputPolicy.OWN:
            return None
        output = node.outputs[0]
        users = output.consumers()
        if len(users) != 1 or output.is_graph_output() or len(list(output.uses())) != 1:
            return None
        user = users[0]
        if user.op_type not in ACTIVATION_FUSIONS or user.domain not in ("", "ai.onnx"):
            return None
        if not self.config.override_for(user).quantize:
            return None
        if user.op_type == "Clip" and not _clip_admits_zero(user):
            return None
        return user


def _clip_admits_zero(node: ir.Node) -> bool:
    """Whether the Clip's bounds are constants around zero (the quantized range holds 0)."""
    bounds = list(node.inputs[1:3])
    low = bounds[0] if bounds else None
    high = bounds[1] if len(bounds) > 1 else None
    for value in (low, high):
        if value is not None and value.const_value is None:
            return False
    low_v = float(np.asarray(low.const_value.numpy())) if low is not None else -np.inf
    high_v = float(np.asarray(high.const_value.numpy())) if high is not None else np.inf
    return low_v <= 0.0 <= high_v


def _request(value: ir.Value, request: ActivationRequest) -> None:
    if ACTIVATION_REQUEST_KEY not in value.meta:
        value.meta[ACTIVATION_REQUEST_KEY] = request


def _arrives_quantized(value: ir.Value) -> bool:
    return ACTIVATION_REQUEST_KEY in value.meta


def _params_root(value: ir.Value) -> ir.Value:
    """The value whose calibrated parameters ``value`` uses (itself unless it shares)."""
    request = value.meta.get(ACTIVATION_REQUEST_KEY)
    while request is not None and request.share_with is not None:
        value = request.share_with
        request = value.meta.get(ACTIVATION_REQUEST_KEY)
    return value


def _consumes_quantized(user: ir.Node, value: ir.Value) -> bool:
    plan = user.meta.get(NODE_PLAN_KEY)
    return isinstance(plan, NodePlan) and plan.quantized and any(
        v is value and i not in plan.weights for i, v in enumerate(user.inputs)
    )


def values_to_calibrate(model: ir.Model) -> list[ir.Value]:
    """Values whose parameters come from calibration (requests of their own, not constants)."""
    found: list[ir.Value] = []
    seen: set[int] = set()
    for graph in all_graphs(model):
        candidates = list(graph.inputs) + [v for node in graph for v in node.outputs]
        for value in candidates:
            request = value.meta.get(ACTIVATION_REQUEST_KEY)
            if (request is not None and request.share_with is None and not request.constant
                    and id(value) not in seen):
                seen.add(id(value))
                found.append(value)
    return found
