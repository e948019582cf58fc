"""The validated-models suite: one command builds the whole table, or a subset of its rows.

    SLIMGRAPH_DATA=../shared/data python benchmarks/run.py                 # every row
    SLIMGRAPH_DATA=../shared/data python benchmarks/run.py --rows mnist-8,cifar10-resnet20

For each row the suite compiles the model with slimgraph, quantizes the same FP32 model
with each peer (onnxruntime's ``quantize_static`` with its defaults and with its best
settings for this CPU, ``quantize_dynamic`` for transformers, NNCF) on the same calibration
samples, scores every model on the same evaluation data in one pass, and times them all
interleaved in pinned instances under each core layout. It writes ``RESULTS.md``,
``results.json`` and ``results.png`` beside this file (or in ``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import harness, peers  # noqa: E402
from benchmarks.plot import plot_accuracy_vs_speedup  # noqa: E402
from slimgraph import ir as sir  # noqa: E402
from slimgraph import progress  # noqa: E402
from slimgraph.backends.onnxruntime import OrtExecutor, OrtOptions  # noqa: E402
from slimgraph.build import feeds_for  # noqa: E402
from slimgraph.compiler import _fit_batch_sizes, _open_data, compile_spec  # noqa: E402
from slimgraph.evaluate import evaluate  # noqa: E402
from slimgraph.spec import Spec, load_spec  # noqa: E402
from slimgraph.target import detect  # noqa: E402

logger = logging.getLogger("benchmarks.run")

# A row meets its goal when slimgraph's INT8 keeps this much of FP32's score.
ACCURACY_GOAL = 0.01
# Two tools are at equal accuracy when their scores differ by less than this (relative).
ACCURACY_TIE = 0.001
# Timing: many short windows rather than a few long ones. On a shared machine a slow spell
# lasts seconds; short windows interleaved model by model put it in few repeats of every
# model, and the paired ratios of a repeat cancel it.
WINDOW_S = 0.6
REPEATS = 15
MAX_ITERATIONS = 20_000


@dataclass(frozen=True)
class Row:
    name: str
    spec: str
    weights: str  # "pretrained" or "random"
    transformer: bool = False


ROWS: tuple[Row, ...] = (
    Row("mnist-8", "specs/mnist.yaml", "pretrained"),
    Row("cifar10-resnet20", "specs/cifar10_resnet20.yaml", "pretrained"),
    Row("cifar10-resnet56", "specs/cifar10_resnet56.yaml", "pretrained"),
    Row("efficientnet-lite0", "specs/efficientnet_lite0.yaml", "pretrained"),
    Row("minilm-l6-sst2", "specs/minilm_sst2.yaml", "pretrained", transformer=True),
    Row("minilm-l6-mrpc", "specs/minilm_mrpc.yaml", "pretrained", transformer=True),
    Row("resnet18", "benchmarks/specs/resnet18.yaml", "random"),
    Row("resnet50", "benchmarks/specs/resnet50.yaml", "random"),
    Row("mobilenet_v2", "benchmarks/specs/mobilenet_v2.yaml", "random"),
    Row("vgg16", "benchmarks/specs/vgg16.yaml", "random"),
    Row("bert-base", "benchmarks/specs/bert_base.yaml", "random", transformer=True),
    Row("distilbert", "benchmarks/specs/distilbert.yaml", "random", transformer=True),
)
QUICK_ROWS = ("mnist-8", "cifar10-resnet20")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("onnxscript", "onnx_ir", "torch", "transformers", "nncf", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    progress.enable(sys.stderr.isatty())
    os.environ.setdefault("SLIMGRAPH_DATA", str(REPO.parent / "shared" / "data"))
    rows = _chosen_rows(args.rows)
    out = Path(args.out).resolve()
    work = Path(args.work).resolve()
    layouts = [int(c) for c in args.cores_per_instance.split(",")]
    started = time.perf_counter()
    results = []
    for row in rows:
        logger.info("== %s", row.name)
        results.append(run_row(row, work / row.name, layouts=layouts, quick=args.quick,
                               with_peers=not args.no_peers))
    summary = {
        "command": "python benchmarks/run.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.perf_counter() - started,
        "machine": harness.machine_info().as_dict(),
        "goal": ACCURACY_GOAL,
        "rows": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "results.json", json.dumps(summary, indent=2, default=str) + "\n")
    _write(out / "RESULTS.md", render(summary))
    plot_accuracy_vs_speedup(_plot_rows(summary), out / "results.png")
    logger.info("wrote %s, results.json and results.png (%.0f s)", out / "RESULTS.md",
                summary["seconds"])
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="all", help="comma-separated row names, 'all' "
                        f"(default) or 'quick' ({', '.join(QUICK_ROWS)})")
    parser.add_argument("--quick", action="store_true", help="short timings (3 repeats)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer quantizers")
    parser.add_argument("--cores-per-instance", default="1,2", help="layouts to time, as "
                        "cores per instance; instances fill the available cores (default 1,2)")
    parser.add_argument("--out", default=str(REPO / "benchmarks"), help="where RESULTS.md, "
                        "results.json and results.png go")
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "work"),
                        help="working folder for compiled and peer models")
    return parser


def _chosen_rows(names: str) -> list[Row]:
    by_name = {r.name: r for r in ROWS}
    if names == "all":
        return list(ROWS)
    wanted = QUICK_ROWS if names == "quick" else [n.strip() for n in names.split(",") if n]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; rows are {', '.join(by_name)}")
    return [by_name[n] for n in wanted]


# -- one row --------------------------------------------------------------------------------


def run_row(row: Row, work: Path, *, layouts: Sequence[int], quick: bool,
            with_peers: bool) -> dict[str, Any]:
    spec = load_spec(REPO / row.spec)
    spec = spec.model_copy(update={"benchmark": spec.benchmark.model_copy(
        update={"enabled": False})})
    work.mkdir(parents=True, exist_ok=True)
    result = compile_spec(spec, work / "slimgraph", fresh=True)
    fp32 = work / "slimgraph" / "model.fp32.onnx"
    models: dict[str, Path] = {"slimgraph": work / "slimgraph" / "model.int8.onnx"}
    failures: dict[str, str] = {}
    spec = _fit_batch_sizes(spec, sir.load(fp32))
    if with_peers:
        calibration = _calibration_feeds(spec, fp32)
        for name, made in _peers(row, fp32, calibration, work).items():
            if isinstance(made, peers.PeerFailure):
                failures[name] = f"{made.error}: {made.message}"
            else:
                models[name] = made
    scores = _score(spec, fp32, models)
    speed = {str(c): _time(spec, fp32, models, c, quick) for c in layouts
             if c <= len(os.sched_getaffinity(0))}
    return {
        "name": row.name,
        "weights": row.weights,
        "metric": spec.metric.name,
        "samples": scores["samples"],
        "fp32": {"score": scores["fp32"], "speed": {k: v["fp32"] for k, v in speed.items()}},
        "tools": {
            tool: {
                "score": scores.get(tool),
                "accuracy_ratio": _ratio(scores.get(tool), scores["fp32"]),
                "speed": {k: v[tool] for k, v in speed.items() if tool in v},
            } for tool in models
        },
        "failures": failures,
        "slimgraph_report": str(work / "slimgraph" / "report.md"),
        "slimgraph_choice": {k: result.report.quantization.get(k)
                             for k in ("approach", "activation", "weight", "format")},
        "float_ops": [f"{op.op_type} x{op.count}: {op.reason}"
                      for op in result.report.float_ops if not op.reason.startswith("no ")],
    }


def _peers(row: Row, fp32: Path, calibration: list[dict[str, np.ndarray]],
           work: Path) -> dict[str, Path | peers.PeerFailure]:
    target = detect()
    made: dict[str, Path | peers.PeerFailure] = {
        "ort-static-defaults": peers.ort_static_defaults(fp32, calibration,
                                                         work / "ort_defaults.onnx"),
        "ort-static-best": peers.ort_static_best(fp32, calibration, work / "ort_best.onnx",
                                                 target),
    }
    if row.transformer:
        made["ort-dynamic"] = peers.ort_dynamic(fp32, work / "ort_dynamic.onnx", target)
    import nncf

    model_type = nncf.ModelType.TRANSFORMER if row.transformer else None
    made["nncf"] = peers.nncf_quantize(fp32, calibration, work / "nncf.onnx",
                                       model_type=model_type)
    return made


def _calibration_feeds(spec: Spec, fp32: Path) -> list[dict[str, np.ndarray]]:
    """The calibration samples slimgraph used, as feed dicts with the model's dtypes."""
    _, calibration = _open_data(spec)
    session = OrtExecutor(OrtOptions()).session(fp32)
    batch_size = spec.quantization.calibration.batch_size
    return [session.bind(feeds_for(b.inputs, session.input_names))
            for b in calibration.batches(batch_size)]


def _score(spec: Spec, fp32: Path, models: dict[str, Path]) -> dict[str, Any]:
    executor = OrtExecutor(OrtOptions(threads=0))
    sessions = {"fp32": executor.session(fp32)}
    sessions.update({name: executor.session(path) for name, path in models.items()})
    source, _ = _open_data(spec)
    evaluation = evaluate(source, sessions, spec.metric.build, batch_size=spec.data.batch_size,
                          reference="fp32")
    return {**evaluation.scores, "samples": evaluation.samples}


def _time(spec: Spec, fp32: Path, models: dict[str, Path], cores: int,
          quick: bool) -> dict[str, dict[str, Any]]:
    source, _ = _open_data(spec)
    session = OrtExecutor(OrtOptions()).session(fp32)
    batch = next(iter(source.batches(spec.benchmark.batch_size)))
    feeds = session.bind(feeds_for(batch.inputs, session.input_names))
    latency = _probe(session, feeds)
    iterations = int(min(MAX_ITERATIONS, max(5, WINDOW_S / latency)))
    timed = harness.measure({"fp32": fp32, **models}, feeds, cores_per_instance=cores,
                            warmup=max(3, iterations // 10), iterations=iterations,
                            repeats=3 if quick else REPEATS)
    base = timed["fp32"].repeats
    return {name: {"samples_per_second": r.samples_per_second,
                   "ratio": harness.paired_ratio(r.repeats, base).median,
                   "repeats": list(r.repeats),
                   "latency_p50_ms": r.latency_p50_ms, "latency_p90_ms": r.latency_p90_ms,
                   "waiting": statistics.median(r.waiting) if r.waiting else None,
                   "layout": r.layout.describe(), "iterations": iterations}
            for name, r in timed.items()}


def _probe(session: Any, feeds: dict[str, np.ndarray]) -> float:
    session.run(feeds)
    start = time.perf_counter()
    for _ in range(5):
        session.run(feeds)
    return (time.perf_counter() - start) / 5


def _ratio(score: float | None, fp32: float) -> float | None:
    if score is None or fp32 == 0:
        return None
    return (score - fp32) / abs(fp32)


# -- rendering ------------------------------------------------------------------------------

TOOL_NAMES = {
    "slimgraph": "slimgraph",
    "ort-static-defaults": "onnxruntime quantize_static, defaults",
    "ort-static-best": "onnxruntime quantize_static, best settings for this CPU",
    "ort-dynamic": "onnxruntime quantize_dynamic",
    "nncf": "NNCF nncf.quantize",
}


def render(summary: dict[str, Any]) -> str:
    machine = summary["machine"]
    layouts = sorted({k for row in summary["rows"] for k in row["fp32"]["speed"]}, key=int)
    main_layout = layouts[0] if layouts else None
    lines = [
        "# Validated models",
        "",
        f"Generated by `{summary['command'].strip()}` on {summary['date']} in "
        f"{summary['seconds'] / 60:.0f} min. Machine: {machine['cpu']} "
        f"({machine['int8_class']}), {machine['cores_available']} cores; "
        + ", ".join(f"{k} {v}" for k, v in machine["libraries"].items()) + ".",
        "",
        "Batch 1. Throughput is summed over instances pinned to their own cores, median of "
        "repeats, every model timed interleaved with the others in the same run (short "
        "windows, one model after another in each repeat). INT8/FP32 is the median over "
        "repeats of the ratio of the two windows of a repeat. Ratios are what carries over "
        "between machines, not absolute samples/s. Rows marked *random "
        "weights* are speed-only: no offline pretrained weights exist, their inputs are "
        "synthetic, and their accuracy columns are cosine agreement with FP32.",
        "",
    ]
    if main_layout is not None:
        lines += _inc_table(summary, main_layout)
    lines += _peer_tables(summary, layouts)
    lines += _verdicts(summary, main_layout)
    lines += ["", "![accuracy change against speed-up](results.png)", "",
              "See [NOTES.md](NOTES.md) for what the figures mean and why gaps exist.", ""]
    return "\n".join(lines)


def _fmt_score(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if metric in ("cosine", "mse") else f"{value * 100:.2f}%"


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value * 100:+.2f}%"


def _inc_table(summary: dict[str, Any], layout: str) -> list[str]:
    lines = [
        f"## slimgraph INT8 ({_layout_name(summary, layout)})",
        "",
        "| model | weights | metric | FP32 accuracy | INT8 accuracy | accuracy ratio "
        "(INT8-FP32)/FP32 | FP32 samples/s | INT8 samples/s | INT8/FP32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        ours = row["tools"]["slimgraph"]
        fp32_speed = row["fp32"]["speed"].get(layout, {})
        speed = ours["speed"].get(layout, {})
        lines.append(
            f"| {row['name']} | {row['weights']} | {row['metric']} | "
            f"{_fmt_score(row['fp32']['score'], row['metric'])} | "
            f"{_fmt_score(ours['score'], row['metric'])} | {_fmt_ratio(ours['accuracy_ratio'])}"
            f" | {fp32_speed.get('samples_per_second', float('nan')):.1f} | "
            f"{speed.get('samples_per_second', float('nan')):.1f} | "
            f"{speed.get('ratio', float('nan')):.2f}x |")
    return [*lines, ""]


def _layout_name(summary: dict[str, Any], layout: str) -> str:
    for row in summary["rows"]:
        speed = row["fp32"]["speed"].get(layout)
        if speed:
            return speed["layout"]
    return f"{layout} core(s) per instance"


def _peer_tables(summary: dict[str, Any], layouts: list[str]) -> list[str]:
    header = "| model | tool | INT8 accuracy | accuracy ratio | " + " | ".join(
        f"samples/s ({_layout_name(summary, k)}) | INT8/FP32" for k in layouts) + " |"
    lines = ["## slimgraph and its peers, same models, same data, same run", "", header,
             "|" + "---|" * (4 + 2 * len(layouts))]
    for row in summary["rows"]:
        fp32_cells = " | ".join(
            f"{row['fp32']['speed'].get(k, {}).get('samples_per_second', float('nan')):.1f} | "
            "1.00x" for k in layouts)
        lines.append(f"| {row['name']} | FP32 | {_fmt_score(row['fp32']['score'], row['metric'])}"
                     f" | | {fp32_cells} |")
        for tool, data in row["tools"].items():
            cells = " | ".join(
                f"{data['speed'].get(k, {}).get('samples_per_second', float('nan')):.1f} | "
                f"{data['speed'].get(k, {}).get('ratio', float('nan')):.2f}x" for k in layouts)
            lines.append(f"| | {TOOL_NAMES.get(tool, tool)} | "
                         f"{_fmt_score(data['score'], row['metric'])} | "
                         f"{_fmt_ratio(data['accuracy_ratio'])} | {cells} |")
        for tool, error in row["failures"].items():
            lines.append(f"| | {TOOL_NAMES.get(tool, tool)} | failed: {error} | | "
                         + " | ".join(" | " for _ in layouts) + " |")
    return [*lines, ""]


def _verdicts(summary: dict[str, Any], layout: str | None) -> list[str]:
    lines = ["## Verdicts", "",
             f"A row meets its goal when slimgraph's INT8 stays within {ACCURACY_GOAL:.0%} "
             "relative of FP32, runs faster than FP32, and is at least as fast as every peer "
             "whose accuracy is equal or better. Speeds are compared repeat by repeat (the "
             "windows of a repeat ran back to back): a peer counts as faster only when the "
             "order-statistics interval of the median paired ratio (its confidence printed "
             "beside it: 96% with 15 repeats) lies above 1.0; otherwise the run cannot tell "
             "the two apart and the verdict says so.", ""]
    for row in summary["rows"]:
        lines.append(f"- **{row['name']}**: {verdict(row, layout)}")
    return lines


def verdict(row: dict[str, Any], layout: str | None) -> str:
    ours = row["tools"]["slimgraph"]
    problems, ties = [], []
    ratio = ours["accuracy_ratio"]
    if row["weights"] == "pretrained" and ratio is not None and ratio < -ACCURACY_GOAL:
        problems.append(f"accuracy ratio {ratio * 100:+.2f}% is outside the goal")
    our_speed = ours["speed"].get(layout, {}) if layout else {}
    if not our_speed:
        return _say(problems, ties)
    against_fp32 = _speed_ratio(our_speed, row["fp32"]["speed"].get(layout, {}))
    if against_fp32.median < 1.0:
        problems.append(f"INT8 runs slower than FP32 ({against_fp32.median:.2f}x)")
    for tool, data in row["tools"].items():
        theirs = data["speed"].get(layout, {})
        if tool == "slimgraph" or data["score"] is None or not theirs:
            continue
        if (data["accuracy_ratio"] or 0) < (ratio or 0) - ACCURACY_TIE:
            continue
        faster = _speed_ratio(theirs, our_speed)
        if faster.median <= 1.0:
            continue
        said = (f"{TOOL_NAMES[tool]} is {faster.describe()} as fast at "
                f"{_fmt_ratio(data['accuracy_ratio'])} accuracy")
        (problems if faster.low > 1.0 else ties).append(said)
    return _say(problems, ties)


def _speed_ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> harness.PairedRatio:
    return harness.paired_ratio(numerator["repeats"], denominator["repeats"])


def _say(problems: list[str], ties: list[str]) -> str:
    tied = ("; within measurement noise: " + "; ".join(ties)) if ties else ""
    if not problems:
        return f"meets the goal{tied}."
    return "does NOT meet it: " + "; ".join(problems) + tied + "."


def _plot_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    layouts = sorted({k for row in summary["rows"] for k in row["fp32"]["speed"]}, key=int)
    if not layouts:
        return []
    rows = []
    for row in summary["rows"]:
        for tool, data in row["tools"].items():
            rows.append({"model": row["name"], "tool": tool,
                         "accuracy_ratio": data["accuracy_ratio"],
                         "performance_ratio": data["speed"].get(layouts[0], {}).get("ratio")})
    return rows


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
