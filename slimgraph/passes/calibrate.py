"""Calibration: stream data through the model and keep running statistics of chosen values.

The model is copied with the values to observe added as outputs; each batch's activations
update the running :class:`TensorStats` and are dropped before the next batch is read, so
memory depends on the batch size, not on the number of samples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from slimgraph.errors import DataError
from slimgraph.ir.edit import NameSource
from slimgraph.ir.graphs import subgraph_holders
from slimgraph.ir.stats import CalibrationTable, Histogram, TensorStats
from slimgraph.passes.protocols import Executor
from slimgraph.progress import track

__all__ = ["Observer", "collect_statistics", "observable"]

logger = logging.getLogger(__name__)


def observable(model: ir.Model, value: ir.Value,
               parents: Mapping[int, ir.Node] | None = None) -> bool:
    """Whether calibration can observe ``value``: it lives in the main graph or in If
    branches (at any depth); values inside Loop and Scan bodies change every iteration and
    cannot be read out."""
    parents = subgraph_holders(model) if parents is None else parents
    producer = value.producer()
    graph = producer.graph if producer is not None else value.graph
    while graph is not None and graph is not model.graph:
        holder = parents.get(id(graph))
        if holder is None or holder.op_type != "If" or holder.domain not in ("", "ai.onnx"):
            return False
        graph = holder.graph
    return graph is model.graph


class Observer:
    """A copy of a model that also outputs chosen values (from the main graph or from If
    branches), loaded once and run batch by batch."""

    def __init__(self, model: ir.Model, names: Sequence[str], executor: Executor) -> None:
        self.names = list(dict.fromkeys(names))
        parents = subgraph_holders(model)
        by_name = {v.name: v for v in model.graph.inputs if v.name}
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            by_name.update({v.name: v for v in node.outputs if v.name})
        for name in self.names:
            if name not in by_name:
                raise ValueError(f"the model has no value named {name!r}")
            if not observable(model, by_name[name], parents):
                raise ValueError(f"value {name!r} is inside a Loop or Scan body; it cannot be "
                                 "observed")
        augmented, exposed = _with_outputs(model, self.names)
        self._outputs = [exposed[name] for name in self.names]
        self.session = executor.session(augmented)

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The observed values for one batch, as float32 arrays in the order of ``names``."""
        if not self.names:
            return []  # a session asked for no output at all would compute every output
        return [np.asarray(a, dtype=np.float32) for a in self.session.run(feed, self._outputs)]


def collect_statistics(
    model: ir.Model,
    values: Sequence[ir.Value],
    executor: Executor,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    total_batches: int | None = None,
    histogram_bins: int | None = None,
    key: str = "",
) -> CalibrationTable:
    """Run ``feeds`` through ``model`` and summarise each of ``values``.

    ``histogram_bins`` keeps a histogram per value as well (for percentile, entropy and MSE
    ranges). Values inside Loop or Scan bodies cannot be observed and raise ``ValueError``.
    """
    observer = Observer(model, [v.name for v in values], executor)
    names = observer.names
    table = CalibrationTable(key=key)
    for name in names:
        table.stats[name] = TensorStats(
            histogram=Histogram(histogram_bins) if histogram_bins else None
        )
    start = time.perf_counter()
    batches = 0
    for feed in track(feeds, total=total_batches, desc="calibrating"):
        arrays = observer.run(feed)
        for name, array in zip(names, arrays, strict=True):
            table.stats[name].update(array)
        table.samples += int(next(iter(feed.values())).shape[0])
        batches += 1
        del arrays
    if batches == 0:
        raise DataError("calibration data is empty: no batch was read")
    logger.info("calibration: %d samples in %d batches, %d tensors observed (%.1f s)",
                table.samples, batches, len(names), time.perf_counter() - start)
    return table


def _with_outputs(model: ir.Model, names: Sequence[str]) -> tuple[ir.Model, dict[str, str]]:
    """A copy of ``model`` whose outputs also carry the values named ``names``, and the name
    of the output that carries each one.

    A value inside an If branch is passed out through a new output of the If: the branch
    that computes it returns it, the other branch returns an empty tensor of the same rank
    (nothing to count when that branch runs).
    """
    copy = model.clone()
    by_name: dict[str, ir.Value] = {v.name: v for v in copy.graph.inputs if v.name}
    for node in ir.traversal.RecursiveGraphIterator(copy.graph):
        by_name.update({v.name: v for v in node.outputs if v.name})
    parents = subgraph_holders(copy)
    fresh = NameSource(copy.graph)
    existing = {v.name for v in copy.graph.outputs}
    exposed: dict[str, str] = {}
    for name in names:
        value = _through_branches(by_name[name], copy.graph, parents, fresh)
        exposed[name] = value.name
        if value.name not in existing:
            copy.graph.outputs.append(value)
            existing.add(value.name)
    return copy, exposed


def _through_branches(value: ir.Value, main: ir.Graph, parents: Mapping[int, ir.Node],
                      fresh: NameSource) -> ir.Value:
    producer = value.producer()
    graph = producer.graph if producer is not None else value.graph
    while graph is not main:
        holder = parents[id(graph)]
        branches = {a.name: a.as_graph() for a in holder.attributes.values()
                    if a.type == ir.AttributeType.GRAPH}
        for branch in branches.values():
            branch.outputs.append(value if branch is graph else _empty_like(value, branch))
        holder.resize_outputs(len(holder.outputs) + 1)
        carried = holder.outputs[-1]
        carried.name = fresh.fresh(f"{value.name}_observed")
        carried.type = value.type
        value, graph = carried, holder.graph
    return value


def _empty_like(value: ir.Value, branch: ir.Graph) -> ir.Value:
    rank = len(value.shape) if value.shape is not None else 1
    dtype = value.dtype or ir.DataType.FLOAT
    empty = ir.tensor(np.zeros((0,) * rank, dtype=dtype.numpy()))
    node = ir.node("Constant", [], attributes={"value": empty})
    branch.append(node)
    return node.outputs[0]
