"""What tuning searches over: candidates (which ops stay in FP32, which range method) and the
space they are drawn from (the quantizable nodes of a model, their op types, FLOPs and
residual blocks)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

__all__ = ["Candidate", "QuantizableNode", "TuningSpace"]


@dataclass(frozen=True)
class Candidate:
    """One configuration to try, as changes to the model-wide defaults.

    ``float_nodes`` and ``float_op_types`` stay in FP32; ``method`` picks activation ranges.
    ``label`` says, for the report, what this candidate changes.
    """

    float_nodes: frozenset[str] = frozenset()
    float_op_types: frozenset[str] = frozenset()
    method: str = "minmax"
    label: str = "default"
    # Why each node or op type went to FP32, for the report; not part of the identity.
    reasons: tuple[tuple[str, str], ...] = ()

    def key(self) -> str:
        """A stable identity, the same across runs (used to resume from a workspace)."""
        payload = json.dumps([sorted(self.float_nodes), sorted(self.float_op_types),
                              self.method])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def with_float(self, nodes: Iterable[str] = (), op_types: Iterable[str] = (), *,
                   label: str, reason: str | None = None) -> Candidate:
        """Also keep ``nodes`` and ``op_types`` in FP32; ``reason`` (default: the label) is
        what the report gives for each of them."""
        nodes, op_types = frozenset(nodes), frozenset(op_types)
        why = reason or f"kept in FP32 by tuning for accuracy ({label})"
        known = dict(self.reasons)
        added = tuple((name, why) for name in sorted(nodes | op_types)
                      if name not in known and name not in self.float_nodes
                      and name not in self.float_op_types)
        return Candidate(self.float_nodes | nodes, self.float_op_types | op_types,
                         self.method, label, self.reasons + added)

    def with_method(self, method: str, *, label: str) -> Candidate:
        return Candidate(self.float_nodes, self.float_op_types, method, label, self.reasons)

    def reason_for(self, name: str) -> str:
        """Why the node or op type ``name`` is in FP32 in this candidate."""
        return dict(self.reasons).get(name, "kept in FP32 by tuning")

    def to_json(self) -> dict[str, object]:
        return {"float_nodes": sorted(self.float_nodes),
                "float_op_types": sorted(self.float_op_types),
                "method": self.method, "label": self.label,
                "reasons": [list(pair) for pair in self.reasons]}

    @classmethod
    def from_json(cls, data: dict) -> Candidate:  # type: ignore[type-arg]
        return cls(frozenset(data["float_nodes"]), frozenset(data["float_op_types"]),
                   str(data["method"]), str(data["label"]),
                   tuple((str(a), str(b)) for a, b in data.get("reasons", ())))


@dataclass(frozen=True)
class QuantizableNode:
    name: str
    op_type: str
    # Multiply-accumulates per sample (0 for ops that only move data), for ordering ops by
    # how much their integer kernels can save.
    macs: int


@dataclass(frozen=True)
class TuningSpace:
    """The nodes a default plan quantizes, in graph order, and the blocks they form."""

    nodes: tuple[QuantizableNode, ...]
    blocks: tuple[tuple[str, ...], ...]
    methods: tuple[str, ...]
    seed: int = 0
    by_name: dict[str, QuantizableNode] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.by_name.update({n.name: n for n in self.nodes})

    @property
    def op_types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n.op_type for n in self.nodes))

    def names(self, op_type: str | None = None) -> list[str]:
        return [n.name for n in self.nodes if op_type is None or n.op_type == op_type]

    def heaviest_first(self) -> list[str]:
        return [n.name for n in sorted(self.nodes, key=lambda n: -n.macs)]


def build_space(model: ir.Model, quantized: Sequence[ir.Node], methods: Sequence[str],
                seed: int = 0) -> TuningSpace:
    """The space of ``model`` (cleaned FP32, shapes inferred) given the nodes that the
    default plan quantizes."""
    nodes = tuple(QuantizableNode(n.name or "", n.op_type, _macs(n)) for n in quantized
                  if n.name)
    return TuningSpace(nodes, _residual_blocks(model, {n.name for n in nodes}),
                       tuple(methods), seed)


def _macs(node: ir.Node) -> int:
    """Multiply-accumulates per sample of a Conv, Gemm or MatMul from static shapes; 0 when
    shapes are unknown or for other ops."""
    out = node.outputs[0].shape if node.outputs else None
    if out is None or node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return 0
    dims = [d if isinstance(d, int) else 1 for d in out.dims]
    per_sample = int(np.prod(dims[1:])) if dims else 0
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None or weight.shape is None:
        return per_sample
    wdims = [d if isinstance(d, int) else 1 for d in weight.shape.dims]
    if node.op_type in ("Conv", "ConvTranspose"):
        return per_sample * int(np.prod(wdims[1:]))
    k = wdims[0] if node.op_type == "MatMul" or not _trans_b(node) else wdims[-1]
    if node.op_type == "MatMul" and len(wdims) >= 2:
        k = wdims[-2]
    return per_sample * int(k)


def _trans_b(node: ir.Node) -> bool:
    attr = node.attributes.get("transB")
    return bool(attr.as_int()) if attr is not None else False


def _residual_blocks(model: ir.Model, quantizable: set[str]) -> tuple[tuple[str, ...], ...]:
    """Quantizable nodes grouped into blocks that end at a residual merge: an Add of two
    computed values (ResNet blocks, transformer sub-layers)."""
    blocks: list[tuple[str, ...]] = []
    current: list[str] = []
    for node in model.graph:
        if node.name in quantizable:
            current.append(node.name)
        if _is_residual_merge(node) and current:
            blocks.append(tuple(current))
            current = []
    if current:
        blocks.append(tuple(current))
    return tuple(blocks)


def _is_residual_merge(node: ir.Node) -> bool:
    if node.op_type != "Add" or len(node.inputs) != 2:
        return False
    return all(v is not None and v.const_value is None and v.producer() is not None
               for v in node.inputs)
