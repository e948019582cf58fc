"""The suite's verdict on one row: accuracy goal, speed against FP32 and against each peer."""

from __future__ import annotations

from typing import Any

from benchmarks.run import verdict


def _tool(ratio: float, speed: float, fp32_speed: float = 100.0) -> dict[str, Any]:
    return {"score": 0.9 * (1 + ratio), "accuracy_ratio": ratio,
            "speed": {"1": {"samples_per_second": speed, "ratio": speed / fp32_speed}}}


def _row(**tools: dict[str, Any]) -> dict[str, Any]:
    return {"name": "m", "weights": "pretrained", "tools": tools}


def test_fast_and_accurate_meets_the_goal() -> None:
    row = _row(slimgraph=_tool(-0.001, 200.0), nncf=_tool(-0.001, 190.0))
    assert verdict(row, "1") == "meets the goal."


def test_a_faster_peer_at_equal_accuracy_is_named() -> None:
    row = _row(slimgraph=_tool(-0.001, 200.0), nncf=_tool(-0.001, 220.0))
    assert verdict(row, "1").startswith("does NOT meet it: NNCF nncf.quantize is 1.10x as fast")


def test_a_faster_but_less_accurate_peer_does_not_count() -> None:
    row = _row(slimgraph=_tool(-0.001, 200.0), nncf=_tool(-0.02, 300.0))
    assert verdict(row, "1") == "meets the goal."


def test_int8_slower_than_fp32_fails_even_when_peers_are_slower_still() -> None:
    row = _row(slimgraph=_tool(0.0, 76.0), nncf=_tool(0.0, 57.0))
    assert verdict(row, "1") == "does NOT meet it: INT8 runs slower than FP32 (0.76x)."


def test_accuracy_outside_the_goal_is_named() -> None:
    row = _row(slimgraph=_tool(-0.02, 200.0))
    assert "accuracy ratio -2.00% is outside the goal" in verdict(row, "1")
