"""The IR's invariants, checked, with messages that say what is wrong and where.

A well-formed model has, in every graph and subgraph:

* one producer per value name, and no name reused in an enclosing scope;
* no dangling values: every input of a node is a graph input, an initializer, or the output
  of a node that is still in this graph or an enclosing one;
* nodes in topological order, and no cycles;
* graph outputs that something produces;
* initializers whose data agree with their declared type and shape;
* input and output counts within the operator's schema;
* quantization parameters (when attached) with finite positive scales and zero points that
  fit their integer type.

``deep=True`` also runs ONNX type and shape inference in strict mode, which checks every
node's input types against its schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import networkx as nx
import numpy as np
import onnx
import onnx_ir as ir

from slimgraph.errors import VerificationError
from slimgraph.ir.graphs import subgraphs_of
from slimgraph.ir.quant import QUANT_PARAMS_KEY, QuantParams

__all__ = ["Problem", "find_problems", "verify"]


@dataclass(frozen=True)
class Problem:
    """One broken invariant: where it is (a node, value or graph) and what is wrong."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def verify(model: ir.Model, *, deep: bool = False) -> None:
    """Raise :class:`VerificationError` listing every broken invariant of ``model``."""
    problems = find_problems(model, deep=deep)
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise VerificationError(
            f"model {model.graph.name or '<unnamed>'!r} is malformed, "
            f"{len(problems)} problem(s):\n  {shown}{more}"
        )


def find_problems(model: ir.Model, *, deep: bool = False) -> list[Problem]:
    """Every broken invariant of ``model``, in graph order; empty when it is well formed."""
    _link_subgraphs(model.graph)
    problems = list(_check_graph(model.graph, outer_names=frozenset(), opsets=model.opset_imports))
    if deep and not problems:
        problems.extend(_check_inference(model))
    return problems


def _describe_node(node: ir.Node) -> str:
    return f"node {node.name or '<unnamed>'!r} ({node.op_type})"


def _describe_graph(graph: ir.Graph) -> str:
    return f"graph {graph.name or '<unnamed>'!r}"


def _check_graph(
    graph: ir.Graph, *, outer_names: frozenset[str], opsets: dict[str, int]
) -> Iterator[Problem]:
    yield from _check_names(graph, outer_names)
    yield from _check_initializers(graph)
    yield from _check_edges(graph)
    yield from _check_order(graph)
    yield from _check_outputs(graph)
    yield from _check_schemas(graph, opsets)
    yield from _check_quant_params(graph)
    scope = outer_names | _names_defined(graph)
    for node in graph:
        for sub in subgraphs_of(node):
            yield from _check_graph(sub, outer_names=scope, opsets=opsets)


def _names_defined(graph: ir.Graph) -> set[str]:
    names = {v.name for v in graph.inputs if v.name}
    names.update(name for name in graph.initializers if name)
    for node in graph:
        names.update(v.name for v in node.outputs if v.name)
    return names


def _check_names(graph: ir.Graph, outer_names: frozenset[str]) -> Iterator[Problem]:
    owners: dict[str, str] = {}

    def claim(name: str | None, owner: str) -> Iterator[Problem]:
        if not name:
            return
        if name in owners and owners[name] != owner:
            yield Problem(owner, f"value {name!r} is also defined by {owners[name]}")
        elif name in outer_names:
            yield Problem(owner, f"value {name!r} shadows a value of an enclosing graph")
        owners.setdefault(name, owner)

    for value in graph.inputs:
        yield from claim(value.name, f"input of {_describe_graph(graph)}")
    for name, value in graph.initializers.items():
        if value.is_graph_input():
            continue  # an input with a default value is one value, not two
        yield from claim(name, f"initializer of {_describe_graph(graph)}")
    for node in graph:
        for value in node.outputs:
            yield from claim(value.name, _describe_node(node))


def _check_initializers(graph: ir.Graph) -> Iterator[Problem]:
    for name, value in graph.initializers.items():
        where = f"initializer {name!r}"
        tensor = value.const_value
        if tensor is None:
            yield Problem(where, "has no data")
            continue
        if value.dtype is not None and value.dtype != tensor.dtype:
            yield Problem(where, f"declared {value.dtype.name}, data is {tensor.dtype.name}")
        declared = value.shape
        if declared is not None and declared.is_static() and (
            tuple(declared.numpy()) != tuple(tensor.shape.numpy())
        ):
            yield Problem(
                where,
                f"declared shape {list(declared.numpy())}, "
                f"data has shape {list(tensor.shape.numpy())}",
            )


_ENCLOSING = "slimgraph.enclosing_graph"


def _is_available(value: ir.Value, graph: ir.Graph) -> bool:
    """Whether ``value`` is defined in ``graph`` or a graph enclosing it."""
    producer = value.producer()
    owner = producer.graph if producer is not None else value.graph
    scope: ir.Graph | None = graph
    while scope is not None:
        if scope is owner:
            return True
        scope = scope.meta.get(_ENCLOSING)
    return False


def _link_subgraphs(graph: ir.Graph) -> None:
    """Record each subgraph's enclosing graph, which onnx-ir does not link back."""
    for node in graph:
        for sub in subgraphs_of(node):
            sub.meta[_ENCLOSING] = graph
            _link_subgraphs(sub)


def _check_edges(graph: ir.Graph) -> Iterator[Problem]:
    for node in graph:
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            if not _is_available(value, graph):
                producer = value.producer()
                why = (
                    f"its producer {_describe_node(producer)} is not in the graph"
                    if producer is not None
                    else "nothing produces it and it is neither an input nor an initializer"
                )
                yield Problem(
                    _describe_node(node), f"input {index} {value.name!r} is dangling: {why}"
                )


def _check_order(graph: ir.Graph) -> Iterator[Problem]:
    position = {node: i for i, node in enumerate(graph)}
    late: list[Problem] = []
    for node in graph:
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and producer in position and (
                position[producer] >= position[node]
            ):
                late.append(
                    Problem(
                        _describe_node(node),
                        f"input {value.name!r} is produced later, by {_describe_node(producer)}",
                    )
                )
    if not late:
        return
    dag = nx.DiGraph()
    dag.add_nodes_from(position)
    for node in graph:
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and producer in position:
                dag.add_edge(producer, node)
    try:
        cycle = nx.find_cycle(dag)
    except nx.NetworkXNoCycle:
        yield from late
        return
    path = " -> ".join(_describe_node(edge[0]) for edge in cycle)
    yield Problem(_describe_graph(graph), f"has a cycle: {path} -> back to the first")


def _check_outputs(graph: ir.Graph) -> Iterator[Problem]:
    for index, value in enumerate(graph.outputs):
        # onnx-ir links every graph output to its graph, produced or not: check the source.
        orphan = (value.producer() is None and not value.is_graph_input()
                  and not value.is_initializer())
        if orphan or not _is_available(value, graph):
            yield Problem(
                _describe_graph(graph),
                f"output {index} {value.name!r} is not produced by any node, input or "
                "initializer",
            )


def _check_schemas(graph: ir.Graph, opsets: dict[str, int]) -> Iterator[Problem]:
    for node in graph:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        version = opsets.get(domain, opsets.get("ai.onnx"))
        if version is None:
            if domain not in opsets:
                yield Problem(_describe_node(node), f"domain {domain!r} has no opset import")
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, version, domain)
        except onnx.defs.SchemaError:
            continue  # custom or contrib operators: nothing to check against
        n_in = len(node.inputs)
        while n_in and node.inputs[n_in - 1] is None:
            n_in -= 1  # trailing empty optional inputs do not count
        if not schema.min_input <= n_in <= schema.max_input:
            yield Problem(
                _describe_node(node),
                f"has {n_in} inputs, {node.op_type}-{schema.since_version} takes "
                f"{schema.min_input} to {schema.max_input}",
            )
        n_out = len(node.outputs)
        if not schema.min_output <= n_out <= schema.max_output:
            yield Problem(
                _describe_node(node),
                f"has {n_out} outputs, {node.op_type}-{schema.since_version} gives "
                f"{schema.min_output} to {schema.max_output}",
            )


def _check_quant_params(graph: ir.Graph) -> Iterator[Problem]:
    seen: set[int] = set()
    values = list(graph.inputs) + [v for n in graph for v in n.outputs]
    values += list(graph.initializers.values())
    for value in values:
        if id(value) in seen:
            continue
        seen.add(id(value))
        params = value.meta.get(QUANT_PARAMS_KEY)
        if params is None:
            continue
        if not isinstance(params, QuantParams):
            yield Problem(f"value {value.name!r}", "quantization parameters of the wrong kind")
            continue
        scale = np.asarray(params.scale)
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            yield Problem(f"value {value.name!r}", f"scale must be finite and > 0, is {scale}")
        low, high = params.dtype.range
        zp = np.asarray(params.zero_point)
        if np.any(zp < low) or np.any(zp > high):
            yield Problem(
                f"value {value.name!r}",
                f"zero point {zp} outside the {params.dtype.name} range [{low}, {high}]",
            )


def _check_inference(model: ir.Model) -> Iterator[Problem]:
    proto = ir.serde.serialize_model(model)
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        for line in str(exc).splitlines():
            if line.strip():
                yield Problem("type and shape inference", line.strip())
