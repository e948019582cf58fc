"""``random``: random combinations of op types in FP32, each tried once, seeded."""

from __future__ import annotations

import numpy as np

from slimgraph.tuning.space import Candidate
from slimgraph.tuning.strategies import Search, TuningContext, register


@register("random")
class Random:
    def search(self, ctx: TuningContext, start: Candidate) -> Search:
        types = ctx.space.op_types
        rng = np.random.default_rng(ctx.space.seed)
        yield start
        seen = {0}
        total = 1 << len(types)
        while len(seen) < total:
            mask = int(rng.integers(0, total))
            if mask in seen:
                continue
            seen.add(mask)
            chosen = [t for i, t in enumerate(types) if mask >> i & 1]
            yield start.with_float(op_types=chosen, label=f"{', '.join(chosen)} in FP32")
