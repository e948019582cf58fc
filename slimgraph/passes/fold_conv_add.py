"""Fold a constant per-channel Add after a Conv into the Conv's bias.

Exporters from some frameworks (CNTK, early Keras converters) write the bias as a separate
``Add``; a Conv with its bias inside is one integer kernel instead of two ops.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["FoldConvAdd"]


class FoldConvAdd(ir.passes.InPlacePass):
    """``Add(Conv(x, W[, b]), c)`` becomes ``Conv(x, W, b + c)`` when ``c`` is a constant
    that varies only along the channel axis."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = 0
        for graph in (model.graph, *model.graph.subgraphs()):
            for add in [n for n in graph if n.op_type == "Add" and n.domain in ("", "ai.onnx")]:
                folded += self._fold(graph, add)
        return ir.passes.PassResult(model, modified=folded > 0)

    def _fold(self, graph: ir.Graph, add: ir.Node) -> int:
        for conv_side in (0, 1):
            conv_out, addend = add.inputs[conv_side], add.inputs[1 - conv_side]
            conv = conv_out.producer() if conv_out is not None else None
            if conv is None or conv.op_type != "Conv" or conv.graph is not graph:
                continue
            if len(conv_out.uses()) != 1 or conv_out.is_graph_output():
                continue
            weight = conv.inputs[1]
            if weight is None or weight.const_value is None or addend.const_value is None:
                continue
            channels = weight.const_value.shape[0]
            per_channel = _as_channel_vector(addend.const_value.numpy(), channels,
                                             rank=len(weight.const_value.shape))
            if per_channel is None:
                continue
            old_bias = conv.inputs[2] if len(conv.inputs) > 2 else None
            if old_bias is not None and old_bias.const_value is None:
                return 0  # the bias is computed or a graph input: nothing to fold into
            self._rewrite(graph, conv, add, old_bias, per_channel)
            return 1
        return 0

    def _rewrite(self, graph: ir.Graph, conv: ir.Node, add: ir.Node,
                 old_bias: ir.Value | None, c: np.ndarray) -> None:
        dtype = conv.inputs[1].const_value.numpy().dtype
        base = old_bias.const_value.numpy() if old_bias is not None else 0.0
        bias = (base + c).astype(dtype)
        name = f"{conv.name or 'conv'}_bias_folded"
        while name in graph.initializers:
            name += "_"
        new_bias = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(bias.dtype)),
                            shape=ir.Shape([bias.shape[0]]), const_value=ir.tensor(bias, name=name))
        graph.register_initializer(new_bias)
        if len(conv.inputs) > 2:
            conv.replace_input_with(2, new_bias)
        else:
            conv.resize_inputs(3)
            conv.replace_input_with(2, new_bias)
        add.outputs[0].replace_all_uses_with(conv.outputs[0], replace_graph_outputs=True)
        if add.outputs[0].is_graph_output() is False and add.outputs[0].name:
            # Keep the Add's output name: it may be a name users look for in the graph.
            name_kept = add.outputs[0].name
            add.outputs[0].name = None
            conv.outputs[0].name = name_kept
        graph.remove(add, safe=True)


def _as_channel_vector(c: np.ndarray, channels: int, *, rank: int) -> np.ndarray | None:
    """``c`` as a length-``channels`` vector when it broadcasts along the channel axis only
    of an output of rank ``rank`` (``[N, C, *spatial]``)."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    vector = c.reshape(-1)
    if vector.size == 1:
        return np.full(channels, vector[0], dtype=c.dtype)
    return vector if vector.size == channels else None
