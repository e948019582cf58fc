"""The clean-up pipeline every model goes through before compression.

Real exported models keep weights in Constant nodes and carry identities, shape arithmetic
and BatchNorms that make quantization harder and inference slower. Clean-up lifts constants
to initializers (so weights are recognised as weights, in subgraphs too), folds what is
constant, folds BatchNorm into the op before it, and drops identities and dead nodes.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer._constant_folding import FoldConstantsPass

from slimgraph.passes.fold_batchnorm import FoldBatchNorm
from slimgraph.passes.fold_conv_add import FoldConvAdd
from slimgraph.passes.residual_sum import ResidualAddAsSum
from slimgraph.passes.simplify import Simplify
from slimgraph.passes.upgrade_opset import UpgradeOpset

__all__ = ["cleanup_passes"]


def cleanup_passes(*, min_opset: int = 13, cpu_only: bool = False) -> list[ir.passes.PassBase]:
    """Clean-up passes in the order they run; each is named in the log by its class.

    ``cpu_only`` (the model runs on onnxruntime's CPU provider alone) adds the rewrites that
    keep that provider off fusions it runs slower than the unfused ops.
    """
    cpu_rewrites: list[ir.passes.PassBase] = [ResidualAddAsSum()] if cpu_only else []
    return [
        UpgradeOpset(min_opset),
        # Models from before ONNX IR 4 list every weight as a graph input too; as inputs
        # they could be overridden at run time, so nothing could treat them as constants.
        common.RemoveInitializersFromInputsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        FoldConstantsPass(shape_inference=True, input_size_limit=1 << 20,
                          output_size_limit=1 << 20),
        FoldBatchNorm(),
        FoldConvAdd(),
        Simplify(),
        *cpu_rewrites,
        common.IdentityEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.ShapeInferencePass(),
    ]
