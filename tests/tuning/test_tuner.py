"""The tuning loop and its strategies, driven by a fake trial runner with known scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from slimgraph.tuning.space import Candidate, QuantizableNode, TuningSpace
from slimgraph.tuning.tuner import Goal, TrialOutcome, Tuner, TuningError, Workspace

NODES = (
    QuantizableNode("conv1", "Conv", 1000),
    QuantizableNode("conv2", "Conv", 5000),
    QuantizableNode("add1", "Add", 0),
    QuantizableNode("fc", "Gemm", 200),
)
SPACE = TuningSpace(NODES, blocks=(("conv1", "conv2", "add1"), ("fc",)),
                    methods=("minmax", "percentile"), seed=0)
FP32 = 0.80


def _model() -> ir.Model:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1]))
    node = ir.node("Relu", [x], name="relu")
    node.outputs[0].name = "y"
    graph = ir.Graph([x], [node.outputs[0]], nodes=[node], opset_imports={"": 17})
    return ir.Model(graph, ir_version=8)


class FakeRunner:
    """Scores a candidate by which ops it keeps in FP32: each has a known accuracy cost."""

    def __init__(self, cost: dict[str, float], *, fail: set[str] = frozenset(),
                 interrupt_at: int | None = None) -> None:
        self.cost = cost
        self.fail = fail
        self.interrupt_at = interrupt_at
        self.calls: list[Candidate] = []

    def __call__(self, candidate: Candidate, measure: bool) -> TrialOutcome:
        self.calls.append(candidate)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        if candidate.float_nodes & self.fail:
            raise RuntimeError("kernel missing")
        quantized = [n.name for n in NODES if n.name not in candidate.float_nodes
                     and n.op_type not in candidate.float_op_types]
        score = FP32 - sum(self.cost.get(n, 0.0) for n in quantized)
        if candidate.method == "percentile":
            score += 0.001
        speed = 1.0 + 0.5 * len(quantized)  # more ops in INT8 is faster
        return TrialOutcome(_model(), score, speed if measure else None)


def _tuner(tmp_path: Path, runner: FakeRunner, *, strategy: str = "basic",
           relative: float = 0.01, timeout_s: float = 0, max_trials: int = 100,
           errors: dict[str, float] | None = None) -> Tuner:
    return Tuner(
        strategy_name=strategy, space=SPACE, start=Candidate(label="all INT8"),
        goal=Goal(relative, None, higher_is_better=True), fp32_score=FP32, run_trial=runner,
        op_errors=lambda c: errors or {n.name: 0.0 for n in NODES},
        workspace=Workspace(tmp_path / "ws", identity="test"), max_trials=max_trials,
        timeout_s=timeout_s, objective="performance")


def test_first_trial_meeting_goal_ends_search_when_no_budget(tmp_path: Path) -> None:
    runner = FakeRunner({"conv1": 0.002})
    result = _tuner(tmp_path, runner).run()
    assert result.met_goal and len(result.trials) == 1
    assert "first" in result.stopped_because
    assert (tmp_path / "ws" / "best" / "model.int8.onnx").is_file()


def test_basic_order_methods_blocks_ops_then_accumulation(tmp_path: Path) -> None:
    # conv2 costs 5 points: only keeping conv2 in FP32 meets a 1 % goal.
    runner = FakeRunner({"conv2": 0.05, "fc": 0.004, "conv1": 0.004})
    result = _tuner(tmp_path, runner).run()
    labels = [t.candidate.label for t in result.trials]
    assert labels[:2] == ["all INT8", "activation ranges: percentile"]
    # Block 1 (conv1, conv2, add1) in FP32 meets the goal: the search stops there.
    assert labels[2:] == ["block 1 in FP32"]
    assert result.met_goal and result.best.candidate.float_nodes == {"conv1", "conv2", "add1"}


def test_budget_keeps_searching_for_the_best_objective(tmp_path: Path) -> None:
    runner = FakeRunner({"conv2": 0.05, "fc": 0.004, "conv1": 0.004})
    result = _tuner(tmp_path, runner, timeout_s=3600).run()
    assert len(result.trials) > 4
    passing = [t for t in result.trials if t.meets_goal]
    assert result.best.objective == max(t.objective for t in passing)
    # The fastest passing candidate keeps only conv2 in FP32.
    assert result.best.candidate.float_nodes == {"conv2"}
    assert "nothing more" in result.stopped_because or "max_trials" in result.stopped_because


def test_unmet_goal_returns_most_accurate(tmp_path: Path) -> None:
    runner = FakeRunner({"conv1": 0.03, "conv2": 0.03, "add1": 0.03, "fc": 0.03})
    result = _tuner(tmp_path, runner, relative=0.0, max_trials=8).run()
    assert not result.met_goal
    scores = [t.score for t in result.trials if t.score is not None]
    assert result.best.score == max(scores)
    assert "max_trials" in result.stopped_because


def test_a_crashing_trial_is_recorded_and_search_goes_on(tmp_path: Path) -> None:
    runner = FakeRunner({"conv2": 0.05}, fail={"conv1"})
    result = _tuner(tmp_path, runner, strategy="basic").run()
    failed = [t for t in result.trials if t.error]
    assert failed and "kernel missing" in failed[0].error
    assert result.met_goal


def test_every_trial_failing_is_an_error(tmp_path: Path) -> None:
    runner = FakeRunner({}, fail={"conv1", "conv2", "add1", "fc"})
    with pytest.raises(TuningError, match="failed"):
        _tuner(tmp_path, runner, strategy="conservative").run()


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    cost = {"conv2": 0.05, "fc": 0.004, "conv1": 0.004}
    whole = _tuner(tmp_path / "a", FakeRunner(cost), timeout_s=3600).run()

    first = FakeRunner(cost, interrupt_at=6)
    with pytest.raises(KeyboardInterrupt):
        _tuner(tmp_path / "b", first, timeout_s=3600).run()
    assert (tmp_path / "b" / "ws" / "best" / "model.int8.onnx").is_file()
    second = FakeRunner(cost)
    resumed = _tuner(tmp_path / "b", second, timeout_s=3600).run()

    assert [t.candidate.key() for t in resumed.trials] == [t.candidate.key() for t in whole.trials]
    assert resumed.best.candidate == whole.best.candidate
    assert sum(t.resumed for t in resumed.trials) == 5  # trials 1-5 came from the log
    assert len(second.calls) == len(whole.trials) - 5


def test_resume_ignores_a_workspace_of_another_spec(tmp_path: Path) -> None:
    cost = {"conv2": 0.05}
    _tuner(tmp_path, FakeRunner(cost)).run()
    other = Tuner(strategy_name="basic", space=SPACE, start=Candidate(label="all INT8"),
                  goal=Goal(0.01, None, True), fp32_score=FP32, run_trial=FakeRunner(cost),
                  op_errors=lambda c: {}, workspace=Workspace(tmp_path / "ws", "other"),
                  max_trials=100, timeout_s=0, objective="performance")
    assert not any(t.resumed for t in other.run().trials)


def test_conservative_quantizes_heaviest_first_and_keeps_what_passes(tmp_path: Path) -> None:
    runner = FakeRunner({"conv1": 0.05})
    result = _tuner(tmp_path, runner, strategy="conservative", timeout_s=3600).run()
    labels = [sorted(t.candidate.float_nodes) for t in result.trials]
    assert labels[0] == ["conv1", "fc"]  # conv2, the heaviest, quantized first; add1 follows
    assert result.best.candidate.float_nodes == {"conv1"}


def test_mse_orders_fallback_by_output_error(tmp_path: Path) -> None:
    runner = FakeRunner({"fc": 0.05})
    errors = {"conv1": 0.01, "conv2": 0.02, "add1": 0.0, "fc": 0.3}
    result = _tuner(tmp_path, runner, strategy="mse", errors=errors).run()
    assert [t.candidate.float_nodes for t in result.trials] == [frozenset(), {"fc"}]


def test_exhaustive_covers_all_op_type_combinations(tmp_path: Path) -> None:
    runner = FakeRunner({"conv1": 0.5})
    result = _tuner(tmp_path, runner, strategy="exhaustive", relative=0.0,
                    timeout_s=3600).run()
    assert len(result.trials) == 2 ** len(SPACE.op_types)
    assert len({t.candidate.key() for t in result.trials}) == len(result.trials)


def test_random_is_seeded_and_never_repeats(tmp_path: Path) -> None:
    runs = [_tuner(tmp_path / str(i), FakeRunner({"conv1": 0.5}), strategy="random",
                   relative=0.0, max_trials=6, timeout_s=3600).run() for i in range(2)]
    keys = [[t.candidate.key() for t in r.trials] for r in runs]
    assert keys[0] == keys[1] and len(set(keys[0])) == 6


def test_bayesian_finds_the_sensitive_op(tmp_path: Path) -> None:
    np.random.seed(0)
    runner = FakeRunner({"conv2": 0.05})
    result = _tuner(tmp_path, runner, strategy="bayesian", max_trials=16).run()
    assert result.met_goal and "conv2" in result.best.candidate.float_nodes
