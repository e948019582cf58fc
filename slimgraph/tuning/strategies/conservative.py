"""``conservative``: start from FP32 and quantize the heaviest ops first, keeping each one
quantized only while the goal still holds. Ops that only move data or add (no
multiply-accumulates) are never held back: they follow their inputs into INT8."""

from __future__ import annotations

from slimgraph.tuning.space import Candidate
from slimgraph.tuning.strategies import Search, TuningContext, register


@register("conservative")
class Conservative:
    def search(self, ctx: TuningContext, start: Candidate) -> Search:
        order = [name for name in ctx.space.heaviest_first() if ctx.space.by_name[name].macs]
        in_float = set(order)
        for name in order:
            trial = in_float - {name}
            quantized = len(order) - len(trial)
            result = yield start.with_float(
                trial, label=f"{quantized} heaviest ops quantized",
                reason="kept in FP32 by conservative tuning: not shown to meet the goal in INT8")
            if result.meets_goal:
                in_float = trial
