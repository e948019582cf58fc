"""slimgraph's graph IR.

The core objects are onnx-ir's (the ONNX project's own IR): :class:`Model`, :class:`Graph`,
:class:`Node`, :class:`Value` (an edge: one producer, a list of uses), :class:`Tensor`,
:class:`Attr`, :class:`Shape`, :class:`DataType`. This package adds what compression needs
on top of them: quantization schemes and parameters attached to values, calibration
statistics, a verifier, a pass manager and a networkx view. It imports no frontend, pass or
backend.
"""

from __future__ import annotations

from onnx_ir import Attr, DataType, Graph, Model, Node, Shape, Tensor, Value

from slimgraph.ir.io import load, save, to_proto
from slimgraph.ir.nxview import to_networkx
from slimgraph.ir.pass_manager import PassManager, PassRecord, op_histogram
from slimgraph.ir.quant import (
    QUANT_PARAMS_KEY,
    QuantDType,
    QuantParams,
    QuantScheme,
    params_from_range,
    params_from_weight,
)
from slimgraph.ir.stats import CalibrationTable, Histogram, TensorStats
from slimgraph.ir.verifier import Problem, find_problems, verify

__all__ = [
    "QUANT_PARAMS_KEY",
    "Attr",
    "CalibrationTable",
    "DataType",
    "Graph",
    "Histogram",
    "Model",
    "Node",
    "PassManager",
    "PassRecord",
    "Problem",
    "QuantDType",
    "QuantParams",
    "QuantScheme",
    "Shape",
    "Tensor",
    "TensorStats",
    "Value",
    "find_problems",
    "load",
    "op_histogram",
    "params_from_range",
    "params_from_weight",
    "save",
    "to_networkx",
    "to_proto",
    "verify",
]
