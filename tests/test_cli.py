"""The command line end to end: compile, validate, inspect, and one clear line on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from slimgraph.cli import main
from slimgraph.errors import SpecError

REPO = Path(__file__).resolve().parent.parent


def _mnist_spec(tmp_path: Path, **changes: object) -> Path:
    spec = yaml.safe_load((REPO / "specs" / "mnist.yaml").read_text())
    spec["data"]["evaluation"]["limit"] = 300
    spec["quantization"]["calibration"]["samples"] = 50
    spec["benchmark"] = {"iterations": 20, "repeats": 3, "warmup": 5}
    for key, value in changes.items():
        spec[key] = value
    path = tmp_path / "mnist.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_compile_writes_model_and_reports(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    assert main(["compile", str(_mnist_spec(tmp_path)), "-o", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "model.fp32.onnx", "model.int8.onnx", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    for section in ("fp32", "int8"):
        assert set(report[section]) >= {"accuracy", "throughput"}
        assert 0.9 < report[section]["accuracy"] <= 1.0
        assert report[section]["throughput"] > 0
    assert report["metric"] == "accuracy"
    assert report["accuracy_ratio"] == pytest.approx(
        (report["int8"]["accuracy"] - report["fp32"]["accuracy"]) / report["fp32"]["accuracy"])
    assert report["performance_ratio"] == pytest.approx(
        report["int8"]["throughput"] / report["fp32"]["throughput"])
    env = report["environment"]
    assert {"versions", "cpu", "cpu_flags", "threads", "seed", "spec_hash"} <= set(env)
    assert env["versions"]["onnxruntime"]
    assert report["evaluated_samples"] == 300
    markdown = (out / "report.md").read_text()
    assert "| model | FP32 accuracy | INT8 accuracy |" in markdown
    assert capsys.readouterr().out.startswith("| mnist-8 |")


def test_compile_replaces_previous_output_and_leaves_no_staging(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert main(["compile", str(_mnist_spec(tmp_path)), "-o", str(out), "-q"]) == 0
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_compile_never_touches_the_input_model(tmp_path: Path, data_dir: Path) -> None:
    model = tmp_path / "models" / "mnist.onnx"
    model.parent.mkdir()
    shutil.copy(data_dir / "models" / "mnist-8.onnx", model)
    before = model.read_bytes()
    spec = _mnist_spec(tmp_path, model={"path": str(model)})
    # Writing into the folder that holds the input would replace it: refused.
    assert main(["compile", str(spec), "-o", str(model.parent), "-q"]) == 2
    assert main(["compile", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert model.read_bytes() == before


def _one_error_line(capsys) -> str:  # type: ignore[no-untyped-def]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("slimgraph: error: ")
    return err[0]


def test_missing_model_file(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    spec = _mnist_spec(tmp_path, model={"path": str(tmp_path / "nope.onnx")})
    assert main(["compile", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "model.path" in _one_error_line(capsys)


def test_corrupt_model_file(tmp_path: Path, capsys, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes((data_dir / "models" / "mnist-8.onnx").read_bytes()[:2000])
    spec = _mnist_spec(tmp_path, model={"path": str(bad)})
    assert main(["compile", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "not a readable ONNX model" in _one_error_line(capsys)
    assert main(["inspect", str(bad)]) == 2
    assert str(bad) in _one_error_line(capsys)


def test_unknown_key_and_wrong_type(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    spec = _mnist_spec(tmp_path, benchmark={"iteratons": 5})
    assert main(["validate", str(spec)]) == 2
    assert "did you mean 'iterations'" in _one_error_line(capsys)
    spec = _mnist_spec(tmp_path, benchmark={"iterations": "five"})
    assert main(["compile", str(spec), "-q"]) == 2
    assert "expected an integer, found 'five'" in _one_error_line(capsys)


def test_empty_data_folder(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "images"
    empty.mkdir()
    spec = _mnist_spec(tmp_path, data={"evaluation": {"kind": "image_folder", "root": str(empty)}})
    assert main(["compile", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 2
    line = _one_error_line(capsys)
    assert "data.evaluation" in line and "no images" in line
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    spec = _mnist_spec(tmp_path, model={"path": str(tmp_path / "nope.onnx")})
    with pytest.raises(SpecError, match=r"model\.path"):
        main(["compile", str(spec), "--debug"])


def test_validate_and_inspect(tmp_path: Path, capsys, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    assert main(["validate", str(_mnist_spec(tmp_path))]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["inspect", str(data_dir / "models" / "mnist-8.onnx")]) == 0
    out = capsys.readouterr().out
    assert "quantized: 0 of 3" in out and "Conv" in out


def _unreachable_goal(tmp_path: Path, max_trials: int) -> Path:
    # Agreement with FP32 by squared error: only FP32 itself scores 0, so no INT8 model can
    # meet an absolute loss of 0.
    return _mnist_spec(tmp_path, metric={"name": "mse"}, tuning={
        "criterion": {"absolute": 0.0}, "max_trials": max_trials, "strategy": "conservative"})


def test_goal_missed_exits_3_with_model_and_report(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    assert main(["compile", str(_unreachable_goal(tmp_path, 3)), "-o", str(out), "-q"]) == 3
    assert (out / "model.int8.onnx").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["tuning"]["met_goal"] is False and len(report["tuning"]["trials"]) == 3
    assert "NOT met" in (out / "report.md").read_text()
    assert "no candidate met the accuracy goal" in capsys.readouterr().err


def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = _unreachable_goal(tmp_path, 6)
    whole = tmp_path / "whole"
    assert main(["compile", str(spec), "-o", str(whole), "-q"]) == 3

    out = tmp_path / "killed"
    log = tmp_path / "killed.workspace" / "trials.jsonl"
    cmd = [sys.executable, "-m", "slimgraph.cli", "compile", str(spec), "-o", str(out), "-q"]
    process = subprocess.Popen(cmd, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    logged = len(log.read_text().splitlines())
    assert 2 <= logged < 6 and not out.exists()

    assert main(["compile", str(spec), "-o", str(out), "-q"]) == 3
    first = json.loads((whole / "report.json").read_text())["tuning"]
    second = json.loads((out / "report.json").read_text())["tuning"]
    assert [t["change"] for t in second["trials"]] == [t["change"] for t in first["trials"]]
    assert [t["score"] for t in second["trials"]] == [t["score"] for t in first["trials"]]
    assert second["best_trial"] == first["best_trial"]
    assert sum(t["resumed"] for t in second["trials"]) == logged
