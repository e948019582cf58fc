"""Multi-instance throughput, measured the way Intel Neural Compressor's validated-models table is.

INC runs batch 1 on several instances at once, each a process pinned to its own cores with as
many intra-op threads as it has cores; throughput is summed over the instances and latency is
per instance. Here each instance is a spawned process that loads the model from its path, pins
itself with ``os.sched_setaffinity`` and waits for work.

One *window* times one model: all its instances warm up, meet at a barrier, then run the same
number of iterations concurrently. Windows are interleaved, A, B, A, B..., one per model per
repeat, so a slow spell on a shared machine hits every model; the figure reported is the median
over repeats. Only the instances of one model run at a time, so models may share cores.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import multiprocessing as mp
import os
import platform
import signal
import statistics
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from slimgraph.errors import SlimgraphError
from slimgraph.progress import track

__all__ = [
    "BenchmarkError",
    "Layout",
    "MachineInfo",
    "PairedRatio",
    "Result",
    "machine_info",
    "measure",
    "paired_ratio",
    "plan_layout",
]

logger = logging.getLogger(__name__)

# An instance that waits this long at the barrier presumes a sibling has died.
_BARRIER_TIMEOUT_S = 600.0
# Above this share of the window spent waiting for a CPU, other processes held instances up.
_DISTURBED = 0.05
# How long a stopped instance gets to exit before it is terminated, then killed.
_EXIT_GRACE_S = 5.0

_LIBRARIES = ("onnxruntime", "onnx", "numpy", "nncf", "torch")


class BenchmarkError(SlimgraphError):
    """An instance could not load its model or died while timing it."""


@dataclass(frozen=True)
class Layout:
    """The instances of one measurement and the logical CPUs each is pinned to."""

    cores_per_instance: int
    cores: tuple[tuple[int, ...], ...]

    @property
    def instances(self) -> int:
        return len(self.cores)

    def describe(self) -> str:
        return f"{self.instances} x {self.cores_per_instance} core(s)"


@dataclass(frozen=True)
class Result:
    """One model's speed under a layout.

    ``samples_per_second`` is summed over the instances of a window, then the median over
    repeats; ``repeats`` holds each repeat's sum and ``instance_rates`` each instance's share
    (repeat by instance). Latencies are of single runs of one instance, over every instance
    and repeat. ``waiting`` is, for each repeat, the most time an instance's threads spent
    ready to run but waiting for a CPU, per second of the window (NaN where the kernel does not
    say): above a few percent, other processes shared the cores and the figures are disturbed.
    """

    samples_per_second: float
    latency_p50_ms: float
    latency_p90_ms: float
    repeats: tuple[float, ...]
    instance_rates: tuple[tuple[float, ...], ...]
    waiting: tuple[float, ...]
    layout: Layout
    batch: int


@dataclass(frozen=True)
class MachineInfo:
    """What a figure was measured on, so that it can be reproduced or discounted."""

    cpu: str
    arch: str
    int8_class: str
    flags: tuple[str, ...]
    cores_available: int
    logical_cpus: int | None
    python: str
    os: str
    libraries: Mapping[str, str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedRatio:
    """How many times as fast one model is as another, from windows timed side by side.

    ``median`` is the median over repeats of the ratio of the two windows of a repeat, which
    ran back to back and so met the same state of a shared machine. ``low`` and ``high`` bound
    that median with at least ``confidence`` (order statistics, no assumption on the noise):
    when the interval holds 1.0, the run cannot tell the two models apart.
    """

    median: float
    low: float
    high: float
    confidence: float
    repeats: int

    def distinguishable(self) -> bool:
        return self.low > 1.0 or self.high < 1.0

    def describe(self) -> str:
        return (f"{self.median:.2f}x ({self.confidence:.0%} interval {self.low:.2f}-"
                f"{self.high:.2f}x over {self.repeats} repeats)")


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float],
                 confidence: float = 0.95) -> PairedRatio:
    """``numerator`` over ``denominator``, repeat by repeat (throughputs of windows timed in
    the same repeats), with a distribution-free interval for the median ratio.

    The interval is the k-th smallest to the k-th largest ratio, k the largest rank whose
    binomial tail keeps the stated confidence; with too few repeats for it, the whole range.
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"repeats: expected two equal, non-empty series, found "
                         f"{len(numerator)} and {len(denominator)}")
    ratios = sorted(a / b for a, b in zip(numerator, denominator, strict=True))
    n = len(ratios)
    k, covered = 1, 1.0 - 2 * 0.5**n
    for rank in range(2, n // 2 + 1):
        tail = sum(math.comb(n, i) for i in range(rank)) * 0.5**n
        if 1.0 - 2 * tail < confidence:
            break
        k, covered = rank, 1.0 - 2 * tail
    return PairedRatio(statistics.median(ratios), ratios[k - 1], ratios[n - k], covered, n)


def machine_info() -> MachineInfo:
    """The CPU, the cores this process may use, and the versions of the libraries that run."""
    # Imported here: slimgraph.target pulls in the IR (onnx), which instances do not need.
    from slimgraph.target import detect

    target = detect()
    libraries = {}
    for name in _LIBRARIES:
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return MachineInfo(
        cpu=target.model,
        arch=target.arch,
        int8_class=target.int8_class.value,
        flags=tuple(sorted(target.flags)),
        cores_available=len(os.sched_getaffinity(0)),
        logical_cpus=os.cpu_count(),
        python=platform.python_version(),
        os=platform.platform(),
        libraries=libraries,
    )


def plan_layout(
    cores_per_instance: int,
    instances: int | None = None,
    available: Iterable[int] | None = None,
) -> Layout:
    """Give each instance its own ``cores_per_instance`` cores out of ``available``.

    ``available`` defaults to the CPUs this process may run on, one hardware thread of each
    physical core (siblings are read from sysfs), as INC does; CPUs given explicitly are each
    taken as a core. ``instances=None`` means as many instances as fit.
    """
    if cores_per_instance < 1:
        raise ValueError(f"cores_per_instance: expected 1 or more, found {cores_per_instance}")
    if instances is not None and instances < 1:
        raise ValueError(f"instances: expected 1 or more (or None for all), found {instances}")
    if available is None:
        cores = _one_thread_per_core(sorted(os.sched_getaffinity(0)))
    else:
        cores = sorted(available)
    fit = len(cores) // cores_per_instance
    count = fit if instances is None else instances
    if count < 1 or count > fit:
        wanted = max(count, 1)
        raise ValueError(
            f"instances: {wanted} instance(s) of {cores_per_instance} core(s) need "
            f"{wanted * cores_per_instance} cores, this process may use {len(cores)} "
            f"({cores}); ask for at most {fit} instance(s) or fewer cores per instance"
        )
    per_instance = [
        tuple(cores[i * cores_per_instance : (i + 1) * cores_per_instance]) for i in range(count)
    ]
    return Layout(cores_per_instance, tuple(per_instance))


def measure(
    models: Mapping[str, Path],
    feeds: Mapping[str, np.ndarray],
    *,
    cores_per_instance: int,
    instances: int | None = None,
    warmup: int,
    iterations: int,
    repeats: int,
) -> dict[str, Result]:
    """Time each model on the same ``feeds`` (one batch) with concurrent pinned instances.

    Each window begins with ``warmup`` untimed runs in every instance, since the windows of
    the other models have evicted the caches since its last one.
    """
    for label, count in (("warmup", warmup), ("iterations", iterations), ("repeats", repeats)):
        minimum = 0 if label == "warmup" else 1
        if count < minimum:
            raise ValueError(f"{label}: expected {minimum} or more, found {count}")
    if not models:
        raise ValueError("models: expected at least one model to time, found none")
    if not feeds:
        raise ValueError("feeds: expected one array per model input, found none")
    layout = plan_layout(cores_per_instance, instances)
    batch = int(next(iter(feeds.values())).shape[0])
    arrays = {name: np.ascontiguousarray(array) for name, array in feeds.items()}

    groups: dict[str, _Group] = {}
    try:
        for name, path in models.items():
            groups[name] = _Group(name, Path(path), arrays, layout)
        for group in groups.values():
            group.wait_ready()
        windows: dict[str, list[_Window]] = {name: [] for name in models}
        for _ in track(range(repeats), total=repeats, desc="timing", unit="repeat"):
            for name, group in groups.items():
                windows[name].append(group.window(warmup, iterations))
    finally:
        for group in groups.values():
            group.close()

    results = {name: _summarise(w, batch, iterations, layout) for name, w in windows.items()}
    logger.info(
        "throughput at batch %d, %s: %s",
        batch,
        layout.describe(),
        ", ".join(
            f"{n} {r.samples_per_second:.1f}/s (p50 {r.latency_p50_ms:.2f} ms)"
            for n, r in results.items()
        ),
    )
    medians = (statistics.median(r.waiting) for r in results.values())
    waiting = max((w for w in medians if not math.isnan(w)), default=0.0)
    if waiting > _DISTURBED:
        logger.warning(
            "instances waited for a CPU %.0f %% of the time (median over repeats, worst "
            "model): other processes shared the cores and the figures are disturbed",
            100 * waiting,
        )
    return results


@dataclass(frozen=True)
class _Window:
    """One model timed once: per instance, the wall seconds, the seconds its threads waited for
    a CPU, and the latency of each run."""

    elapsed: np.ndarray
    waited: np.ndarray
    latencies: np.ndarray


def _summarise(windows: Sequence[_Window], batch: int, iterations: int, layout: Layout) -> Result:
    instance_rates = tuple(tuple(float(batch * iterations / e) for e in w.elapsed) for w in windows)
    sums = tuple(sum(rates) for rates in instance_rates)
    latency_ms = np.concatenate([w.latencies.ravel() for w in windows]) * 1e3
    waiting = tuple(float((w.waited / w.elapsed).max()) for w in windows)
    return Result(
        samples_per_second=statistics.median(sums),
        latency_p50_ms=float(np.percentile(latency_ms, 50)),
        latency_p90_ms=float(np.percentile(latency_ms, 90)),
        repeats=sums,
        instance_rates=instance_rates,
        waiting=waiting,
        layout=layout,
        batch=batch,
    )


def _one_thread_per_core(cpus: Sequence[int]) -> list[int]:
    """The first of each set of hardware-thread siblings in ``cpus``; each CPU alone when the
    topology cannot be read."""
    kept, seen = [], set()
    for cpu in cpus:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            siblings = frozenset(_cpu_list(path.read_text()))
        except (OSError, ValueError):
            siblings = frozenset({cpu})
        if siblings & seen:
            continue
        seen |= siblings
        kept.append(cpu)
    return kept


def _cpu_list(text: str) -> list[int]:
    """Parse a kernel CPU list such as ``0-3,8,10-11``."""
    cpus = []
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


class _Group:
    """The instances of one model: spawned processes, a pipe to each and a shared barrier."""

    def __init__(
        self, name: str, path: Path, feeds: Mapping[str, np.ndarray], layout: Layout
    ) -> None:
        context = mp.get_context("spawn")
        self.name = name
        self.layout = layout
        self.barrier = context.Barrier(layout.instances)
        self.processes: list[mp.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        args = (self.barrier, str(path), dict(feeds))
        try:
            for cores in layout.cores:
                ours, theirs = context.Pipe()
                self.pipes.append(ours)
                process = context.Process(
                    target=_instance,
                    args=(theirs, *args, cores, len(cores)),
                    name=f"bench-{name}-{cores[0]}",
                    daemon=True,
                )
                process.start()
                theirs.close()
                self.processes.append(process)
        except BaseException:
            self.close()
            raise

    def wait_ready(self) -> None:
        for index, cores in enumerate(self.layout.cores):
            pinned = self._receive(index, "ready")
            if tuple(pinned) != cores:
                raise BenchmarkError(
                    f"instance {index} of {self.name!r} asked for cores {cores} and runs on "
                    f"{tuple(pinned)}; another process or cgroup is changing CPU affinity"
                )

    def window(self, warmup: int, iterations: int) -> _Window:
        for pipe in self.pipes:
            pipe.send(("run", warmup, iterations))
        runs = [self._receive(i, "times") for i in range(len(self.pipes))]
        return _Window(
            elapsed=np.array([elapsed for elapsed, _, _ in runs]),
            waited=np.array([waited for _, waited, _ in runs]),
            latencies=np.stack([times for _, _, times in runs]),
        )

    def close(self) -> None:
        """Stop every instance, whatever state it is in; never raises."""
        self.barrier.abort()
        for pipe in self.pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("stop",))
        deadline = time.monotonic() + _EXIT_GRACE_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in self.pipes:
            pipe.close()

    def _receive(self, index: int, expected: str) -> Any:
        pipe, process = self.pipes[index], self.processes[index]
        wait([pipe, process.sentinel])
        if not pipe.poll():
            process.join()
            raise BenchmarkError(
                f"instance {index} of {self.name!r} exited with code "
                f"{process.exitcode} without a word"
            )
        kind, payload = pipe.recv()
        if kind == "error":
            raise BenchmarkError(f"instance {index} of {self.name!r} failed:\n{payload}")
        if kind != expected:
            raise BenchmarkError(
                f"instance {index} of {self.name!r} answered {kind!r}, expected {expected!r}"
            )
        return payload


def _instance(
    pipe: Connection,
    barrier: Any,
    model: str,
    feeds: dict[str, np.ndarray],
    cores: tuple[int, ...],
    threads: int,
) -> None:
    """One instance's process: pin, load, then time windows until told to stop."""
    # Ctrl-C reaches the whole process group; the parent alone decides when instances stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.sched_setaffinity(0, cores)
        session = _session(model, threads)
        feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
        pipe.send(("ready", sorted(os.sched_getaffinity(0))))
        while True:
            message = pipe.recv()
            if message[0] == "stop":
                return
            _, warmup, iterations = message
            pipe.send(("times", _time_window(session, feeds, barrier, warmup, iterations)))
    except EOFError:
        return
    except BaseException:
        with contextlib.suppress(OSError):
            pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


def _session(model: str, threads: int) -> Any:
    """An onnxruntime session set up as ``OrtExecutor`` sets one up.

    The instance imports onnxruntime alone (0.2 s) rather than slimgraph's backend (2 s,
    through onnx), since every window waits for the slowest instance to start.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _time_window(
    session: Any, feeds: dict[str, np.ndarray], barrier: Any, warmup: int, iterations: int
) -> tuple[float, float, np.ndarray]:
    """Warm up, wait for the sibling instances, then time ``iterations`` runs.

    Returns the wall seconds, the seconds this process's threads waited for a CPU, and the
    latency of each run.
    """
    run = session.run
    for _ in range(warmup):
        run(None, feeds)
    barrier.wait(_BARRIER_TIMEOUT_S)
    stamps = np.empty(iterations + 1)
    waited = _run_queue_seconds()
    for i in range(iterations):
        stamps[i] = time.perf_counter()
        run(None, feeds)
    stamps[iterations] = time.perf_counter()
    waited = _run_queue_seconds() - waited
    return float(stamps[-1] - stamps[0]), waited, np.diff(stamps)


def _run_queue_seconds() -> float:
    """Seconds this process's threads have spent runnable but not running (the kernel's
    schedstat ``run_delay``); NaN where the kernel does not keep it."""
    total = 0
    try:
        for thread in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{thread}/schedstat") as stat:
                total += int(stat.read().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return total / 1e9
