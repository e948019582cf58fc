"""Accuracy against speed-up, one point per model and tool, as a PNG."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

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
    None (a tool that failed) are skipped. Each model gets a panel of its own, since the tools
    of one model crowd within a fraction of a percent; one marker per tool across panels.
    Dashed lines mark the accuracy goal and x = 1.
    """
    points = [
        r
        for r in rows
        if r.get("accuracy_ratio") is not None and r.get("performance_ratio") is not None
    ]
    tools = list(dict.fromkeys(str(r["tool"]) for r in points))
    models = list(dict.fromkeys(str(r["model"]) for r in points))
    markers = dict(zip(tools, itertools.cycle(_MARKERS), strict=False))
    columns = min(4, max(1, len(models)))
    lines = max(1, -(-len(models) // columns))

    figure = Figure(figsize=(3.2 * columns, 2.6 * lines + 0.8), dpi=110)
    FigureCanvasAgg(figure)
    for index, model in enumerate(models, start=1):
        axes = figure.add_subplot(lines, columns, index)
        for tool_index, tool in enumerate(tools):
            mine = [r for r in points if r["model"] == model and r["tool"] == tool]
            axes.scatter(
                [float(r["performance_ratio"]) for r in mine],
                [100.0 * float(r["accuracy_ratio"]) for r in mine],
                marker=markers[tool],
                s=45,
                color=f"C{tool_index}",
                label=tool,
            )
        axes.axhline(ACCURACY_GOAL_PERCENT, linestyle="--", color="grey", linewidth=1)
        axes.axvline(1.0, linestyle="--", color="grey", linewidth=1)
        axes.set_title(model, fontsize=9)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    figure.supxlabel("throughput INT8 / FP32", fontsize=9)
    figure.supylabel("accuracy change (INT8 - FP32) / FP32, %", fontsize=9)
    if tools:
        handles = [
            Line2D([], [], linestyle="", marker=markers[t], color=f"C{i}", label=t)
            for i, t in enumerate(tools)
        ]
        figure.legend(handles=handles, loc="upper center", ncols=min(len(tools), 5), fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.6 * lines + 0.8)))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    logger.info("plot: %d point(s) of %d tool(s) -> %s", len(points), len(tools), path)
    return path
