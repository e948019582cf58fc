"""The compile report: the validated-models row, what was quantized and why, and everything
needed to reproduce the numbers (library versions, CPU, threads, seed, spec hash)."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["CompileReport", "FloatOp", "ModelScore", "environment", "write_text_atomic"]


@dataclass(frozen=True)
class ModelScore:
    """One model's row entries."""

    accuracy: float
    throughput: float | None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    size_bytes: int | None = None


@dataclass(frozen=True)
class FloatOp:
    """Nodes of one op type left in FP32 for one reason."""

    op_type: str
    reason: str
    count: int
    nodes: list[str]


@dataclass
class CompileReport:
    model: str
    metric: str
    higher_is_better: bool
    fp32: ModelScore
    int8: ModelScore
    evaluated_samples: int
    quantization: dict[str, Any]
    ops: dict[str, Any]
    float_ops: list[FloatOp]
    passes: list[dict[str, Any]]
    stages: dict[str, float]
    environment: dict[str, Any]
    benchmark: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy_ratio(self) -> float:
        """(INT8 - FP32) / FP32, as in Intel Neural Compressor's tables."""
        if self.fp32.accuracy == 0:
            return 0.0 if self.int8.accuracy == 0 else float("inf")
        return (self.int8.accuracy - self.fp32.accuracy) / abs(self.fp32.accuracy)

    @property
    def performance_ratio(self) -> float | None:
        if not self.fp32.throughput or self.int8.throughput is None:
            return None
        return self.int8.throughput / self.fp32.throughput

    def warnings(self) -> list[str]:
        """What a user must know before deploying the INT8 model, one sentence each."""
        found = []
        perf = self.performance_ratio
        if perf is not None and perf < 1.0:
            found.append(
                f"INT8 runs slower than FP32 on this target ({perf:.2f}x): no placement of "
                "integer ops that tuning tried paid for its conversions; deploy the FP32 model "
                "unless size matters more than speed")
        if self.tuning and self.tuning.get("met_goal") is False:
            found.append("no trial met the accuracy goal: this is the best model found, "
                         "not one that meets the goal")
        return found

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["accuracy_ratio"] = self.accuracy_ratio
        data["performance_ratio"] = self.performance_ratio
        data["warnings"] = self.warnings()
        return data

    def row(self) -> str:
        """The validated-models row in Markdown."""
        perf = self.performance_ratio
        return (
            f"| {self.model} | {_pct(self.fp32.accuracy)} | {_pct(self.int8.accuracy)} | "
            f"{_ratio(self.accuracy_ratio)} | {_rate(self.fp32.throughput)} | "
            f"{_rate(self.int8.throughput)} | {f'{perf:.2f}x' if perf else 'n/a'} |"
        )

    def to_markdown(self) -> str:
        q = self.quantization
        lines = [
            f"# slimgraph compile report: {self.model}",
            "",
            "| model | FP32 accuracy | INT8 accuracy | accuracy ratio (INT8-FP32)/FP32 | "
            "FP32 samples/s | INT8 samples/s | INT8/FP32 |",
            "|---|---|---|---|---|---|---|",
            self.row(),
            "",
            *[f"**Warning:** {text}.\n" for text in self.warnings()],
            f"Accuracy is {self.metric} on {self.evaluated_samples} samples. Throughput: "
            f"{_describe_benchmark(self.benchmark)}.",
            "",
            "## Quantization",
            "",
            f"- target: {q.get('target')}; {q.get('reason')}",
            f"- approach: {q.get('approach')} ({q.get('approach_reason')})",
            "- recipes: " + (", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in
                                        (q.get("recipes") or {}).items()) or "none"),
            f"- activations: {q.get('activation')}; weights: {q.get('weight')}; "
            f"format: {q.get('format')}",
            f"- calibration: {q.get('calibration')}",
            f"- nodes quantized: {self.ops.get('quantized_nodes')} of "
            f"{self.ops.get('compute_nodes')}; model size {_mb(self.fp32.size_bytes)} -> "
            f"{_mb(self.int8.size_bytes)}",
            f"- weights given 7 bits by the saturation guard: "
            f"{self.ops.get('seven_bit_weight_nodes', 0)} node(s)",
            "",
            "## Ops left in FP32",
            "",
        ]
        decided = [op for op in self.float_ops if not op.reason.startswith("no ")]
        no_kernel = [op for op in self.float_ops if op.reason.startswith("no ")]
        if decided:
            lines += ["| op type | count | reason | nodes |", "|---|---|---|---|"]
            for op in decided:
                shown = ", ".join(op.nodes[:4]) + (", ..." if len(op.nodes) > 4 else "")
                lines.append(f"| {op.op_type} | {op.count} | {op.reason} | {shown} |")
        else:
            lines.append("Every op with an integer kernel runs on integers.")
        if no_kernel:
            lines += ["", "No integer kernel in this format (left in FP32): " + ", ".join(
                f"{op.op_type} x{op.count}" for op in no_kernel) + "."]
        lines += self._tuning_lines()
        lines += ["", "## Passes", "", "| pass | change | seconds |", "|---|---|---|"]
        lines += [f"| {p['name']} | {p['change']} | {p['seconds']:.2f} |" for p in self.passes]
        lines += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {name} | {sec:.1f} |" for name, sec in self.stages.items()]
        env = self.environment
        lines += [
            "",
            "## Environment",
            "",
            f"- CPU: {env.get('cpu')} ({env.get('int8_class')}); flags: "
            f"{', '.join(env.get('cpu_flags', []))}",
            f"- threads: {env.get('threads')}; providers: {', '.join(env.get('providers', []))}",
            f"- seed: {env.get('seed')}; spec hash: {env.get('spec_hash')}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
            "",
        ]
        return "\n".join(lines)


    def _tuning_lines(self) -> list[str]:
        t = self.tuning
        if not t:
            return []
        verdict = "met" if t["met_goal"] else "NOT met: this is the most accurate model found"
        lines = [
            "",
            "## Tuning",
            "",
            f"Goal: {t['goal']} against FP32, scored on {t['scored_on']}; {verdict}. Strategy "
            f"{t['strategy']}, objective {t['objective']}; stopped because "
            f"{t['stopped_because']}. Chosen: trial {t['best_trial']}.",
            "",
            "| trial | change | score | ratio | goal | objective | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for tr in t["trials"]:
            if tr["error"]:
                lines.append(f"| {tr['index']} | {tr['change']} | failed: {tr['error']} | | | | "
                             f"{tr['seconds']:.1f} |")
                continue
            objective = "" if tr["objective"] is None else f"{tr['objective']:.3g}"
            mark = " (resumed)" if tr["resumed"] else ""
            ratio = ("n/a" if tr["accuracy_ratio"] is None
                     else f"{tr['accuracy_ratio'] * 100:+.2f}%")
            lines.append(
                f"| {tr['index']}{mark} | {tr['change']} | {tr['score']:.4g} | {ratio} | "
                f"{'met' if tr['meets_goal'] else 'missed'} | {objective} | "
                f"{tr['seconds']:.1f} |")
        return lines


def _ratio(value: float) -> str:
    return "n/a" if value in (float("inf"), float("-inf")) else f"{value * 100:+.2f}%"


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _mb(size: int | None) -> str:
    return "n/a" if size is None else f"{size / 1e6:.2f} MB"


def _describe_benchmark(bench: dict[str, Any]) -> str:
    if not bench:
        return "not measured"
    return (f"batch {bench['batch_size']}, {bench['threads']} thread(s), {bench['iterations']} "
            f"runs x {bench['repeats']} repeats after {bench['warmup']} warm-up runs, FP32 and "
            "INT8 interleaved, median of repeats")


_PACKAGES = ("slimgraph", "numpy", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "torch",
             "pydantic")


def environment(**extra: Any) -> dict[str, Any]:
    """Library versions and the Python and OS running them, plus ``extra`` entries."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
        **extra,
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"
