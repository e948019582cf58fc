"""Turn requests into numbers: attach :class:`QuantParams` to every value that carries Q/DQ.

Calibrated values take their range from the calibration table through a range method
(min-max, percentile, ...); constants take it from their own data; values that share take
their source's parameters, the same object, so that the runtime sees equal scales.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from slimgraph.errors import PassError
from slimgraph.ir.graphs import all_graphs
from slimgraph.ir.quant import QUANT_PARAMS_KEY, QuantParams, QuantScheme, params_from_range
from slimgraph.ir.stats import CalibrationTable, TensorStats
from slimgraph.passes.quantize.plan import ACTIVATION_REQUEST_KEY, ActivationRequest

__all__ = ["AssignParams", "RangeMethod"]

# Chooses the clipping range of one tensor from its statistics.
RangeMethod = Callable[[TensorStats, QuantScheme], tuple[float, float]]


def minmax_range(stats: TensorStats, scheme: QuantScheme) -> tuple[float, float]:
    return stats.min, stats.max


class AssignParams(ir.passes.InPlacePass):
    """Attach parameters to every requested value; fails naming a value with no statistics."""

    def __init__(self, table: CalibrationTable, method: RangeMethod = minmax_range,
                 method_name: str = "minmax") -> None:
        super().__init__()
        self.table = table
        self.method = method
        self.method_name = method_name

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        pending: list[tuple[ir.Value, ActivationRequest]] = []
        for graph in all_graphs(model):
            values = list(graph.inputs) + list(graph.initializers.values())
            values += [v for node in graph for v in node.outputs]
            for value in values:
                request = value.meta.get(ACTIVATION_REQUEST_KEY)
                if request is None:
                    continue
                if request.share_with is None:
                    value.meta[QUANT_PARAMS_KEY] = self._own(value, request)
                else:
                    pending.append((value, request))
        for value, request in pending:
            source = request.share_with
            params = source.meta.get(QUANT_PARAMS_KEY) if source is not None else None
            if params is None:
                raise PassError(f"value {value.name!r} shares parameters with "
                                f"{source.name if source else None!r}, which has none")
            value.meta[QUANT_PARAMS_KEY] = params
        return ir.passes.PassResult(model, modified=False)

    def _own(self, value: ir.Value, request: ActivationRequest) -> QuantParams:
        if request.constant:
            data = value.const_value.numpy()
            return params_from_range(data.min(), data.max(), request.scheme, origin="constant")
        if value.name not in self.table:
            raise PassError(f"value {value.name!r} needs calibration statistics and has none")
        low, high = self.method(self.table[value.name], request.scheme)
        return params_from_range(low, high, request.scheme, origin=self.method_name)
