"""Fold BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it.

The arithmetic and the pattern matching are onnxscript's rewrite rules; this pass applies
them to every graph, subgraphs included, and reports how many it folded. A BatchNorm whose
producer has non-constant weights, or whose producer's weights are shared with another node,
is left alone.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter.rules.common import _fuse_batchnorm

__all__ = ["FoldBatchNorm"]


class FoldBatchNorm(ir.passes.InPlacePass):
    """``BatchNormalization(Conv(x, W, b))`` becomes ``Conv(x, W', b')``."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        count = _fuse_batchnorm.rules.apply_to_model(model)
        return ir.passes.PassResult(model, modified=count > 0)
