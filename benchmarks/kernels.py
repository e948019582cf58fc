"""Where the time of an ONNX model goes in onnxruntime, and how models compare side by side.

For each model: the ops onnxruntime actually runs after its own fusions (QDQ pairs become
QLinearConv and friends, float convolutions go to the blocked NCHWc layout), and the kernel
time of each op type and of the slowest nodes from onnxruntime's profiler, median over runs
(the models take turns run by run). Then all models are timed on one pinned core,
interleaved, and each is compared with the first as a paired ratio::

    python benchmarks/kernels.py benchmarks/work/cifar10-resnet56/slimgraph/model.int8.onnx \\
        benchmarks/work/cifar10-resnet56/ort_best.onnx --top 5

Inputs are synthetic (floats in [0, 1), integers 1), with every free dimension set to 1:
kernel times do not depend on the values. The figures in NOTES.md come from this command.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import harness  # noqa: E402

__all__ = ["KernelProfile", "main", "profile", "synthetic_feeds"]

logger = logging.getLogger("benchmarks.kernels")


@dataclass(frozen=True)
class KernelProfile:
    """One model as onnxruntime runs it: op counts after fusion and kernel microseconds."""

    path: Path
    fused_ops: dict[str, int]
    by_op_type: dict[str, float]
    by_node: list[tuple[float, str, str]]  # (microseconds, op type, node name), slowest first

    @property
    def total_us(self) -> float:
        return sum(self.by_op_type.values())


def synthetic_feeds(path: Path) -> dict[str, np.ndarray]:
    """One batch of inputs for the model at ``path``: free dimensions 1."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in value.shape]
        if value.type == "tensor(float)":
            feeds[value.name] = np.random.default_rng(0).random(shape, dtype=np.float32)
        elif value.type in ("tensor(int64)", "tensor(int32)"):
            feeds[value.name] = np.ones(shape, dtype=np.int64 if "64" in value.type else np.int32)
        else:
            raise ValueError(f"{path}: input {value.name!r} has type {value.type}; expected "
                             "float, int32 or int64")
    return feeds


def profile(paths: Sequence[Path], feeds: dict[str, np.ndarray],
            runs: int = 200) -> list[KernelProfile]:
    """Profile ``runs`` inferences of each model on one thread, the models taking turns run by
    run so that a slow spell of the machine hits them all; kernel times are medians per node.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="kernels-") as tmp:
        sessions = []
        for index, path in enumerate(paths):
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tmp, f"profile{index}")
            options.optimized_model_filepath = os.path.join(tmp, f"optimized{index}.onnx")
            sessions.append((ort.InferenceSession(str(path), options,
                                                  providers=["CPUExecutionProvider"]), options))
        for _ in range(runs):
            for session, _ in sessions:
                session.run(None, feeds)
        found = []
        for path, (session, options) in zip(paths, sessions, strict=True):
            events = json.loads(Path(session.end_profiling()).read_text())
            fused = collections.Counter(
                n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
            found.append(_summarise(path, events, fused))
    return found


def _summarise(path: Path, events: list[dict], fused: collections.Counter[str]) -> KernelProfile:
    durations: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            durations[(name.removesuffix("_kernel_time"), event["args"]["op_name"])].append(
                float(event["dur"]))
    by_node = sorted(((statistics.median(d), op, node) for (node, op), d in durations.items()),
                     reverse=True)
    by_op: collections.Counter[str] = collections.Counter()
    for micros, op, _ in by_node:
        by_op[op] += micros
    return KernelProfile(path, dict(fused.most_common()), dict(by_op.most_common()), by_node)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="ONNX models with the same inputs")
    parser.add_argument("--top", type=int, default=5, help="slowest nodes to list per model")
    parser.add_argument("--runs", type=int, default=200, help="profiled runs per model")
    parser.add_argument("--repeats", type=int, default=15, help="timing repeats (0: none)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.models if not p.is_file()]
    if missing:
        print(f"models: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2

    feeds = synthetic_feeds(args.models[0])
    for found in profile(args.models, feeds, args.runs):
        path = found.path
        print(f"{path}\n  ops after onnxruntime's fusions: "
              + ", ".join(f"{op} {n}" for op, n in found.fused_ops.items()))
        print(f"  kernel time {found.total_us:.1f} us: "
              + ", ".join(f"{op} {us:.1f}" for op, us in found.by_op_type.items()))
        for micros, op, node in found.by_node[:args.top]:
            print(f"    {micros:8.1f} us  {op:<20} {node}")
    if args.repeats and len(args.models) > 1:
        _compare(args.models, feeds, args.repeats)
    return 0


def _compare(models: Sequence[Path], feeds: dict[str, np.ndarray], repeats: int) -> None:
    labels = {f"{i}: {p}": p for i, p in enumerate(models)}
    probe = profile(models[:1], feeds, runs=5)[0].total_us * 1e-6
    iterations = int(min(20_000, max(5, 0.6 / max(probe, 1e-6))))
    timed = harness.measure(labels, feeds, cores_per_instance=1, instances=1,
                            warmup=max(3, iterations // 10), iterations=iterations,
                            repeats=repeats)
    first = next(iter(timed.values()))
    print(f"one core, one thread, {repeats} repeats of {iterations} runs, paired with the first:")
    for label, result in timed.items():
        paired = harness.paired_ratio(result.repeats, first.repeats)
        print(f"  {result.latency_p50_ms:.3f} ms p50  {paired.describe()}  {label}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
