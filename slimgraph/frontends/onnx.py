"""The ONNX frontend: a path or a ``ModelProto`` in, the IR out."""

from __future__ import annotations

import os

import onnx
import onnx_ir as ir

from slimgraph.ir import io

__all__ = ["lift_onnx"]


def lift_onnx(source: str | os.PathLike[str] | onnx.ModelProto) -> ir.Model:
    """Lift an ONNX model. External data stays on disk, memory-mapped when read."""
    return io.load(source)
