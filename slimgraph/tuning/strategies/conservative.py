"""``conservative``: start from FP32 and quantize the heaviest ops first, keeping each one
quantized only while the goal still holds."""

from __future__ import annotations

from slimgraph.tuning.space import Candidate
from slimgraph.tuning.strategies import Search, TuningContext, register


@register("conservative")
class Conservative:
    def search(self, ctx: TuningContext, start: Candidate) -> Search:
        order = ctx.space.heaviest_first()
        in_float = set(order)
        for name in order:
            trial = in_float - {name}
            quantized = len(order) - len(trial)
            result = yield start.with_float(trial, label=f"{quantized} heaviest ops quantized")
            if result.meets_goal:
                in_float = trial
