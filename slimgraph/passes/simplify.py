"""Pattern simplifications from onnxscript's rewriter that make graphs easier to quantize and
faster to run: no-ops removed, Pad folded into Conv, MatMul + Add into Gemm (rank 2), chains
of Reshape, Transpose, Cast and Relu/Clip collapsed."""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import RewriteRuleSet
from onnxscript.rewriter.rules import common as rules

__all__ = ["Simplify"]

_RULES = RewriteRuleSet([
    rules.dropout_inference_rule,
    rules.dropout_zero_rule,
    rules.add_0_rule,
    rules.sub_0_rule,
    rules.mul_by_1_rule,
    rules.div_by_1_rule,
    rules.no_op_cast_rule,
    rules.cast_cast_rule,
    rules.no_op_expand_rule,
    rules.no_op_transpose_rule,
    rules.transpose_transpose_rule,
    rules.reshape_reshape_rule,
    rules.unsqueeze_unsqueeze_rule,
    rules.normalize_pad_format_conv_rule,
    rules.fuse_pad_into_conv_rule,
    rules.matmul_add_to_gemm_rule,
    rules.transpose_b_matmul_add_to_gemm_rule,
    rules.successive_relu_rule,
    rules.successive_clip_rule,
    rules.successive_relu_clip_rule,
    rules.successive_clip_relu_rule,
])


class Simplify(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        count = _RULES.apply_to_model(model)
        return ir.passes.PassResult(model, modified=count > 0)
