"""``mse``: order the fallback by each op's output error against FP32, measured in one pass
over calibration data, instead of one full evaluation per op."""

from __future__ import annotations

from slimgraph.tuning.space import Candidate
from slimgraph.tuning.strategies import Search, TuningContext, register


@register("mse")
class Mse:
    def search(self, ctx: TuningContext, start: Candidate) -> Search:
        result = yield start
        if result.meets_goal:
            return
        errors = ctx.op_errors(start)
        order = sorted(errors, key=lambda name: -errors[name])
        kept: list[str] = []
        for name in order:
            kept.append(name)
            yield start.with_float(kept, label=f"{len(kept)} ops with the largest error in FP32")
