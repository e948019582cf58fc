"""Bring a model's default-domain opset up to the version quantization needs.

Per-channel QuantizeLinear/DequantizeLinear (the ``axis`` attribute) came in opset 13. Old
models (the ONNX model zoo's opset 8 MNIST, for one) are converted with ONNX's own version
converter; models at or above the version are left alone.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx import version_converter

from slimgraph.errors import ModelError

__all__ = ["MIN_OPSET", "UpgradeOpset"]

MIN_OPSET = 13


class UpgradeOpset(ir.passes.InPlacePass):
    """Convert the default domain to ``version`` when the model is older."""

    def __init__(self, version: int = MIN_OPSET) -> None:
        super().__init__()
        self.version = version

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        if current >= self.version:
            return ir.passes.PassResult(model, modified=False)
        proto = ir.serde.serialize_model(model)
        try:
            converted = version_converter.convert_version(proto, self.version)
        except (RuntimeError, onnx.checker.ValidationError) as exc:
            raise ModelError(
                f"model uses opset {current}; converting it to opset {self.version}, the "
                f"least that per-channel quantization needs, failed: {exc}"
            ) from exc
        _replace_contents(model, ir.serde.deserialize_model(converted))
        return ir.passes.PassResult(model, modified=True)


def _replace_contents(model: ir.Model, new: ir.Model) -> None:
    """Make ``model`` hold ``new``'s graph and opsets, keeping the object identity."""
    opsets = dict(new.opset_imports)
    model.graph = new.graph
    model.graph.opset_imports.clear()
    model.graph.opset_imports.update(opsets)
    model.ir_version = max(model.ir_version, new.ir_version)
