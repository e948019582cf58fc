"""Tuning strategies: each module here defines one, registers it by name, and is found by
importing this package, so adding a strategy touches no other file.

A strategy is a generator: it yields a :class:`Candidate`, receives the
:class:`TrialResult` for it, and decides what to try next. The tuner owns the exit policy
(first model that meets the goal, or the best within a budget), so a strategy just proposes
candidates in the order it believes in until it has nothing left.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Protocol

from slimgraph.tuning.space import Candidate, TuningSpace

__all__ = [
    "STRATEGIES",
    "Search",
    "Strategy",
    "TrialResult",
    "TuningContext",
    "register",
    "strategy",
]


@dataclass(frozen=True)
class TrialResult:
    """What one candidate scored; ``score`` is None when the trial failed."""

    candidate: Candidate
    score: float | None
    meets_goal: bool
    objective: float | None = None
    error: str | None = None


class TuningContext(Protocol):
    """What a strategy may ask of the tuner."""

    space: TuningSpace
    fp32_score: float
    higher_is_better: bool

    def op_errors(self, candidate: Candidate) -> dict[str, float]:
        """Each quantized node's output error against FP32 under ``candidate`` (one pass
        over a few calibration batches, no evaluation)."""
        ...


Search = Generator[Candidate, TrialResult, None]


class Strategy(Protocol):
    name: str

    def search(self, ctx: TuningContext, start: Candidate) -> Search: ...


STRATEGIES: dict[str, Callable[[], Strategy]] = {}


def register(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        cls.name = name  # type: ignore[attr-defined]
        STRATEGIES[name] = cls
        return cls

    return add


def strategy(name: str) -> Strategy:
    """A new instance of the strategy called ``name``."""
    _load_all()
    if name not in STRATEGIES:
        raise ValueError(f"unknown tuning strategy {name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name]()


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def score_gain(ctx: TuningContext, result: TrialResult, reference: float) -> float:
    """How much better ``result`` scores than ``reference`` (positive is better)."""
    if result.score is None:
        return float("-inf")
    gain = result.score - reference
    return gain if ctx.higher_is_better else -gain


def better(ctx: TuningContext, a: TrialResult | None, b: TrialResult | None) -> bool:
    """Whether ``a`` scores better than ``b`` (a failed or missing trial never is)."""
    if a is None or a.score is None:
        return False
    if b is None or b.score is None:
        return True
    return a.score > b.score if ctx.higher_is_better else a.score < b.score
