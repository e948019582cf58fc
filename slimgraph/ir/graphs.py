"""Walking a model's graphs: the main graph and the subgraphs held by If, Loop and Scan."""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir

__all__ = ["all_graphs", "subgraph_holders", "subgraphs_of"]


def all_graphs(model: ir.Model) -> Iterator[ir.Graph]:
    """The main graph, then every subgraph, outer before inner."""
    yield model.graph
    yield from model.graph.subgraphs()


def subgraphs_of(node: ir.Node) -> tuple[ir.Graph, ...]:
    """The graphs held in ``node``'s attributes (If branches, Loop and Scan bodies)."""
    found: list[ir.Graph] = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            found.append(attr.as_graph())
        elif attr.type == ir.AttributeType.GRAPHS:
            found.extend(attr.as_graphs())
    return tuple(found)


def subgraph_holders(model: ir.Model) -> dict[int, ir.Node]:
    """The node holding each subgraph, keyed by ``id`` of the subgraph (onnx-ir does not link
    a subgraph back to its node)."""
    return {id(sub): node for node in ir.traversal.RecursiveGraphIterator(model.graph)
            for sub in subgraphs_of(node)}
