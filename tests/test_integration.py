"""End to end on real data: the shipped CIFAR-10 ResNet-20 spec, all 10,000 test images."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from slimgraph.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_cifar10_resnet20_int8_within_half_a_percent(tmp_path: Path) -> None:
    spec = yaml.safe_load((REPO / "specs" / "cifar10_resnet20.yaml").read_text())
    # Speed is measured by the benchmarks; here a short timing keeps the test quick.
    spec["benchmark"] = {"iterations": 20, "repeats": 3, "warmup": 5}
    path = tmp_path / "resnet20.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"

    assert main(["compile", str(path), "-o", str(out), "-q", "--no-progress"]) == 0

    report = json.loads((out / "report.json").read_text())
    assert report["evaluated_samples"] == 10_000
    # The reference accuracy of these weights on these JPEGs (see the data's MANIFEST).
    assert abs(report["fp32"]["accuracy"] - 0.8103) < 1e-4
    assert abs(report["accuracy_ratio"]) <= 0.005
    # Every convolution, the residual adds and the classifier are quantized.
    assert report["ops"]["quantized_nodes"] == report["ops"]["compute_nodes"]
    assert report["float_ops"] == []
