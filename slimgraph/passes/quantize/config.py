"""What a quantization run asks for: model-wide schemes plus overrides by op type and node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import onnx_ir as ir

from slimgraph.ir.quant import QuantScheme

__all__ = ["OpOverride", "QuantConfig"]


@dataclass(frozen=True)
class OpOverride:
    """Changes to the defaults for some ops: keep them in float, or use other schemes."""

    quantize: bool = True
    activation: QuantScheme | None = None
    weight: QuantScheme | None = None
    # Why an op is kept in float, for the report.
    reason: str = "kept in float by the spec"


@dataclass(frozen=True)
class QuantConfig:
    """Model-wide schemes, then overrides by op type, then by node name (most specific wins)."""

    activation: QuantScheme
    weight: QuantScheme
    format: str = "qdq"
    by_op_type: Mapping[str, OpOverride] = field(default_factory=dict)
    by_node: Mapping[str, OpOverride] = field(default_factory=dict)
    # Whether a Relu/Clip right after a quantized op is absorbed into its output range.
    absorb_activations: bool = True
    # Give 7-bit weights to ops whose activation input has a zero point above the type's
    # minimum (x86 without VNNI saturates u8 x s8 pair sums on such inputs).
    saturation_guard: bool = False
    # Quantize only the weights of ops that have them; activations stay float.
    weight_only: bool = False

    def override_for(self, node: ir.Node) -> OpOverride:
        if node.name and node.name in self.by_node:
            return self.by_node[node.name]
        return self.by_op_type.get(node.op_type, OpOverride())

    def activation_for(self, node: ir.Node) -> QuantScheme:
        return self.override_for(node).activation or self.activation

    def weight_for(self, node: ir.Node) -> QuantScheme:
        return self.override_for(node).weight or self.weight

    def with_float(self, *, op_types: frozenset[str] = frozenset(),
                   nodes: frozenset[str] = frozenset(),
                   reason: str = "kept in float by the spec") -> QuantConfig:
        """A copy that also keeps ``op_types`` and ``nodes`` in float."""
        keep = OpOverride(quantize=False, reason=reason)
        by_op = dict(self.by_op_type) | dict.fromkeys(op_types, keep)
        by_node = dict(self.by_node) | dict.fromkeys(nodes, keep)
        return replace(self, by_op_type=by_op, by_node=by_node)
