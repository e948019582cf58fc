"""``basic``, as in Intel Neural Compressor: the model-wide configuration first, then fall back
to FP32 block by block, then op by op in order of measured sensitivity, accumulating the
fallbacks until the goal is met."""

from __future__ import annotations

from slimgraph.tuning.space import Candidate
from slimgraph.tuning.strategies import (
    Search,
    TrialResult,
    TuningContext,
    better,
    register,
    score_gain,
)


@register("basic")
class Basic:
    def search(self, ctx: TuningContext, start: Candidate) -> Search:
        # 1. Model-wide: the default, then each other range method.
        best: TrialResult = yield start
        for method in ctx.space.methods:
            if method == start.method:
                continue
            result = yield start.with_method(method, label=f"activation ranges: {method}")
            if better(ctx, result, best):
                best = result
        base = best.candidate

        # 2. Whole residual or transformer blocks in FP32, one at a time.
        reference = best.score if best.score is not None else ctx.fp32_score
        gains: dict[str, float] = {}
        for index, block in enumerate(ctx.space.blocks):
            if len(ctx.space.blocks) < 2:
                break
            result = yield base.with_float(block, label=f"block {index + 1} in FP32")
            gain = score_gain(ctx, result, reference)
            for name in block:
                gains[name] = max(gains.get(name, float("-inf")), gain)

        # 3. Each op alone in FP32, to measure its sensitivity.
        sensitivity: dict[str, float] = {}
        for name in ctx.space.names():
            result = yield base.with_float([name], label=f"{name} in FP32")
            sensitivity[name] = score_gain(ctx, result, reference)

        # 4. Accumulate fallbacks, most sensitive first (block gains break ties).
        order = sorted(sensitivity, key=lambda n: (-sensitivity[n], -gains.get(n, 0.0)))
        kept: list[str] = []
        for name in order:
            kept.append(name)
            yield base.with_float(kept, label=f"{len(kept)} most sensitive ops in FP32")
