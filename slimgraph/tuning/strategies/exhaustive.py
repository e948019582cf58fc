"""``exhaustive``: every combination of op types in FP32, fewest fallbacks first."""

from __future__ import annotations

import itertools

from slimgraph.tuning.space import Candidate
from slimgraph.tuning.strategies import Search, TuningContext, register


@register("exhaustive")
class Exhaustive:
    def search(self, ctx: TuningContext, start: Candidate) -> Search:
        types = ctx.space.op_types
        for size in range(len(types) + 1):
            for chosen in itertools.combinations(types, size):
                label = "all quantized" if not chosen else f"{', '.join(chosen)} in FP32"
                yield start.with_float(op_types=chosen, label=label)
