"""``bayesian``: Bayesian optimisation over per-op choices (quantized or FP32).

A Gaussian process models the score as a function of the fallback vector; each next
candidate maximises expected improvement among single and double flips of the best vectors
found so far, with a penalty per op in FP32 so that the search prefers quantizing more.
"""

from __future__ import annotations

import numpy as np
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from slimgraph.tuning.space import Candidate
from slimgraph.tuning.strategies import Search, TuningContext, register

_INITIAL_RANDOM = 4
_POOL = 256


@register("bayesian")
class Bayesian:
    def search(self, ctx: TuningContext, start: Candidate) -> Search:
        names = ctx.space.names()
        if not names:
            return
        rng = np.random.default_rng(ctx.space.seed)
        sign = 1.0 if ctx.higher_is_better else -1.0
        tried: dict[tuple[int, ...], float] = {}

        def candidate(vector: np.ndarray, label: str) -> Candidate:
            chosen = [n for n, bit in zip(names, vector, strict=True) if bit]
            return start.with_float(chosen, label=label)

        first = np.zeros(len(names), dtype=int)
        result = yield candidate(first, "all quantized")
        tried[tuple(first)] = sign * (result.score if result.score is not None else -1e9)
        for _ in range(_INITIAL_RANDOM):
            vector = (rng.random(len(names)) < 0.15).astype(int)
            if tuple(vector) in tried:
                continue
            result = yield candidate(vector, f"random: {vector.sum()} ops in FP32")
            tried[tuple(vector)] = sign * (result.score if result.score is not None else -1e9)
        while len(tried) < (1 << min(len(names), 20)):
            vector = self._next(tried, rng, len(names))
            if vector is None:
                return
            result = yield candidate(vector, f"bayesian: {vector.sum()} ops in FP32")
            tried[tuple(vector)] = sign * (result.score if result.score is not None else -1e9)

    @staticmethod
    def _next(tried: dict[tuple[int, ...], float], rng: np.random.Generator,
              size: int) -> np.ndarray | None:
        x = np.array(list(tried), dtype=float)
        y = np.array(list(tried.values()))
        kernel = ConstantKernel() * Matern(length_scale=np.ones(size), nu=1.5) + WhiteKernel()
        model = GaussianProcessRegressor(kernel=kernel, normalize_y=True, random_state=0)
        model.fit(x, y)
        best = x[np.argsort(-y)[:4]]
        pool = []
        for _ in range(_POOL):
            vector = best[rng.integers(len(best))].copy()
            flips = rng.choice(size, size=rng.integers(1, 3), replace=False)
            vector[flips] = 1 - vector[flips]
            if tuple(vector.astype(int)) not in tried:
                pool.append(vector)
        if not pool:
            return None
        pool_arr = np.unique(np.array(pool), axis=0)
        mean, std = model.predict(pool_arr, return_std=True)
        gain = mean - y.max() - 1e-3 * pool_arr.sum(axis=1)
        z = gain / np.maximum(std, 1e-9)
        from scipy.stats import norm

        improvement = gain * norm.cdf(z) + std * norm.pdf(z)
        return pool_arr[int(np.argmax(improvement))].astype(int)
