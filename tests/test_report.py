"""The compile report's warnings: what a user must know before deploying the INT8 model."""

from __future__ import annotations

from slimgraph.report import CompileReport, ModelScore


def _report(fp32_speed: float, int8_speed: float, met_goal: bool = True) -> CompileReport:
    return CompileReport(
        model="m", metric="accuracy", higher_is_better=True,
        fp32=ModelScore(0.9, fp32_speed), int8=ModelScore(0.899, int8_speed),
        evaluated_samples=100, quantization={}, ops={}, float_ops=[], passes=[], stages={},
        environment={},
        tuning={"met_goal": met_goal, "goal": "relative loss <= 1%", "scored_on": "all",
                "strategy": "basic", "objective": "performance", "stopped_because": "done",
                "best_trial": 1, "trials": []},
    )


def test_a_faster_int8_model_that_meets_the_goal_has_no_warning() -> None:
    report = _report(100.0, 180.0)
    assert report.warnings() == []
    assert "Warning" not in report.to_markdown()
    assert report.to_json()["warnings"] == []


def test_int8_slower_than_fp32_is_said_plainly() -> None:
    report = _report(100.0, 76.0)
    (text,) = report.warnings()
    assert "slower than FP32" in text and "0.76x" in text
    assert f"**Warning:** {text}." in report.to_markdown()
    assert report.to_json()["warnings"] == [text]


def test_a_missed_goal_is_a_warning() -> None:
    (text,) = _report(100.0, 200.0, met_goal=False).warnings()
    assert "no trial met the accuracy goal" in text
