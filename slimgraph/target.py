"""The CPU a model is compiled for, and the INT8 choices that run fast and exact on it.

The integer instructions decide what is fast and what is exact:

* x86 with VNNI (AVX512-VNNI or AVX-VNNI) or AMX multiplies unsigned 8-bit activations by
  signed 8-bit weights and accumulates in 32 bits: U8S8 at full range.
* x86 with AVX2 or AVX-512 but no VNNI uses ``vpmaddubsw``, which adds pairs of u8 x s8
  products in a 16-bit register and saturates when both are near full range
  (2 x 255 x 127 > 32767). Weights in 7 bits (``reduce_range``) keep the sum exact. It
  matters where the u8 input is large most of the time: an input whose zero point sits
  above 0 (a normalised image, anything signed), not a ReLU output, which is mostly small.
  Measured on CIFAR ResNet-20: only the first convolution loses accuracy to saturation, so
  the guard gives 7-bit weights to those layers alone and keeps 8 bits elsewhere.
* onnxruntime's x86 kernels take signed activations only for a few ops, so a QDQ model with
  INT8 activations leaves most convolutions in float there: activations are UINT8 on x86.
* ARM64 with the dot-product extension has fast signed kernels (``sdot``): S8S8.

A spec may name a target other than the machine it runs on; the choice and its reason go in
the report.
"""

from __future__ import annotations

import enum
import platform
from dataclasses import dataclass
from pathlib import Path

from slimgraph.errors import TargetError, closest
from slimgraph.ir.quant import QuantDType, QuantScheme

__all__ = ["Int8Class", "Target", "TargetChoice", "choose", "detect", "named"]


class Int8Class(enum.Enum):
    X86_AMX = "x86-amx"
    X86_VNNI = "x86-vnni"
    X86_AVX512 = "x86-avx512"
    X86_AVX2 = "x86-avx2"
    ARM64_DOTPROD = "arm64-dotprod"
    ARM64 = "arm64"
    GENERIC = "generic"


@dataclass(frozen=True)
class Target:
    """A CPU: its architecture, model name and the instruction-set flags that matter."""

    arch: str
    model: str
    flags: frozenset[str]
    detected: bool

    @property
    def int8_class(self) -> Int8Class:
        f = self.flags
        if self.arch in ("x86_64", "amd64"):
            if "amx_int8" in f:
                return Int8Class.X86_AMX
            if "avx512_vnni" in f or "avx_vnni" in f:
                return Int8Class.X86_VNNI
            if "avx512bw" in f:
                return Int8Class.X86_AVX512
            if "avx2" in f:
                return Int8Class.X86_AVX2
            return Int8Class.GENERIC
        if self.arch in ("aarch64", "arm64"):
            return Int8Class.ARM64_DOTPROD if "asimddp" in f else Int8Class.ARM64
        return Int8Class.GENERIC

    def describe(self) -> str:
        source = "this machine" if self.detected else "named in the spec"
        return f"{self.int8_class.value} ({self.model}, {source})"


@dataclass(frozen=True)
class TargetChoice:
    """Schemes and format chosen for a target, with the reason in words."""

    activation: QuantScheme
    weight: QuantScheme
    format: str
    reason: str
    # 7-bit weights where the input's zero point is above the integer type's minimum.
    saturation_guard: bool = False


_FLAGS_OF_INTEREST = frozenset({
    "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
    "amx_bf16", "fma", "f16c", "asimd", "asimddp", "i8mm", "sve", "bf16",
})

_NAMED_FLAGS: dict[Int8Class, tuple[str, frozenset[str]]] = {
    Int8Class.X86_AMX: ("x86_64", frozenset({"avx2", "avx512bw", "avx512_vnni", "amx_int8"})),
    Int8Class.X86_VNNI: ("x86_64", frozenset({"avx2", "avx512bw", "avx512_vnni"})),
    Int8Class.X86_AVX512: ("x86_64", frozenset({"avx2", "avx512bw"})),
    Int8Class.X86_AVX2: ("x86_64", frozenset({"avx2"})),
    Int8Class.ARM64_DOTPROD: ("aarch64", frozenset({"asimd", "asimddp"})),
    Int8Class.ARM64: ("aarch64", frozenset({"asimd"})),
    Int8Class.GENERIC: ("unknown", frozenset()),
}


def detect(cpuinfo: Path = Path("/proc/cpuinfo")) -> Target:
    """The machine this process runs on."""
    arch = platform.machine().lower()
    model, flags = "unknown CPU", set()
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model == "unknown CPU":
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return Target(arch, model, frozenset(flags & _FLAGS_OF_INTEREST), detected=True)


def named(name: str) -> Target:
    """A target by class name (``x86-vnni``, ``x86-avx2``, ``arm64-dotprod``...)."""
    by_name = {c.value: c for c in Int8Class}
    if name not in by_name:
        hint = closest(name, by_name)
        raise TargetError(
            f"quantization.target: unknown target {name!r}; expected 'auto' or one of "
            f"{sorted(by_name)}" + (f" (did you mean {hint!r}?)" if hint else "")
        )
    arch, flags = _NAMED_FLAGS[by_name[name]]
    return Target(arch, name, flags, detected=False)


def choose(target: Target) -> TargetChoice:
    """The fast and exact INT8 schemes and format for ``target``."""
    cls = target.int8_class
    u8 = QuantScheme(QuantDType.UINT8, symmetric=False)
    s8 = QuantScheme(QuantDType.INT8, symmetric=False)
    w8 = QuantScheme(QuantDType.INT8, symmetric=True, per_channel=True)
    if cls in (Int8Class.X86_AMX, Int8Class.X86_VNNI):
        return TargetChoice(u8, w8, "qdq", "VNNI multiplies u8 activations by s8 weights with "
                            "32-bit sums: U8S8 at full range")
    if cls in (Int8Class.X86_AVX2, Int8Class.X86_AVX512):
        return TargetChoice(u8, w8, "qdq", "no VNNI: the u8 x s8 instruction sums pairs in 16 "
                            "bits and saturates on large inputs; layers whose input zero point "
                            "is above 0 get 7-bit weights", saturation_guard=True)
    if cls is Int8Class.ARM64_DOTPROD:
        return TargetChoice(s8, w8, "qdq", "ARM dot-product kernels are signed: S8S8")
    if cls is Int8Class.ARM64:
        return TargetChoice(u8, w8, "qdq", "ARM without dot product: U8S8 through widening "
                            "multiplies, no saturation")
    return TargetChoice(u8, w8, "qdq", "unknown CPU: the portable U8S8 choice")
