"""The suite's verdict on one row: accuracy goal, speed against FP32 and against each peer."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.harness import paired_ratio
from benchmarks.run import verdict


def _speed(speed: float, repeats: list[float] | None = None,
           fp32_speed: float = 100.0) -> dict[str, Any]:
    # One repeat unless given: the paired ratio is then the plain ratio.
    return {"1": {"samples_per_second": speed, "ratio": speed / fp32_speed,
                  "repeats": repeats or [speed]}}


def _tool(ratio: float, speed: float, repeats: list[float] | None = None) -> dict[str, Any]:
    return {"score": 0.9 * (1 + ratio), "accuracy_ratio": ratio, "speed": _speed(speed, repeats)}


def _row(fp32_repeats: list[float] | None = None, **tools: dict[str, Any]) -> dict[str, Any]:
    return {"name": "m", "weights": "pretrained", "fp32": {"speed": _speed(100.0, fp32_repeats)},
            "tools": tools}


def test_fast_and_accurate_meets_the_goal() -> None:
    row = _row(slimgraph=_tool(-0.001, 200.0), nncf=_tool(-0.001, 190.0))
    assert verdict(row, "1") == "meets the goal."


def test_a_faster_peer_at_equal_accuracy_is_named() -> None:
    row = _row(slimgraph=_tool(-0.001, 200.0), nncf=_tool(-0.001, 220.0))
    assert verdict(row, "1").startswith("does NOT meet it: NNCF nncf.quantize is 1.10x")


def test_a_faster_but_less_accurate_peer_does_not_count() -> None:
    row = _row(slimgraph=_tool(-0.001, 200.0), nncf=_tool(-0.02, 300.0))
    assert verdict(row, "1") == "meets the goal."


def test_int8_slower_than_fp32_fails_even_when_peers_are_slower_still() -> None:
    row = _row(slimgraph=_tool(0.0, 76.0), nncf=_tool(0.0, 57.0))
    assert verdict(row, "1") == "does NOT meet it: INT8 runs slower than FP32 (0.76x)."


def test_accuracy_outside_the_goal_is_named() -> None:
    row = _row(slimgraph=_tool(-0.02, 200.0))
    assert "accuracy ratio -2.00% is outside the goal" in verdict(row, "1")


# A machine whose speed drifts by 30 % between repeats; within a repeat the two tools see the
# same state. Peer A is 1-3 % faster or slower by turns; peer B is 5 % faster every time.
_DRIFT = [100.0, 130.0, 90.0, 120.0, 105.0, 95.0, 125.0, 110.0, 98.0, 115.0, 102.0]
_OURS = [2 * d for d in _DRIFT]
_NOISY_PEER = [2 * d * f for d, f in zip(_DRIFT, [1.03, 0.99, 1.02, 0.98, 1.03, 1.01, 0.97,
                                                   1.02, 0.99, 1.03, 1.02], strict=True)]
_FASTER_PEER = [2 * d * 1.05 for d in _DRIFT]


def test_a_peer_ahead_only_within_noise_is_a_tie_not_a_failure() -> None:
    row = _row(_DRIFT, slimgraph=_tool(0.0, 200.0, _OURS),
               nncf=_tool(0.0, 206.0, _NOISY_PEER))
    said = verdict(row, "1")
    assert said.startswith("meets the goal; within measurement noise: NNCF nncf.quantize is 1.02x")
    assert "interval 0.98-1.03x over 11 repeats" in said


def test_a_peer_ahead_in_every_repeat_is_faster() -> None:
    row = _row(_DRIFT, slimgraph=_tool(0.0, 200.0, _OURS),
               nncf=_tool(0.0, 210.0, _FASTER_PEER))
    assert verdict(row, "1").startswith("does NOT meet it: NNCF nncf.quantize is 1.05x")


def test_paired_ratio_cancels_the_drift_that_medians_keep() -> None:
    paired = paired_ratio(_FASTER_PEER, _OURS)
    assert paired.median == pytest.approx(1.05)
    assert paired.low == pytest.approx(1.05) and paired.distinguishable()
    # Taken apart, the two series overlap almost entirely.
    assert min(_FASTER_PEER) < sorted(_OURS)[-2]


def test_paired_ratio_interval_uses_order_statistics() -> None:
    ratios = [0.90, 0.95, 0.97, 0.99, 1.00, 1.01, 1.02, 1.03, 1.05, 1.08, 1.20]
    paired = paired_ratio(ratios, [1.0] * len(ratios))
    assert (paired.median, paired.low, paired.high) == (1.01, 0.95, 1.08)
    assert paired.confidence == pytest.approx(1 - 2 * 12 / 2048)
    assert not paired.distinguishable()
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_ratio([1.0], [1.0, 2.0])
