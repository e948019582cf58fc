"""The multi-instance harness on a tiny model: layouts, result structure, failures and clean-up."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks import harness, peers, plot
from slimgraph.target import Int8Class

CORES = len(os.sched_getaffinity(0))


def conv_relu(path: Path) -> Path:
    """One convolution and its activation, with a dynamic batch axis.

    x [N,3,16,16] -> Conv 3x3 pad 1 (16) -> Relu -> y [N,16,16,16]
    """
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.2, (16, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 16, 16])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, path)
    return path


def feeds(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(0, 1, (1, 3, 16, 16)).astype(np.float32)}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("harness")
    fp32 = conv_relu(folder / "fp32.onnx")
    int8 = peers.ort_static_best(fp32, [feeds(s) for s in range(4)], folder / "int8.onnx")
    assert isinstance(int8, Path), int8
    return {"fp32": fp32, "int8": int8}


@pytest.mark.parametrize(("cores_per_instance", "instances"), [(1, 2), (2, 1)])
def test_measure_runs_the_layout_asked_for(
    models: dict[str, Path], cores_per_instance: int, instances: int
) -> None:
    if cores_per_instance * instances > CORES:
        pytest.skip(f"needs {cores_per_instance * instances} cores, this machine has {CORES}")

    results = harness.measure(
        models,
        feeds(),
        cores_per_instance=cores_per_instance,
        instances=instances,
        warmup=2,
        iterations=10,
        repeats=3,
    )

    assert list(results) == ["fp32", "int8"]
    for result in results.values():
        layout = result.layout
        assert layout.instances == instances and layout.cores_per_instance == cores_per_instance
        assert all(len(cores) == cores_per_instance for cores in layout.cores)
        assert len({c for cores in layout.cores for c in cores}) == instances * cores_per_instance
        assert result.batch == 1
        assert len(result.repeats) == len(result.instance_rates) == len(result.waiting) == 3
        assert all(w >= 0 for w in result.waiting)
        for total, rates in zip(result.repeats, result.instance_rates, strict=True):
            assert len(rates) == instances and all(r > 0 for r in rates)
            assert total == pytest.approx(sum(rates))
        assert result.samples_per_second == statistics.median(result.repeats) > 0
        assert 0 < result.latency_p50_ms <= result.latency_p90_ms


def test_measure_fills_the_available_cores_by_default(models: dict[str, Path]) -> None:
    results = harness.measure(
        {"fp32": models["fp32"]}, feeds(), cores_per_instance=1, warmup=1, iterations=5, repeats=1
    )

    assert results["fp32"].layout.instances == CORES


def test_a_process_sharing_the_core_shows_as_waiting(models: dict[str, Path]) -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spinner.pid, {min(os.sched_getaffinity(0))})
        results = harness.measure(
            {"fp32": models["fp32"]},
            feeds(),
            cores_per_instance=1,
            instances=1,
            warmup=10,
            iterations=4000,
            repeats=1,
        )
    finally:
        spinner.kill()
        spinner.wait()

    assert results["fp32"].waiting[0] > 0.2


def test_a_failing_instance_raises_and_leaves_no_process(
    models: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.onnx"

    with pytest.raises(harness.BenchmarkError, match="'missing' failed"):
        harness.measure(
            {"fp32": models["fp32"], "missing": missing},
            feeds(),
            cores_per_instance=1,
            instances=1,
            warmup=1,
            iterations=5,
            repeats=1,
        )

    assert multiprocessing.active_children() == []


def test_an_interrupt_mid_window_stops_every_instance(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(group: object, warmup: int, iterations: int) -> None:
        for pipe in group.pipes:  # type: ignore[attr-defined]
            pipe.send(("run", warmup, iterations))
        raise KeyboardInterrupt

    monkeypatch.setattr(harness._Group, "window", interrupted)
    monkeypatch.setattr(harness, "_EXIT_GRACE_S", 0.5)

    with pytest.raises(KeyboardInterrupt):
        harness.measure(
            models, feeds(), cores_per_instance=1, warmup=0, iterations=10**7, repeats=1
        )

    assert multiprocessing.active_children() == []


def test_a_feed_the_model_lacks_is_reported(models: dict[str, Path]) -> None:
    with pytest.raises(harness.BenchmarkError, match="KeyError: 'x'"):
        harness.measure(
            {"fp32": models["fp32"]},
            {"image": feeds()["x"]},
            cores_per_instance=1,
            instances=1,
            warmup=1,
            iterations=5,
            repeats=1,
        )


def test_plan_layout_splits_cores_and_refuses_too_many() -> None:
    assert harness.plan_layout(1, available=[0, 1]).cores == ((0,), (1,))
    assert harness.plan_layout(2, available=[0, 1]).cores == ((0, 1),)
    with pytest.raises(ValueError, match="at most 1 instance"):
        harness.plan_layout(2, instances=2, available=[0, 1])
    with pytest.raises(ValueError, match="cores_per_instance"):
        harness.plan_layout(0)


def test_machine_info_names_the_cpu_and_libraries() -> None:
    info = harness.machine_info()

    assert info.cores_available == CORES
    assert info.int8_class in {c.value for c in Int8Class}
    assert {"onnxruntime", "onnx", "numpy"} <= set(info.libraries)
    assert info.as_dict()["python"].count(".") == 2


def test_plot_draws_the_rows_it_can(tmp_path: Path) -> None:
    rows = [
        {
            "model": "resnet20",
            "tool": "slimgraph",
            "accuracy_ratio": -0.0005,
            "performance_ratio": 1.56,
        },
        {
            "model": "resnet20",
            "tool": "ort-static-defaults",
            "accuracy_ratio": -0.02,
            "performance_ratio": 0.9,
        },
        {"model": "resnet20", "tool": "nncf", "accuracy_ratio": None, "performance_ratio": None},
    ]

    path = plot.plot_accuracy_vs_speedup(rows, tmp_path / "plots" / "scatter.png")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000
