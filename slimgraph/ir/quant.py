"""Quantization vocabulary: integer types, schemes (how to quantize) and parameters (the numbers).

A :class:`QuantScheme` is what a rule or a spec asks for; :class:`QuantParams` is what
calibration turns it into for one tensor. Parameters are attached to a Value's ``meta`` under
:data:`QUANT_PARAMS_KEY`; they are data on the edge, not a new kind of edge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

__all__ = [
    "QUANT_PARAMS_KEY",
    "QuantDType",
    "QuantParams",
    "QuantScheme",
    "params_from_range",
    "params_from_weight",
]

QUANT_PARAMS_KEY = "slimgraph.quant_params"


class QuantDType(enum.Enum):
    """Integer types a tensor can be quantized to."""

    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"

    @property
    def numpy(self) -> type[np.integer]:
        return np.dtype(self.value).type

    @property
    def onnx(self) -> ir.DataType:
        return ir.DataType[self.name]

    @property
    def bits(self) -> int:
        return np.dtype(self.value).itemsize * 8

    @property
    def signed(self) -> bool:
        return self.value.startswith("int")

    @property
    def range(self) -> tuple[int, int]:
        info = np.iinfo(self.value)
        return int(info.min), int(info.max)

    def quant_range(self, *, symmetric: bool, reduce_range: bool = False) -> tuple[int, int]:
        """The integer range values are mapped onto.

        ``reduce_range`` drops one bit (7-bit values in 8 bits), which keeps the sums of
        pairs of products inside int16 on x86 CPUs without VNNI. Symmetric signed types
        give up their most negative value so that the range is centred on zero.
        """
        low, high = self.range
        if reduce_range:
            if self.signed:
                low, high = low // 2, high // 2
            else:
                high = high // 2
        if symmetric and self.signed:
            low = -high
        return low, high


@dataclass(frozen=True)
class QuantScheme:
    """How a tensor is to be quantized: its integer type, symmetry and granularity."""

    dtype: QuantDType
    symmetric: bool
    per_channel: bool = False
    reduce_range: bool = False

    def describe(self) -> str:
        parts = [
            self.dtype.value,
            "symmetric" if self.symmetric else "asymmetric",
            "per-channel" if self.per_channel else "per-tensor",
        ]
        if self.reduce_range:
            parts.append("reduced range")
        return " ".join(parts)


@dataclass(frozen=True, eq=False)
class QuantParams:
    """Scale and zero point of one quantized tensor; per-channel along ``axis`` when set."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: QuantDType
    axis: int | None = None
    # Where the numbers came from (a calibration method, "weight", "shared with x"): reports
    # and debugging only.
    origin: str = field(default="", compare=False)

    def same_numbers(self, other: QuantParams) -> bool:
        return (
            self.dtype == other.dtype
            and self.axis == other.axis
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """``x`` in integers, rounding half to even and saturating, as QuantizeLinear does."""
        scale, zp = self._broadcast(x.ndim)
        low, high = self.dtype.range
        q = np.rint(x.astype(np.float64) / scale) + zp
        return np.clip(q, low, high).astype(self.dtype.numpy)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale, zp = self._broadcast(q.ndim)
        return ((q.astype(np.float64) - zp) * scale).astype(np.float32)

    def _broadcast(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        scale = self.scale.astype(np.float64)
        zp = self.zero_point.astype(np.float64)
        if self.axis is None:
            return scale, zp
        shape = [1] * ndim
        shape[self.axis] = -1
        return scale.reshape(shape), zp.reshape(shape)


def params_from_range(
    low: np.ndarray | float,
    high: np.ndarray | float,
    scheme: QuantScheme,
    *,
    axis: int | None = None,
    origin: str = "",
) -> QuantParams:
    """Parameters that map ``[low, high]`` onto the scheme's integer range.

    The range is first widened to include zero, so that zero (padding, ReLU's floor) is
    exact. Symmetric schemes centre the range on zero.
    """
    low = np.minimum(np.asarray(low, dtype=np.float64), 0.0)
    high = np.maximum(np.asarray(high, dtype=np.float64), 0.0)
    qmin, qmax = scheme.dtype.quant_range(symmetric=scheme.symmetric,
                                          reduce_range=scheme.reduce_range)
    if scheme.symmetric:
        bound = np.maximum(np.abs(low), np.abs(high))
        scale = 2.0 * bound / (qmax - qmin)
        # Unsigned symmetric puts zero in the middle of the range.
        zp = np.full_like(bound, 0.0 if scheme.dtype.signed else (qmax + qmin + 1) // 2)
    else:
        scale = (high - low) / (qmax - qmin)
        zp = np.where(scale > 0, np.rint(qmin - low / np.where(scale > 0, scale, 1.0)), 0.0)
    tiny = np.finfo(np.float32).tiny
    scale = np.where(scale > tiny, scale, 1.0)  # an all-zero tensor still gets a valid scale
    zp = np.clip(zp, qmin, qmax)
    return QuantParams(
        scale=scale.astype(np.float32),
        zero_point=zp.astype(scheme.dtype.numpy),
        dtype=scheme.dtype,
        axis=axis,
        origin=origin,
    )


def params_from_weight(
    weight: np.ndarray, scheme: QuantScheme, *, axis: int | None
) -> QuantParams:
    """Parameters for a constant weight: per channel along ``axis`` when the scheme says so."""
    if scheme.per_channel:
        if axis is None:
            raise ValueError("per-channel weight quantization needs a channel axis")
        moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
        return params_from_range(
            moved.min(axis=1), moved.max(axis=1), scheme, axis=axis, origin="weight"
        )
    return params_from_range(weight.min(), weight.max(), scheme, origin="weight")
