"""Peer INT8 quantizers: what other tools make of the same FP32 ONNX model and calibration data.

Each peer takes the FP32 model's path, the caller's calibration feeds (dicts of input name to
array, one batch each) and an output path. It returns the output path once the INT8 model is
written and loads in onnxruntime, or a :class:`PeerFailure`: a peer that breaks is a row of
the comparison, not the end of it. Every peer reads the feeds once, so a caller that gives the
same feeds to several peers passes a list, not a generator.

The peers:

* ``ort_static_defaults``: ``quantize_static(model, out, reader)`` and nothing else, which is
  what a user who trusts the defaults gets: QDQ, INT8 activations and weights, per tensor,
  MinMax, full-range weights. ORT's guide suggests ``quant_pre_process`` as a separate, optional
  step, so it is not run here.
* ``ort_static_best``: ORT's own advice for the CPU in ``quantize_static``'s docstring, checked
  by measurement on AVX2 (Zen 3, onnxruntime 1.32).
* ``ort_dynamic``: ``quantize_dynamic``, ORT's fastest choice for transformers on that machine.
* ``nncf_quantize``: ``nncf.quantize`` with its defaults.

Models over 2 GB (external data) are out of scope: the peers load and save single files.
"""

from __future__ import annotations

import logging
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from slimgraph.target import Int8Class, Target, detect

if TYPE_CHECKING:
    import nncf

__all__ = [
    "OrtCpuSettings",
    "PeerFailure",
    "nncf_quantize",
    "ort_cpu_settings",
    "ort_dynamic",
    "ort_static_best",
    "ort_static_defaults",
]

logger = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]

# Both are ORT's defaults, written out because they were measured (ResNet-20, AVX2, INT8 time
# over FP32 time): symmetric activations give a ReLU a uint8 zero point of 128, so it cannot be
# folded into the Q before it and stays a float island (0.76 against 0.63); keeping removable
# activations leaves a DQ -> Q requantisation at every ReLU (0.68).
_BEST_STATIC_EXTRA_OPTIONS = {"ActivationSymmetric": False, "QDQKeepRemovableActivations": False}


@dataclass(frozen=True)
class PeerFailure:
    """A peer that did not produce a model: the exception's type, first line and traceback."""

    peer: str
    error: str
    message: str
    traceback: str

    def __str__(self) -> str:
        return f"{self.peer} failed: {self.error}: {self.message}"


@dataclass(frozen=True)
class OrtCpuSettings:
    """The activation type and weight range ORT advises for a CPU class, and why."""

    activation_type: QuantType
    reduce_range: bool
    reason: str


def ort_cpu_settings(target: Target) -> OrtCpuSettings:
    """ORT's advice for ``target``, from ``quantize_static``'s docstring in onnxruntime 1.32."""
    cls = target.int8_class
    if cls in (Int8Class.ARM64, Int8Class.ARM64_DOTPROD):
        return OrtCpuSettings(QuantType.QInt8, False, "ARM: signed activations, full range")
    if cls in (Int8Class.X86_VNNI, Int8Class.X86_AMX):
        return OrtCpuSettings(QuantType.QUInt8, False, "x86 with VNNI: U8S8 sums in 32 bits")
    if target.arch in ("x86_64", "amd64"):
        return OrtCpuSettings(
            QuantType.QUInt8,
            True,
            "x86 without VNNI: U8S8 sums pairs in 16 bits and saturates, 7-bit weights avoid it",
        )
    return OrtCpuSettings(QuantType.QUInt8, False, "unknown CPU: U8S8, full range")


def ort_static_defaults(fp32: Path, calib: Iterable[Feeds], out: Path) -> Path | PeerFailure:
    """``quantize_static`` with every default: QDQ, S8 activations and weights, per tensor."""

    def work() -> None:
        quantize_static(str(fp32), str(out), _Reader(calib))

    return _attempt("ort-static-defaults", out, work, "QDQ S8S8 per-tensor MinMax")


def ort_static_best(
    fp32: Path, calib: Iterable[Feeds], out: Path, target: Target | None = None
) -> Path | PeerFailure:
    """``quant_pre_process``, then ``quantize_static`` with QDQ, ORT's activation type and
    weight range for ``target`` (this machine by default), INT8 weights per channel, MinMax.

    The measured best recipe on AVX2 also rewrites the float Pad of option-A shortcuts into an
    integer Pad by hand (about 1 % faster on ResNet-20); that is an edit of ORT's output, not
    one of its settings, so it is left out.
    """
    settings = ort_cpu_settings(target or detect())

    def work() -> None:
        with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            _pre_process(fp32, prepared)
            quantize_static(
                str(prepared),
                str(out),
                _Reader(calib),
                quant_format=QuantFormat.QDQ,
                activation_type=settings.activation_type,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=settings.reduce_range,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options=dict(_BEST_STATIC_EXTRA_OPTIONS),
            )

    weights = "7-bit" if settings.reduce_range else "8-bit"
    described = (
        f"QDQ {settings.activation_type.name} activations, INT8 {weights} weights "
        f"per-channel, MinMax ({settings.reason})"
    )
    return _attempt("ort-static-best", out, work, described)


def ort_dynamic(fp32: Path, out: Path, target: Target | None = None) -> Path | PeerFailure:
    """``quant_pre_process``, then ``quantize_dynamic`` with INT8 weights per tensor and ORT's
    weight range for ``target`` (this machine by default).

    Measured on a BERT-like layer (AVX2): per channel is no faster, and 7-bit weights remove
    the saturation of dynamic activations, whose zero point sits near 128.
    """
    settings = ort_cpu_settings(target or detect())

    def work() -> None:
        with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            _pre_process(fp32, prepared)
            quantize_dynamic(
                str(prepared),
                str(out),
                weight_type=QuantType.QInt8,
                per_channel=False,
                reduce_range=settings.reduce_range,
            )

    weights = "7-bit" if settings.reduce_range else "8-bit"
    described = f"dynamic QUInt8 activations, INT8 {weights} weights per-tensor ({settings.reason})"
    return _attempt("ort-dynamic", out, work, described)


def nncf_quantize(
    fp32: Path, calib: Iterable[Feeds], out: Path, *, model_type: nncf.ModelType | None = None
) -> Path | PeerFailure:
    """``nncf.quantize`` on the ONNX model with its default preset, on every calibration feed.

    ``subset_size`` is set to the number of feeds so that NNCF sees the same data as the ORT
    peers (its default takes at most 300). Pass ``nncf.ModelType.TRANSFORMER`` for
    transformers.
    """

    def work() -> None:
        import nncf
        import onnx

        feeds = [dict(f) for f in calib]
        quantized = nncf.quantize(
            onnx.load(str(fp32)),
            nncf.Dataset(feeds),
            model_type=model_type,
            subset_size=len(feeds),
        )
        onnx.save(quantized, str(out))

    kind = "transformer" if model_type is not None else "default"
    return _attempt("nncf", out, work, f"default preset, model type {kind}")


class _Reader(CalibrationDataReader):
    """ORT's calibration reader over the caller's feeds, read once."""

    def __init__(self, feeds: Iterable[Feeds]) -> None:
        self._feeds: Iterator[Feeds] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        return None if feed is None else dict(feed)


def _pre_process(fp32: Path, prepared: Path) -> None:
    """``quant_pre_process``; when its symbolic shape inference breaks on the model (it does
    on the Expand of torch-exported attention masks), again with ``skip_symbolic_shape``, the
    switch ORT provides for such models, so that the optimisation step still runs."""
    try:
        quant_pre_process(str(fp32), str(prepared))
    except Exception as exc:  # onnxruntime's inference raises whatever Python raises inside
        logger.info("quant_pre_process: symbolic shape inference failed (%s: %s); again "
                    "with skip_symbolic_shape=True", type(exc).__name__, exc)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)


def _attempt(peer: str, out: Path, work: Callable[[], None], settings: str) -> Path | PeerFailure:
    """Run one peer; its output must exist and load in onnxruntime. Never raises ``Exception``."""
    import onnxruntime as ort

    start = time.perf_counter()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work()
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        failure = PeerFailure(
            peer, type(exc).__name__, lines[0] if lines else "", traceback.format_exc()
        )
        logger.warning("%s (%s) after %.2f s", failure, settings, time.perf_counter() - start)
        return failure
    logger.info("%s: %s -> %s in %.2f s", peer, settings, out, time.perf_counter() - start)
    return out
