"""The tuning loop: propose, build, score, keep the best, stop by the exit policy.

* With ``timeout_s: 0`` the first candidate that meets the accuracy goal ends the search.
* With a budget the search goes on for the best objective (speed or size) among the
  candidates that meet the goal, until the budget, ``max_trials`` or the strategy runs out.
* The best model so far is written to the workspace after every trial that improves on it,
  and every trial is appended to a log there; an interrupted run resumes from the log,
  replaying the strategy without rebuilding what it already scored.
* A trial that crashes is recorded with its error and the search goes on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import onnx_ir as ir

from slimgraph.errors import SlimgraphError, UserError
from slimgraph.ir import io
from slimgraph.tuning.space import Candidate, TuningSpace
from slimgraph.tuning.strategies import TrialResult, strategy

__all__ = ["Goal", "Trial", "TrialOutcome", "Tuner", "TuningError", "TuningResult", "Workspace"]

logger = logging.getLogger(__name__)

Objective = Literal["performance", "size"]


@dataclass(frozen=True)
class Goal:
    """The accuracy a candidate must keep: relative or absolute loss against FP32."""

    relative: float | None
    absolute: float | None
    higher_is_better: bool

    def threshold(self, fp32: float) -> float:
        sign = 1.0 if self.higher_is_better else -1.0
        if self.absolute is not None:
            return fp32 - sign * self.absolute
        return fp32 - sign * abs(fp32) * float(self.relative or 0.0)

    def met(self, score: float | None, fp32: float) -> bool:
        if score is None:
            return False
        limit = self.threshold(fp32)
        return score >= limit if self.higher_is_better else score <= limit

    def describe(self) -> str:
        if self.absolute is not None:
            return f"at most {self.absolute:g} absolute loss"
        return f"at most {float(self.relative or 0) * 100:g}% relative loss"


@dataclass(frozen=True)
class TrialOutcome:
    """What the trial runner gives back: the built model and its score."""

    model: ir.Model
    score: float
    objective: float | None


@dataclass(frozen=True)
class Trial:
    index: int
    candidate: Candidate
    score: float | None
    meets_goal: bool
    objective: float | None
    seconds: float
    error: str | None = None
    resumed: bool = False

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["candidate"] = self.candidate.to_json()
        data["key"] = self.candidate.key()
        return data

    @classmethod
    def from_json(cls, data: dict) -> Trial:  # type: ignore[type-arg]
        return cls(int(data["index"]), Candidate.from_json(data["candidate"]), data["score"],
                   bool(data["meets_goal"]), data["objective"], float(data["seconds"]),
                   data.get("error"), True)


@dataclass(frozen=True)
class TuningResult:
    best: Trial
    trials: list[Trial]
    met_goal: bool
    stopped_because: str


class Workspace:
    """A folder that survives interruptions: the trial log and the best model so far."""

    def __init__(self, path: Path, identity: str) -> None:
        self.path = path
        self.identity = identity
        self.best_model = path / "best" / "model.int8.onnx"

    def previous_trials(self) -> dict[str, Trial]:
        """Trials logged by an earlier run of the same spec and model, by candidate key."""
        log = self.path / "trials.jsonl"
        state = self.path / "state.json"
        if not log.is_file() or not state.is_file():
            return {}
        if json.loads(state.read_text()).get("identity") != self.identity:
            logger.info("workspace %s belongs to another spec or model: starting afresh",
                        self.path)
            return {}
        trials = {}
        for line in log.read_text().splitlines():
            if line.strip():
                trial = Trial.from_json(json.loads(line))
                trials[trial.candidate.key()] = trial
        return trials

    def start(self, fresh: bool) -> None:
        if fresh and (self.path / "trials.jsonl").exists():
            (self.path / "trials.jsonl").unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / "state.json", json.dumps({"identity": self.identity}))

    def record(self, trial: Trial) -> None:
        with open(self.path / "trials.jsonl", "a") as handle:
            handle.write(json.dumps(trial.to_json()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def save_best(self, model: ir.Model, trial: Trial) -> None:
        io.save(model, self.best_model)
        _write_atomic(self.best_model.parent / "trial.json", json.dumps(trial.to_json()))

    def best_key(self) -> str | None:
        marker = self.best_model.parent / "trial.json"
        if not marker.is_file() or not self.best_model.is_file():
            return None
        return str(json.loads(marker.read_text())["key"])


class TuningError(SlimgraphError):
    """No trial produced a model."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Tuner:
    """Runs a strategy against a trial runner under an exit policy."""

    def __init__(
        self,
        *,
        strategy_name: str,
        space: TuningSpace,
        start: Candidate,
        goal: Goal,
        fp32_score: float,
        run_trial: Callable[[Candidate, bool], TrialOutcome],
        op_errors: Callable[[Candidate], dict[str, float]],
        workspace: Workspace,
        speedup: Callable[[Candidate], float] | None = None,
        max_trials: int,
        timeout_s: float,
        objective: Objective,
    ) -> None:
        self.strategy = strategy(strategy_name)
        self.space = space
        self.start = start
        self.goal = goal
        self.fp32_score = fp32_score
        self.higher_is_better = goal.higher_is_better
        self._run_trial = run_trial
        self._op_errors = op_errors
        self._speedup = speedup
        self.workspace = workspace
        self.max_trials = max_trials
        self.timeout_s = timeout_s
        self.objective = objective

    def op_errors(self, candidate: Candidate) -> dict[str, float]:
        return self._op_errors(candidate)

    def run(self, *, fresh: bool = False) -> TuningResult:
        previous = {} if fresh else self.workspace.previous_trials()
        self.workspace.start(fresh)
        if previous:
            logger.info("resuming: %d trial(s) already in %s", len(previous), self.workspace.path)
        trials: list[Trial] = []
        seen: dict[str, Trial] = {}
        best: Trial | None = None
        began = time.perf_counter() - sum(t.seconds for t in previous.values())
        search = self.strategy.search(self, self.start)
        candidate: Candidate | None = next(search, None)
        stopped = "the strategy had nothing more to try"
        while candidate is not None:
            key = candidate.key()
            if key in seen:
                trial = seen[key]
            else:
                index = len(trials) + 1
                model = None
                if key in previous:
                    old = previous[key]
                    trial = Trial(index, candidate, old.score, old.meets_goal, old.objective,
                                  old.seconds, old.error, resumed=True)
                else:
                    trial, model = self._trial(index, candidate)
                    self.workspace.record(trial)
                trials.append(trial)
                seen[key] = trial
                best = self._keep_if_best(trial, model, best)
                self._log(trial)
            why = self._should_stop(trial, trials, began)
            if why:
                stopped = why
                break
            try:
                candidate = search.send(TrialResult(candidate, trial.score, trial.meets_goal,
                                                    trial.objective, trial.error))
            except StopIteration:
                candidate = None
        if best is not None and best.meets_goal and len(trials) < self.max_trials:
            best = self._refine_placement(best, trials, seen)
        if best is not None and self.workspace.best_key() != best.candidate.key():
            # The best came from the log of an earlier run that stopped before saving it.
            self.workspace.save_best(self._run_trial(best.candidate, False).model, best)
        if best is None:
            errors = [t.error for t in trials if t.error]
            if errors:
                raise TuningError(f"every one of {len(trials)} trial(s) failed; the first: "
                                  f"{errors[0]}")
            raise TuningError("tuning ran no trial: the strategy proposed nothing")
        met = best.meets_goal
        logger.info("tuning: %d trial(s), stopped because %s; best is trial %d (%s)%s",
                    len(trials), stopped, best.index, best.candidate.label,
                    "" if met else f"; no trial met the goal ({self.goal.describe()})")
        return TuningResult(best, trials, met, stopped)

    def _refine_placement(self, best: Trial, trials: list[Trial],
                          seen: dict[str, Trial]) -> Trial:
        """When the chosen INT8 model runs slower than FP32 on this target, move convolutions
        and matrix products back to FP32 one at a time, smallest first (small ops are where
        integer kernels lose to float ones), keeping each move that makes the model faster
        and still meets the goal.

        Known shortcoming: it runs only when the whole model is slower than FP32, and judges
        moves by whole-model timings. A single layer whose integer kernel loses to float
        inside a model that is faster overall (EfficientNet-Lite0's 3-channel stem: 485 us
        INT8 against 369 us float) stays in INT8. Per-node kernel times from onnxruntime's
        profiler, matched to the FP32 model's nodes, would find such layers in one pass.
        """
        if self.objective != "performance" or self._speedup is None:
            return best
        speed = best.objective if best.objective is not None else self._speedup(best.candidate)
        if speed >= 1.0:
            return best
        logger.info("the chosen model runs at %.2fx FP32: moving small ops back to FP32", speed)
        current = Trial(best.index, best.candidate, best.score, best.meets_goal, speed,
                        best.seconds, best.error, best.resumed)
        heavy = sorted((n for n in self.space.nodes if n.macs), key=lambda n: n.macs)
        for node in heavy:
            if len(trials) >= self.max_trials or speed >= 1.0:
                break
            if node.name in current.candidate.float_nodes:
                continue
            if all(n.name in current.candidate.float_nodes for n in heavy if n is not node):
                break  # keep at least one heavy op in INT8: the rest would be an FP32 model
            candidate = current.candidate.with_float(
                [node.name], label=f"{node.name} in FP32 for speed",
                reason="its integer kernel ran slower than float on this target")
            if candidate.key() in seen:
                continue
            trial, model = self._trial(len(trials) + 1, candidate, measure=True)
            self.workspace.record(trial)
            trials.append(trial)
            seen[candidate.key()] = trial
            self._log(trial)
            if trial.meets_goal and trial.objective is not None and trial.objective > speed:
                current, speed = trial, trial.objective
                if model is not None:
                    self.workspace.save_best(model, trial)
        return current

    def _trial(self, index: int, candidate: Candidate, *,
               measure: bool = False) -> tuple[Trial, ir.Model | None]:
        start = time.perf_counter()
        try:
            outcome = self._run_trial(candidate, measure or self.timeout_s > 0)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a crash in one trial must not end the search
            logger.warning("trial %d (%s) failed: %s: %s", index, candidate.label,
                           type(exc).__name__, exc)
            failed = Trial(index, candidate, None, False, None, time.perf_counter() - start,
                           f"{type(exc).__name__}: {exc}")
            return failed, None
        meets = self.goal.met(outcome.score, self.fp32_score)
        trial = Trial(index, candidate, outcome.score, meets, outcome.objective,
                      time.perf_counter() - start)
        return trial, outcome.model

    def _keep_if_best(self, trial: Trial, model: ir.Model | None,
                      best: Trial | None) -> Trial | None:
        if not self._better(trial, best):
            return best
        if model is not None:
            self.workspace.save_best(model, trial)
        # A trial replayed from the log has no model here: the earlier run saved the best of
        # the trials it logged, which replaying in the same order reproduces.
        return trial

    def _better(self, trial: Trial, best: Trial | None) -> bool:
        if trial.score is None:
            return False
        if best is None or best.score is None:
            return True
        if trial.meets_goal != best.meets_goal:
            return trial.meets_goal
        if trial.meets_goal and trial.objective is not None and best.objective is not None:
            if self.objective == "size":
                return trial.objective < best.objective
            return trial.objective > best.objective
        if trial.meets_goal:
            return False  # equal standing: the earlier trial stays
        return trial.score > best.score if self.higher_is_better else trial.score < best.score

    def _should_stop(self, trial: Trial, trials: list[Trial], began: float) -> str | None:
        if self.timeout_s == 0 and trial.meets_goal:
            return "a trial met the goal (timeout_s is 0: stop at the first)"
        if len(trials) >= self.max_trials:
            return f"max_trials ({self.max_trials}) reached"
        if self.timeout_s > 0 and time.perf_counter() - began >= self.timeout_s:
            return f"the {self.timeout_s:g} s budget ran out"
        return None

    def _log(self, trial: Trial) -> None:
        if trial.error:
            return
        origin = " (from the workspace)" if trial.resumed else ""
        objective = "" if trial.objective is None else f", objective {trial.objective:.3g}"
        logger.info("trial %d: %s: score %.4f, goal %s%s (%.1f s)%s", trial.index,
                    trial.candidate.label, trial.score, "met" if trial.meets_goal else "missed",
                    objective, trial.seconds, origin)
