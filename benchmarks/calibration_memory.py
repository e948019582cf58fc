"""Peak memory of calibration against the number of samples: it must not grow.

Calibration keeps running statistics with histograms of fixed size, so its peak memory should
depend on the batch, not on how many batches stream through. Each sample count runs in a
fresh process (peak RSS only ever rises within one); the process builds a small CNN directly
with ``onnx.helper`` (random weights, no torch), lifts it into the IR, and runs
:func:`~slimgraph.passes.calibrate.collect_statistics` with histograms over every Conv
output::

    python benchmarks/calibration_memory.py --samples 100 1000 --json memory.json

One line per count, then the growth from the smallest count to the largest. The exit status
is 1 when that growth exceeds ``--max-growth`` (10 % by default).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Measurement", "build_cnn", "main", "measure", "run_child"]

logger = logging.getLogger(__name__)

SEED = 0
# Channels of each Conv, input first: six 3x3 convolutions, 3 -> 32 -> 64 channels.
CHANNELS = (3, 32, 32, 64, 64, 64, 64)
SIZE = 64  # input height and width


@dataclass(frozen=True)
class Measurement:
    """One calibration run: how many samples went through and the peak RSS of its process."""

    samples: int
    batches: int
    peak_rss_mib: float
    seconds: float


#   x -> [Conv 3x3 -> Relu] x 6 -> y       (every Conv output is observed)
def build_cnn(seed: int = SEED) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    current = "x"
    for i, (c_in, c_out) in enumerate(itertools.pairwise(CHANNELS)):
        # He initialisation keeps activations of a similar scale through the stack.
        w = rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / (9 * c_in))
        b = rng.standard_normal(c_out) * 0.1
        weights += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"w{i}", f"b{i}"],
                [f"conv{i}"],
                name=f"conv{i}",
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        current = f"relu{i}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", CHANNELS[0], SIZE, SIZE])
    y = helper.make_tensor_value_info(current, TensorProto.FLOAT, ["n", CHANNELS[-1], SIZE, SIZE])
    graph = helper.make_graph(nodes, "cnn", [x], [y], initializer=weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _feeds(samples: int, batch: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Random batches made one at a time, so the data set itself takes no memory."""
    rng = np.random.default_rng(seed)
    for start in range(0, samples, batch):
        size = min(batch, samples - start)
        yield {"x": rng.standard_normal((size, CHANNELS[0], SIZE, SIZE), dtype=np.float32)}


def run_child(samples: int, batch: int, bins: int) -> Measurement:
    """Calibrate over ``samples`` in this process and report its peak RSS."""
    from slimgraph import ir as sir
    from slimgraph.backends.onnxruntime import OrtExecutor, OrtOptions
    from slimgraph.passes.calibrate import collect_statistics

    model = sir.load(build_cnn())
    values = [node.outputs[0] for node in model.graph if node.op_type == "Conv"]
    executor = OrtExecutor(OrtOptions(threads=0))
    start = time.perf_counter()
    table = collect_statistics(
        model,
        values,
        executor,
        _feeds(samples, batch, SEED + 1),
        total_batches=-(-samples // batch),
        histogram_bins=bins,
    )
    seconds = time.perf_counter() - start
    if any(table[v.name].histogram is None for v in values):
        raise RuntimeError("calibration kept no histogram; the benchmark would measure nothing")
    # ru_maxrss is in KiB on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return Measurement(samples, -(-samples // batch), peak, seconds)


def measure(samples: int, batch: int, bins: int) -> Measurement:
    """Run one calibration in a fresh Python process and read its measurement back."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(samples),
        "--batch",
        str(batch),
        "--bins",
        str(bins),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"calibration of {samples} samples failed (exit {done.returncode}):"
            f"\n{done.stderr.strip()}"
        )
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--samples",
        type=int,
        nargs="+",
        default=[100, 1000],
        help="sample counts to calibrate on, each in its own process",
    )
    parser.add_argument("--batch", type=int, default=16, help="samples per batch")
    parser.add_argument(
        "--bins",
        type=int,
        default=None,
        help="histogram bins (default: the range methods' DEFAULT_BINS)",
    )
    parser.add_argument(
        "--max-growth",
        type=float,
        default=0.10,
        help="largest allowed peak-RSS growth, smallest to largest count",
    )
    parser.add_argument("--json", type=Path, help="write the measurements here as JSON")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bins is None:
        from slimgraph.passes.quantize.ranges import DEFAULT_BINS

        args.bins = DEFAULT_BINS

    if args.child is not None:
        print(json.dumps(asdict(run_child(args.child, args.batch, args.bins))))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    results = []
    for samples in sorted(set(args.samples)):
        result = measure(samples, args.batch, args.bins)
        results.append(result)
        print(
            f"samples {result.samples:6d}  batches {result.batches:5d}  peak RSS "
            f"{result.peak_rss_mib:8.1f} MiB  ({result.seconds:.1f} s)",
            flush=True,
        )
    growth = results[-1].peak_rss_mib / results[0].peak_rss_mib - 1.0
    print(
        f"peak RSS growth from {results[0].samples} to {results[-1].samples} samples: "
        f"{growth:+.1%} (ratio {1.0 + growth:.3f}, limit {args.max_growth:+.0%})"
    )
    if args.json is not None:
        payload = {
            "batch": args.batch,
            "bins": args.bins,
            "growth": growth,
            "max_growth": args.max_growth,
            "runs": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if growth > args.max_growth else 0


if __name__ == "__main__":
    sys.exit(main())
