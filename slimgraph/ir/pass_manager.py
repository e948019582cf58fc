"""Running passes: verify, run, log what changed, and name the pass when something breaks.

Passes are onnx-ir passes (:class:`onnx_ir.passes.PassBase`): one class, one ``call`` that
returns whether it modified the model. The manager, not each pass, verifies the model before
the first pass and after every pass, logs one line per pass (its figures: the change in node
counts by op type and the time taken), and wraps a failure with the pass's name and what ran
before it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes import PassBase

from slimgraph.errors import PassError, UserError, VerificationError
from slimgraph.ir.verifier import verify

__all__ = ["PassManager", "PassRecord", "op_histogram"]

logger = logging.getLogger(__name__)


def op_histogram(model: ir.Model) -> Counter[str]:
    """Node count by op type (``domain::Op`` outside the default domain), subgraphs included."""
    counts: Counter[str] = Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] += 1
    return counts


@dataclass(frozen=True)
class PassRecord:
    """What one pass did."""

    name: str
    modified: bool
    seconds: float
    delta: dict[str, int]

    def describe(self) -> str:
        if not self.modified:
            return "no change"
        if not self.delta:
            return "changed in place"
        parts = [f"{op} {n:+d}" for op, n in sorted(self.delta.items(), key=lambda kv: kv[1])]
        return ", ".join(parts)


def _pass_name(pass_: PassBase) -> str:
    return getattr(pass_, "name", None) or type(pass_).__name__


class PassManager:
    """Runs passes in order on a model, in place.

    ``verify`` runs the verifier before the first pass and after each pass that changed the
    model; turn it off only for speed on models already known to be well formed.
    """

    def __init__(self, passes: Sequence[PassBase], *, verify: bool = True) -> None:
        self.passes = list(passes)
        self.verify = verify

    def run(self, model: ir.Model) -> list[PassRecord]:
        if self.verify:
            self._verify(model, after=None)
        records: list[PassRecord] = []
        for pass_ in self.passes:
            records.append(self._run_one(pass_, model, records))
        return records

    def _run_one(self, pass_: PassBase, model: ir.Model, done: list[PassRecord]) -> PassRecord:
        name = _pass_name(pass_)
        before = op_histogram(model)
        start = time.perf_counter()
        try:
            result = pass_(model)
        except UserError:
            raise
        except Exception as exc:
            ran = ", ".join(r.name for r in done) or "nothing"
            raise PassError(f"pass {name} failed (after {ran}): {exc}") from exc
        if result.model is not model:
            raise PassError(f"pass {name} returned a new model; passes here work in place")
        seconds = time.perf_counter() - start
        after = op_histogram(model)
        delta = {op: after[op] - before[op] for op in before | after if after[op] != before[op]}
        record = PassRecord(name, bool(result.modified), seconds, delta)
        logger.info("pass %s: %s (%.2f s)", name, record.describe(), seconds)
        if self.verify and result.modified:
            self._verify(model, after=name)
        return record

    @staticmethod
    def _verify(model: ir.Model, *, after: str | None) -> None:
        try:
            verify(model)
        except VerificationError as exc:
            if after is None:
                raise
            raise PassError(f"pass {after} left a malformed model: {exc}") from exc
