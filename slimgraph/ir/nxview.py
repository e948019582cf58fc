"""A networkx view of a graph, for analyses that want graph algorithms (dominators,
reachability, longest paths) rather than a walk in node order."""

from __future__ import annotations

import networkx as nx
import onnx_ir as ir

__all__ = ["to_networkx"]


def to_networkx(graph: ir.Graph) -> nx.MultiDiGraph:
    """One networkx node per IR node, one edge per (producer, consumer, value) use.

    Graph inputs and initializers are not nodes; the view holds the IR objects themselves,
    so an analysis can go back to them. Edge attributes: ``value`` (the IR Value) and
    ``index`` (the input slot on the consumer). Subgraph nodes are not included: an If or
    Loop is one node here.
    """
    view = nx.MultiDiGraph(name=graph.name or "")
    for order, node in enumerate(graph):
        view.add_node(node, op_type=node.op_type, order=order)
    for node in graph:
        for index, value in enumerate(node.inputs):
            producer = value.producer() if value is not None else None
            if producer is not None and producer.graph is graph:
                view.add_edge(producer, node, value=value, index=index)
    return view
