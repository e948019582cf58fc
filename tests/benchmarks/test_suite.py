"""The CI subset of the validated-models suite: mnist-8 and CIFAR-10 ResNet-20 with every peer,
so that an accuracy regression fails the build. Speed is recorded, not asserted: timings on
shared CI machines are too noisy to gate on."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import run


def test_quick_rows_keep_accuracy_within_the_goal(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert run.main(["--rows", "quick", "--quick", "--cores-per-instance", "1",
                     "--out", str(out), "--work", str(tmp_path / "work")]) == 0

    summary = json.loads((out / "results.json").read_text())
    rows = {row["name"]: row for row in summary["rows"]}
    assert set(rows) == {"mnist-8", "cifar10-resnet20"}
    for row in rows.values():
        ours = row["tools"]["slimgraph"]
        assert ours["accuracy_ratio"] >= -run.ACCURACY_GOAL, row["name"]
        assert ours["speed"]["1"]["samples_per_second"] > 0
        # Every peer either produced a scored model or is listed with its error.
        assert set(row["tools"]) | set(row["failures"]) >= {
            "slimgraph", "ort-static-defaults", "ort-static-best", "nncf"}
    assert abs(rows["cifar10-resnet20"]["fp32"]["score"] - 0.8103) < 1e-4
    assert abs(rows["mnist-8"]["fp32"]["score"] - 0.9890) < 1e-4
    text = (out / "RESULTS.md").read_text()
    assert "| cifar10-resnet20 | pretrained | accuracy | 81.03% |" in text
    assert (out / "results.png").stat().st_size > 1000
