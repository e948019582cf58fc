"""Per-op quantization rules: what each operator wants quantized, declared as data.

A rule never edits the graph. It says, for one op type, which inputs are activations,
which are weights (and along which axis their channels run), which is a bias, and what
happens to the output: quantized with its own parameters, sharing its input's parameters,
quantized only when a consumer wants it, or left in float. The planning pass reads these
rules; the insertion pass materialises the Q/DQ nodes.

The table is keyed by op type, one table per target format; adding an op is one entry. Each
entry's comment gives the backend reason when it is not obvious.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import onnx_ir as ir

__all__ = [
    "ACTIVATION_FUSIONS",
    "InputRole",
    "OpKind",
    "OpRule",
    "OutputPolicy",
    "rules_for",
]


class InputRole(enum.Enum):
    ACTIVATION = "activation"  # quantized with calibrated (or shared) parameters
    WEIGHT = "weight"  # a constant, quantized from its own values, per channel if asked
    BIAS = "bias"  # a constant, INT32 with scale = input scale x weight scale
    WEIGHT_OR_ACTIVATION = "weight or activation"  # MatMul's B: constant or not
    IGNORE = "ignore"  # shapes, indices, axes: never quantized


class OutputPolicy(enum.Enum):
    OWN = "own"  # quantized with its own calibrated parameters
    SHARED = "shared"  # same parameters as input 0: the op only moves or selects values
    IF_CONSUMED = "if consumed"  # quantized only when a quantized op consumes it
    NONE = "none"  # left in float


class OpKind(enum.Enum):
    # Worth quantizing on its own: integer kernels make it faster.
    COMPUTE = "compute"
    # Worth quantizing only when its input already arrives quantized; alone it would only add
    # conversions.
    FOLLOWER = "follower"


WeightAxis = Callable[[ir.Node], int]


@dataclass(frozen=True)
class OpRule:
    """What one op type wants; see the module docstring."""

    inputs: tuple[InputRole, ...]
    output: OutputPolicy
    kind: OpKind = OpKind.COMPUTE
    weight_axis: WeightAxis | None = None
    # Whether a Relu or Clip right after the op can be absorbed into its output quantization
    # (the runtime drops the activation when the quantized range already clips).
    absorbs_activation: bool = False
    # Input indices that must all carry the same parameters for the integer kernel (none
    # today; Concat rescales its inputs itself).
    notes: str = field(default="", compare=False)

    def role(self, index: int) -> InputRole:
        if index < len(self.inputs):
            return self.inputs[index]
        return InputRole.IGNORE


def _conv_axis(node: ir.Node) -> int:
    return 0  # Conv weights are [out_channels, in_channels / group, *kernel]


def _conv_transpose_axis(node: ir.Node) -> int:
    return 1  # ConvTranspose weights are [in_channels, out_channels / group, *kernel]


def _gemm_axis(node: ir.Node) -> int:
    trans_b = node.attributes.get("transB")
    return 0 if trans_b is not None and trans_b.as_int() else 1


def _matmul_axis(node: ir.Node) -> int:
    return -1  # B is [..., K, N]: output channels run along the last axis


A, W, B, X = InputRole.ACTIVATION, InputRole.WEIGHT, InputRole.BIAS, InputRole.IGNORE
WA = InputRole.WEIGHT_OR_ACTIVATION

_FOLLOW_SHARED = OpRule((A,), OutputPolicy.SHARED, OpKind.FOLLOWER)
_FOLLOW_SHARED_WITH_SHAPE = OpRule((A, X, X, X, X), OutputPolicy.SHARED, OpKind.FOLLOWER)

# onnxruntime, CPU: the QDQ graph is fused into QLinear*/QGemm/MatMulInteger* kernels by the
# session's graph optimizer. Ops not listed run in float between DequantizeLinear and
# QuantizeLinear.
_ORT_QDQ: dict[str, OpRule] = {
    "Conv": OpRule((A, W, B), OutputPolicy.OWN, weight_axis=_conv_axis, absorbs_activation=True),
    "ConvTranspose": OpRule(
        (A, W, B), OutputPolicy.OWN, weight_axis=_conv_transpose_axis, absorbs_activation=True
    ),
    # QGemm can write float directly, so its output is quantized only for a quantized user.
    "Gemm": OpRule((A, W, B), OutputPolicy.IF_CONSUMED, weight_axis=_gemm_axis,
                   absorbs_activation=True),
    # Without a QuantizeLinear after it, MatMul becomes MatMulIntegerToFloat.
    "MatMul": OpRule((A, WA), OutputPolicy.IF_CONSUMED, weight_axis=_matmul_axis,
                     absorbs_activation=True),
    # QLinearAdd/QLinearMul pay off only on integer inputs; from float they add conversions.
    "Add": OpRule((A, A), OutputPolicy.OWN, OpKind.FOLLOWER, absorbs_activation=True),
    "Mul": OpRule((A, A), OutputPolicy.OWN, OpKind.FOLLOWER),
    "Concat": OpRule((A,) * 64, OutputPolicy.OWN, OpKind.FOLLOWER),
    "GlobalAveragePool": OpRule((A,), OutputPolicy.OWN, OpKind.FOLLOWER),
    "AveragePool": OpRule((A,), OutputPolicy.OWN, OpKind.FOLLOWER),
    # Max of integers is the integer of the max when the scale is positive.
    "MaxPool": _FOLLOW_SHARED,
    "Reshape": OpRule((A, X), OutputPolicy.SHARED, OpKind.FOLLOWER),
    "Flatten": _FOLLOW_SHARED,
    "Transpose": _FOLLOW_SHARED,
    "Squeeze": OpRule((A, X), OutputPolicy.SHARED, OpKind.FOLLOWER),
    "Unsqueeze": OpRule((A, X), OutputPolicy.SHARED, OpKind.FOLLOWER),
    "Slice": _FOLLOW_SHARED_WITH_SHAPE,
    # The ORT lowering moves Pad onto the integers (padding with the zero point), which ORT's
    # own QDQ fusion does not do.
    "Pad": OpRule((A, X, X, X), OutputPolicy.SHARED, OpKind.FOLLOWER),
    "Resize": OpRule((A, X, X, X), OutputPolicy.SHARED, OpKind.FOLLOWER),
    "Expand": OpRule((A, X), OutputPolicy.SHARED, OpKind.FOLLOWER),
    "Tile": OpRule((A, X), OutputPolicy.SHARED, OpKind.FOLLOWER),
    "Gather": OpRule((A, X), OutputPolicy.SHARED, OpKind.FOLLOWER),
    # QLinearSoftmax pays only between integer ops (attention scores feeding a quantized
    # MatMul); its output is [0, 1] with its own parameters.
    "Softmax": OpRule((A,), OutputPolicy.OWN, OpKind.FOLLOWER),
    "Sigmoid": OpRule((A,), OutputPolicy.OWN, OpKind.FOLLOWER),
    "LeakyRelu": OpRule((A,), OutputPolicy.OWN, OpKind.FOLLOWER),
}

_TABLES: Mapping[str, Mapping[str, OpRule]] = {"qdq": _ORT_QDQ, "qoperator": _ORT_QDQ}

# Activations a producer can absorb: the quantized range of its output does the clipping.
ACTIVATION_FUSIONS = frozenset({"Relu", "Clip"})


def rules_for(fmt: str) -> Mapping[str, OpRule]:
    """The rule table of a target format (``qdq`` or ``qoperator``)."""
    try:
        return _TABLES[fmt]
    except KeyError:
        raise ValueError(f"no quantization rules for format {fmt!r}; known: {sorted(_TABLES)}"
                         ) from None
