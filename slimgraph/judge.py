"""Scoring candidates: accuracy on the evaluation data against the FP32 model, and the
tuning objective (speed measured side by side with FP32, or size)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from slimgraph.benchmark import measure_throughput
from slimgraph.data import DataSource, MetricConfig
from slimgraph.evaluate import Evaluation, evaluate
from slimgraph.ir import io
from slimgraph.passes.protocols import Executor

__all__ = ["Judge", "TrialTiming"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialTiming:
    """How long each trial's speed check runs; short, since only the ranking matters."""

    warmup: int = 5
    iterations: int = 50
    repeats: int = 3


class Judge:
    """Scores models on one evaluation source; the FP32 score is computed once."""

    def __init__(self, source: DataSource, metric: MetricConfig, *, batch_size: int,
                 executor: Executor, fp32: ir.Model, bench_feeds: dict[str, np.ndarray],
                 timing: TrialTiming = TrialTiming()) -> None:
        self.source = source
        self.metric = metric
        self.batch_size = batch_size
        self.executor = executor
        self.fp32_session = executor.session(fp32)
        self.bench_feeds = bench_feeds
        self.timing = timing
        self._needs_reference = metric.build().needs_reference
        self.fp32_evaluation = self._evaluate({"fp32": self.fp32_session})

    @property
    def fp32_score(self) -> float:
        return self.fp32_evaluation.scores["fp32"]

    @property
    def higher_is_better(self) -> bool:
        return self.fp32_evaluation.higher_is_better

    def score(self, model: ir.Model) -> float:
        session = self.executor.session(model)
        sessions = {"candidate": session}
        if self._needs_reference:
            sessions["fp32"] = self.fp32_session
        return self._evaluate(sessions).scores["candidate"]

    def speedup(self, model: ir.Model) -> float:
        """Throughput of ``model`` over FP32's, timed interleaved."""
        session = self.executor.session(model)
        speed = measure_throughput({"fp32": self.fp32_session, "int8": session},
                                   self.bench_feeds, warmup=self.timing.warmup,
                                   iterations=self.timing.iterations,
                                   repeats=self.timing.repeats)
        return speed["int8"].samples_per_second / speed["fp32"].samples_per_second

    @staticmethod
    def size(model: ir.Model) -> float:
        return float(len(io.to_proto(model).SerializeToString()))

    def _evaluate(self, sessions: dict[str, object]) -> Evaluation:
        reference = "fp32" if "fp32" in sessions else None
        return evaluate(self.source, sessions, self.metric.build, batch_size=self.batch_size,
                        reference=reference)
