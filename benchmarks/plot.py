"""Accuracy against speed-up, one point per model and tool, as a PNG."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["ACCURACY_GOAL_PERCENT", "plot_accuracy_vs_speedup"]

logger = logging.getLogger(__name__)

# INC's goal: INT8 accuracy within 1 % of FP32, relative.
ACCURACY_GOAL_PERCENT = -1.0

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def plot_accuracy_vs_speedup(rows: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Draw ``rows`` into a PNG at ``path`` and return the path.

    Each row is ``{model, tool, accuracy_ratio, performance_ratio}``: ``accuracy_ratio`` is the
    fraction (INT8 - FP32) / FP32 (-0.0005 for -0.05 %), drawn in percent on y;
    ``performance_ratio`` is INT8 throughput over FP32 throughput, on x. Rows where either is
    None (a tool that failed) are skipped. Dashed lines mark the accuracy goal and x = 1.
    """
    points = [
        r
        for r in rows
        if r.get("accuracy_ratio") is not None and r.get("performance_ratio") is not None
    ]
    tools = list(dict.fromkeys(str(r["tool"]) for r in points))
    markers = dict(zip(tools, itertools.cycle(_MARKERS), strict=False))

    figure = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for tool in tools:
        mine = [r for r in points if r["tool"] == tool]
        xs = [float(r["performance_ratio"]) for r in mine]
        ys = [100.0 * float(r["accuracy_ratio"]) for r in mine]
        axes.scatter(xs, ys, marker=markers[tool], s=50, label=tool)
        for x, y, row in zip(xs, ys, mine, strict=True):
            axes.annotate(
                str(row["model"]), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8
            )
    axes.axhline(ACCURACY_GOAL_PERCENT, linestyle="--", color="grey", linewidth=1)
    axes.axvline(1.0, linestyle="--", color="grey", linewidth=1)
    axes.set_xlabel("throughput INT8 / FP32")
    axes.set_ylabel("accuracy change (INT8 - FP32) / FP32, %")
    axes.set_title("INT8 accuracy against speed-up")
    if tools:
        axes.legend(title="tool", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    logger.info("plot: %d point(s) of %d tool(s) -> %s", len(points), len(tools), path)
    return path
