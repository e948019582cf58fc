"""Small helpers that rewrites share: fresh names and new initializers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["NameSource", "add_initializer", "set_constant_input"]


class NameSource:
    """Fresh value and node names that collide with no name in ``graph`` or its subgraphs
    (pass the main graph: ONNX names must be unique across a whole model)."""

    def __init__(self, graph: ir.Graph) -> None:
        self.taken: set[str] = {v.name for v in graph.inputs if v.name}
        self.taken.update(graph.initializers)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            self.taken.update(v.name for v in node.outputs if v.name)
            if node.name:
                self.taken.add(node.name)
        for sub in graph.subgraphs():
            self.taken.update(sub.initializers)
            self.taken.update(v.name for v in sub.inputs if v.name)

    def fresh(self, stem: str) -> str:
        name, n = stem, 0
        while name in self.taken:
            n += 1
            name = f"{stem}_{n}"
        self.taken.add(name)
        return name


def add_initializer(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    """Register ``array`` as an initializer of ``graph`` named exactly ``name`` (take it from
    a :class:`NameSource`)."""
    # np.ascontiguousarray would turn a scalar into a 1-element vector.
    tensor = ir.tensor(np.array(array, order="C"), name=name)
    value = ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=tensor.shape,
                     const_value=tensor)
    graph.register_initializer(value)
    return value


def set_constant_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray,
                       names: NameSource) -> None:
    """Give input ``index`` of ``node`` the data ``array``: in place when nothing else reads
    the constant, else as a new initializer (another reader keeps the old data)."""
    value = node.inputs[index]
    alone = (value is not None and value.is_initializer() and len(value.uses()) == 1
             and not value.is_graph_output() and not value.is_graph_input())
    if alone:
        value.const_value = ir.tensor(array, name=value.name)
        value.shape = ir.Shape(array.shape)
        return
    stem = (value.name if value is not None else None) or "constant"
    node.replace_input_with(index, add_initializer(graph, array, names.fresh(stem)))
