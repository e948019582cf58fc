"""Building INT8 candidates from one cleaned FP32 model, sharing calibration statistics.

Every tuning trial plans, quantizes and lowers a fresh copy of the FP32 model. Statistics
are gathered once per tensor and cached (in memory and in the workspace, keyed by the model,
the calibration data and the seed), so a trial that needs a tensor no earlier trial needed
streams the calibration data only for the missing tensors.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from slimgraph import ir as sir
from slimgraph.backends.onnx_qdq import lower_qdq
from slimgraph.data import DataSource
from slimgraph.errors import DataError
from slimgraph.ir.pass_manager import PassRecord
from slimgraph.ir.stats import CalibrationTable
from slimgraph.passes.calibrate import collect_statistics
from slimgraph.passes.protocols import Executor
from slimgraph.passes.quantize.bias_correction import (
    CorrectBias,
    float_weights,
    layer_input_means,
)
from slimgraph.passes.quantize.config import QuantConfig
from slimgraph.passes.quantize.dynamic import InsertDynamic, PlanDynamic
from slimgraph.passes.quantize.insert import InsertQDQ
from slimgraph.passes.quantize.params import AssignParams
from slimgraph.passes.quantize.plan import (
    NODE_PLAN_KEY,
    NodePlan,
    PlanQuantization,
    values_to_calibrate,
)
from slimgraph.passes.quantize.ranges import DEFAULT_BINS, needs_histogram, range_method
from slimgraph.passes.quantize.smooth_quant import (
    SmoothQuant,
    channel_absmax,
    choose_alpha,
    scales_for,
    smoothable_values,
)
from slimgraph.tuning.space import Candidate

__all__ = ["Built", "CandidateBuilder", "feeds_for"]

logger = logging.getLogger(__name__)

# Batches used to compare each op's output with FP32 (the mse strategy's sensitivity).
_ERROR_BATCHES = 4


@dataclass(frozen=True)
class Built:
    """A candidate model and the records of the passes that made it."""

    model: ir.Model
    records: list[PassRecord]
    # Nodes kept in float because calibration never computed their inputs.
    unseen: frozenset[str] = frozenset()


class CandidateBuilder:
    """Plans, quantizes and lowers copies of ``fp32`` under candidates of ``config``."""

    def __init__(
        self,
        fp32: ir.Model,
        config: QuantConfig,
        executor: Executor,
        calibration: DataSource,
        *,
        batch_size: int,
        cache_dir: Path | None,
        cache_key: str,
        method_options: Mapping[str, Mapping[str, float]] | None = None,
        lower: Callable[[ir.Model], ir.Model] = lower_qdq,
        dynamic: bool = False,
        smooth_alpha: float | str | None = None,
        bias_correction: bool = False,
    ) -> None:
        self.fp32 = fp32
        self.config = config
        self.executor = executor
        self.calibration = calibration
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.cache_key = cache_key
        self.lower = lower
        self.dynamic = dynamic
        self.smooth_alpha = smooth_alpha
        self.bias_correction = bias_correction and not dynamic
        self.recipes: dict[str, object] = {}
        self._base: ir.Model | None = None
        self._input_means: dict[str, np.ndarray] | None = None
        self.method_options = dict(method_options or {})
        self._tables: dict[bool, CalibrationTable] = {}

    def config_for(self, candidate: Candidate) -> QuantConfig:
        config = self.config
        for name in sorted(candidate.float_op_types):
            config = config.with_float(op_types=frozenset([name]),
                                       reason=candidate.reason_for(name))
        for name in sorted(candidate.float_nodes):
            config = config.with_float(nodes=frozenset([name]),
                                       reason=candidate.reason_for(name))
        return config

    def plan(self, candidate: Candidate,
             unseen: frozenset[str] = frozenset()) -> tuple[ir.Model, list[PassRecord]]:
        """A copy of the FP32 model with the candidate's plan attached (no node changed).

        ``unseen`` nodes stay in float: calibration never saw their inputs (a branch the
        data did not take)."""
        model = self.base().clone()
        config = self.config_for(candidate).with_float(
            nodes=unseen, reason="its input never appeared in the calibration data")
        planner = PlanDynamic(config) if self.dynamic else PlanQuantization(config)
        records = sir.PassManager([planner], verify=False).run(model)
        return model, records

    def build(self, candidate: Candidate) -> Built:
        model, records = self.plan(candidate)
        if self.dynamic:
            records += sir.PassManager([InsertDynamic()]).run(model)
            self.lower(model)
            return Built(model, records)
        histograms = needs_histogram(candidate.method)
        table = self.statistics(values_to_calibrate(model), histograms=histograms)
        unseen = self.unseen_nodes(model, table)
        if unseen:
            logger.info("%d node(s) stay in float: calibration never computed their inputs",
                        len(unseen))
            model, records = self.plan(candidate, unseen)
            table = self.statistics(values_to_calibrate(model), histograms=histograms)
        method = range_method(candidate.method,
                              **self.method_options.get(candidate.method, {}))
        weights = float_weights(model) if self.bias_correction else {}
        records += sir.PassManager([AssignParams(table, method, candidate.method),
                                    InsertQDQ()]).run(model)
        if self.bias_correction:
            correct = CorrectBias(self.input_means(), weights)
            records += sir.PassManager([correct]).run(model)
            self.recipes["bias_correction"] = f"{correct.corrected} layer(s)"
        self.lower(model)
        return Built(model, records, unseen)

    # -- recipes ------------------------------------------------------------------------------

    def base(self) -> ir.Model:
        """The FP32 model quantization starts from: smoothed when SmoothQuant is on (the
        same function, with activation outliers moved into the weights)."""
        if self._base is None:
            self._base = self.fp32 if self.smooth_alpha is None else self._smoothed()
        return self._base

    def _smoothed(self) -> ir.Model:
        values = smoothable_values(self.fp32)
        if not values:
            self.recipes["smooth_quant"] = "nothing to smooth (no MatMul/Gemm with weights)"
            return self.fp32
        absmax = channel_absmax(self.fp32, values, self.executor, self._feeds())
        alpha = self.smooth_alpha
        errors: dict[float, float] = {}
        if alpha == "auto":
            alpha, errors = choose_alpha(self.fp32, self.executor, self._feeds(),
                                         act_scheme=self.config.activation,
                                         weight_scheme=self.config.weight)
        smoothed = self.fp32.clone()
        smooth = SmoothQuant(scales_for(smoothed, absmax, float(alpha)))
        sir.PassManager([smooth]).run(smoothed)
        chosen = f"alpha {float(alpha):g}" + (" (chosen from " + ", ".join(
            f"{a:g}: {e:.3g}" for a, e in errors.items()) + ")" if errors else "")
        self.recipes["smooth_quant"] = f"{len(smooth.smoothed)} value(s), {chosen}"
        self.cache_key = f"{self.cache_key}-smooth{float(alpha):g}"
        return smoothed

    def input_means(self) -> dict[str, np.ndarray]:
        if self._input_means is None:
            self._input_means = layer_input_means(self.base(), self.executor, self._feeds())
        return self._input_means

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        names = [v.name for v in self.fp32.graph.inputs]
        for batch in self.calibration.batches(self.batch_size):
            yield feeds_for(batch.inputs, names)

    @staticmethod
    def unseen_nodes(model: ir.Model, table: CalibrationTable) -> frozenset[str]:
        """Nodes reading or writing a value that no calibration sample computed."""
        names: set[str] = set()
        for value in values_to_calibrate(model):
            if value.name in table and table[value.name].count == 0:
                names.update(n.name for n in value.consumers() if n.name)
                producer = value.producer()
                if producer is not None and producer.name:
                    names.add(producer.name)
        return frozenset(names)

    # -- calibration statistics, cached -------------------------------------------------------

    def statistics(self, values: Sequence[ir.Value], *, histograms: bool) -> CalibrationTable:
        """Statistics for ``values``, collecting only those not cached yet."""
        self.base()  # smoothing, when on, changes the statistics and their cache key
        table = self._table(histograms)
        missing = [v for v in values if v.name not in table]
        if missing:
            fresh = self._collect(missing, histograms)
            table.stats.update(fresh.stats)
            table.samples = fresh.samples
            self._save(table, histograms)
        return table

    def _table(self, histograms: bool) -> CalibrationTable:
        if histograms not in self._tables:
            self._tables[histograms] = self._load(histograms) or CalibrationTable(
                key=self._key(histograms))
        return self._tables[histograms]

    def _collect(self, values: Sequence[ir.Value], histograms: bool) -> CalibrationTable:
        names = [v.name for v in self.fp32.graph.inputs]
        total = -(-len(self.calibration) // self.batch_size)
        feeds = (feeds_for(batch.inputs, names)
                 for batch in self.calibration.batches(self.batch_size))
        base = self.base()
        by_name = _values_by_name(base)
        # Statistics are gathered on the FP32 model: each trial's plan only chooses among them.
        targets = [by_name[v.name] for v in values if v.name in by_name]
        return collect_statistics(base, targets, self.executor, feeds, total_batches=total,
                                  histogram_bins=DEFAULT_BINS if histograms else None,
                                  key=self._key(histograms))

    def _key(self, histograms: bool) -> str:
        return f"{self.cache_key}-{'hist' if histograms else 'range'}"

    def _path(self, histograms: bool) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"calibration-{'hist' if histograms else 'range'}.json"

    def _load(self, histograms: bool) -> CalibrationTable | None:
        path = self._path(histograms)
        if path is None or not path.is_file():
            return None
        table = CalibrationTable.load(path)
        if table.key != self._key(histograms):
            return None
        logger.info("calibration: reusing statistics of %d tensors from %s", len(table), path)
        return table

    def _save(self, table: CalibrationTable, histograms: bool) -> None:
        path = self._path(histograms)
        if path is not None:
            table.save(path)

    # -- sensitivity ----------------------------------------------------------------------------

    def op_errors(self, candidate: Candidate) -> dict[str, float]:
        """Relative squared error of each quantized node's output against FP32, over a few
        calibration batches of the candidate's fake-quantized model."""
        built = self.build(candidate)
        quantized = [n for n in built.model.graph if _planned(n)]
        names = [n.outputs[0].name for n in quantized]
        fp32_names = set(_values_by_name(self.fp32))
        names = [name for name in names if name in fp32_names]
        ref = self.executor.session(_expose(self.fp32, names))
        test = self.executor.session(_expose(built.model, names))
        inputs = [v.name for v in self.fp32.graph.inputs]
        err = dict.fromkeys(names, 0.0)
        power = dict.fromkeys(names, 0.0)
        for count, batch in enumerate(self.calibration.batches(self.batch_size)):
            if count >= _ERROR_BATCHES:
                break
            feeds = feeds_for(batch.inputs, inputs)
            for name, a, b in zip(names, ref.run(feeds, names), test.run(feeds, names),
                                  strict=True):
                err[name] += float(np.mean((a - b) ** 2))
                power[name] += float(np.mean(a**2))
        producer = {n.outputs[0].name: n.name for n in quantized}
        return {producer[n]: err[n] / max(power[n], 1e-12) for n in names}


def _planned(node: ir.Node) -> bool:
    plan = node.meta.get(NODE_PLAN_KEY)
    return isinstance(plan, NodePlan) and plan.quantized and bool(node.name) and bool(
        node.outputs and node.outputs[0].name)


def _values_by_name(model: ir.Model) -> dict[str, ir.Value]:
    """Every graph input and node output by name, subgraphs included."""
    values = {v.name: v for v in model.graph.inputs if v.name}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        values.update({v.name: v for v in node.outputs if v.name})
    return values


def _expose(model: ir.Model, names: Sequence[str]) -> ir.Model:
    copy = model.clone()
    by_name = _values_by_name(copy)
    present = {v.name for v in copy.graph.outputs}
    copy.graph.outputs.extend(by_name[n] for n in names if n not in present)
    return copy


def feeds_for(inputs: object, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Feeds keyed by the model's input names from a batch's positional or keyed arrays."""
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise DataError(f"data gives inputs {sorted(inputs)}, the model needs {missing}")
        return {n: inputs[n] for n in names}
    arrays = list(inputs)  # type: ignore[call-overload]
    if len(arrays) != len(names):
        raise DataError(f"data gives {len(arrays)} input array(s), the model takes "
                        f"{len(names)}: {list(names)}")
    return dict(zip(names, arrays, strict=True))


def model_identity(model: ir.Model) -> str:
    """A hash of the serialized model, for cache keys."""
    return hashlib.sha256(sir.to_proto(model).SerializeToString()).hexdigest()[:16]

