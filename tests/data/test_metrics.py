"""Metrics against numbers worked out by hand, fed in one batch and in several."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from pydantic import ValidationError

from slimgraph.data import (
    F1,
    METRICS,
    Accuracy,
    Cosine,
    MacroF1,
    MeanSquaredError,
    Metric,
    MetricConfig,
)
from slimgraph.errors import DataError, SpecError


def _score(metric: Metric, outputs: np.ndarray, labels: np.ndarray | None, splits: int) -> float:
    """Feed ``outputs`` in ``splits`` batches and return the result."""
    metric.reset()
    parts = np.array_split(np.arange(len(outputs)), splits)
    for part in parts:
        metric.update([outputs[part]], None if labels is None else labels[part], None)
    return metric.result()


def _agreement(metric: Metric, ours: np.ndarray, reference: np.ndarray, splits: int) -> float:
    metric.reset()
    for part in np.array_split(np.arange(len(ours)), splits):
        metric.update([ours[part]], None, [reference[part]])
    return metric.result()


LOGITS = np.array(
    [[0.1, 0.9, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.2, 0.3, 0.5]], dtype=np.float32
)


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize("splits", [1, 2, 4])
def test_top1_and_top2(splits: int) -> None:
    labels = np.array([1, 1, 1, 2])  # argmax 1, 0, 1, 2: three right
    assert _score(Accuracy(), LOGITS, labels, splits) == pytest.approx(3 / 4)
    # label 2, 2, 0, 0 stands at rank 2, 2, 1, 2
    other = np.array([2, 2, 0, 0])
    assert _score(Accuracy(), LOGITS, other, splits) == 0.0
    assert _score(Accuracy(k=2), LOGITS, other, splits) == pytest.approx(1 / 4)
    assert _score(Accuracy(k=3), LOGITS, other, splits) == 1.0


def test_topk_ties_break_by_class_index() -> None:
    tied = np.array([[1.0, 1.0, 1.0, 0.0]] * 4)
    labels = np.arange(4)
    # the three tied classes rank 0, 1, 2 in index order; class 3 ranks last
    assert _score(Accuracy(k=1), tied, labels, 1) == pytest.approx(1 / 4)
    assert _score(Accuracy(k=2), tied, labels, 1) == pytest.approx(2 / 4)
    assert _score(Accuracy(k=3), tied, labels, 1) == pytest.approx(3 / 4)
    # a model that outputs a constant is right only for class 0, as argmax would say
    assert _score(Accuracy(), np.zeros((3, 3)), np.arange(3), 1) == pytest.approx(1 / 3)


def test_accuracy_nan_counts_wrong() -> None:
    logits = np.array([[np.nan, 1.0], [0.0, 1.0]])
    assert _score(Accuracy(), logits, np.array([1, 1]), 1) == pytest.approx(1 / 2)


def test_accuracy_single_score_and_token_shapes() -> None:
    scores = np.array([[0.5], [-1.0], [0.0]])  # positive only above 0
    assert _score(Accuracy(), scores, np.array([1, 0, 1]), 1) == pytest.approx(2 / 3)
    assert _score(Accuracy(), scores[:, 0], np.array([1, 0, 1]), 1) == pytest.approx(2 / 3)

    tokens = np.zeros((2, 3, 2))
    tokens[..., 1] = [[1, -1, 1], [1, 1, 1]]
    labels = np.array([[1, 0, 0], [1, 1, 1]])
    assert _score(Accuracy(), tokens, labels, 2) == pytest.approx(5 / 6)
    column = np.array([[1], [0], [0], [2]])
    assert _score(Accuracy(), LOGITS, column, 1) == pytest.approx(3 / 4)


def test_accuracy_near_misses() -> None:
    metric = Accuracy(k=4)
    with pytest.raises(DataError, match="needs labels"):
        metric.update([LOGITS], None, None)
    with pytest.raises(DataError, match="k=4 exceeds the 3 classes"):
        metric.update([LOGITS], np.array([0, 1, 2, 0]), None)
    with pytest.raises(DataError, match=r"labels must lie in \[0, 3\)"):
        Accuracy().update([LOGITS], np.array([0, 1, 3, 0]), None)
    with pytest.raises(DataError, match=r"do not fit labels of shape \(3,\)"):
        Accuracy().update([LOGITS], np.array([0, 1, 2]), None)
    with pytest.raises(DataError, match="asked for output 1, but the model has 1 outputs"):
        Accuracy(output=1).update([LOGITS], np.array([0, 1, 2, 0]), None)
    with pytest.raises(DataError, match="no samples were seen"):
        Accuracy().result()


# ---------------------------------------------------------------- f1


@pytest.mark.parametrize("splits", [1, 2, 5])
def test_f1_from_logits_and_from_a_single_score(splits: int) -> None:
    labels = np.array([1, 1, 0, 0, 1])
    logits = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
    # predicted 1, 0, 1, 0, 1: tp 2, fp 1, fn 1 -> 2*2 / (2*2 + 1 + 1)
    assert _score(F1(), logits, labels, splits) == pytest.approx(4 / 6)
    scores = np.array([0.5, -1.0, 2.0, -0.1, 0.0])
    # predicted 1, 0, 1, 0, 0 (0.0 is not above 0): tp 1, fp 1, fn 2
    assert _score(F1(), scores, labels, splits) == pytest.approx(2 / 5)


def test_f1_edge_cases() -> None:
    never_positive = np.array([[1.0, 0.0]] * 3)
    assert _score(F1(), never_positive, np.array([1, 0, 1]), 1) == 0.0
    assert _score(F1(), never_positive, np.array([0, 0, 0]), 1) == 0.0
    always_right = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert _score(F1(), always_right, np.array([1, 0]), 1) == 1.0
    # with three classes, classes 0 and 2 are both negatives
    three = np.eye(3)[[1, 2, 0, 1]]
    assert _score(F1(), three, np.array([1, 0, 2, 0]), 1) == pytest.approx(2 / 3)
    with pytest.raises(DataError, match="needs labels"):
        F1().update([three], None, None)


@pytest.mark.parametrize("splits", [1, 3])
def test_macro_f1(splits: int) -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    logits = np.eye(4)[predicted]  # class 3 never occurs, so it is left out of the mean
    # class 0: tp 1 fp 1 fn 1 -> 1/2; class 1: tp 2 fp 1 -> 4/5; class 2: tp 1 fn 1 -> 2/3
    expected = (1 / 2 + 4 / 5 + 2 / 3) / 3
    assert _score(MacroF1(), logits, labels, splits) == pytest.approx(expected)


# ---------------------------------------------------------------- agreement


@pytest.mark.parametrize("splits", [1, 2])
def test_cosine(splits: int) -> None:
    ours = np.array([[1, 0], [0, 0], [0, 0], [3, 4]], dtype=np.float32)[:, :, None]
    reference = np.array([[1, 1], [0, 0], [1, 0], [6, 8]], dtype=np.float32)[:, :, None]
    # 1/sqrt(2), both zero = 1, one zero = 0, parallel = 1
    expected = (1 / math.sqrt(2) + 1 + 0 + 1) / 4
    assert _agreement(Cosine(), ours, reference, splits) == pytest.approx(expected)


@pytest.mark.parametrize("splits", [1, 2])
def test_mse(splits: int) -> None:
    ours = np.array([[1.0, 2.0], [3.0, 4.0]])
    reference = np.array([[1.0, 0.0], [0.0, 4.0]])
    assert _agreement(MeanSquaredError(), ours, reference, splits) == pytest.approx(13 / 4)
    assert MeanSquaredError.higher_is_better is False


def test_agreement_near_misses() -> None:
    with pytest.raises(DataError, match="needs the reference model's outputs"):
        Cosine().update([np.zeros((2, 2))], None, None)
    with pytest.raises(DataError, match=r"shape \(2, 2\), the reference's has \(2, 3\)"):
        MeanSquaredError().update([np.zeros((2, 2))], None, [np.zeros((2, 3))])


# ---------------------------------------------------------------- config and registry


def test_config_builds_every_builtin() -> None:
    for name, cls in METRICS.items():
        metric = MetricConfig(name=name).build()
        assert isinstance(metric, cls) and isinstance(metric, Metric)
        assert metric.needs_labels != metric.needs_reference
    top5 = MetricConfig(name="accuracy", k=5, output=1).build()
    assert isinstance(top5, Accuracy) and (top5.name, top5.k, top5.output) == (
        "top5_accuracy",
        5,
        1,
    )


def test_config_near_misses() -> None:
    with pytest.raises(SpecError, match=r"unknown metric 'acuracy'.*did you mean 'accuracy'"):
        MetricConfig(name="acuracy")
    with pytest.raises(ValidationError, match="extra_forbidden"):
        MetricConfig.model_validate({"name": "f1", "top_k": 5})
    with pytest.raises(SpecError, match="only accuracy takes k"):
        MetricConfig(name="f1", k=2)
    with pytest.raises(SpecError, match="required for name 'custom'"):
        MetricConfig(name="custom")
    with pytest.raises(SpecError, match="only allowed there"):
        MetricConfig(name="mse", function="a.b:c")
    with pytest.raises(SpecError, match="only custom sets it"):
        MetricConfig(name="mse", higher_is_better=True)


def test_custom_metric_object_and_plain_function(make_module: Callable[[str], str]) -> None:
    module = make_module(
        """
        import numpy as np

        class Count:
            name = "count"
            higher_is_better = True
            needs_labels = False
            needs_reference = False

            def reset(self):
                self.seen = 0

            def update(self, outputs, labels, reference):
                self.seen += len(outputs[0])

            def result(self):
                return float(self.seen)

        def mean_error(outputs, labels):
            predicted = np.concatenate(outputs).argmax(axis=1)
            return float(np.mean(predicted != np.concatenate(labels)))

        def not_a_metric():
            return 3
        """
    )
    counter = MetricConfig(name="custom", function=f"{module}:Count").build()
    assert _score(counter, LOGITS, None, 2) == 4.0

    config = MetricConfig(name="custom", function=f"{module}:mean_error", higher_is_better=False)
    error = config.build()
    assert (error.name, error.higher_is_better) == ("mean_error", False)
    assert _score(error, LOGITS, np.array([1, 1, 1, 2]), 3) == pytest.approx(1 / 4)

    with pytest.raises(SpecError, match="returned a int, which lacks the Metric attributes"):
        MetricConfig(name="custom", function=f"{module}:not_a_metric").build()
    with pytest.raises(SpecError, match="has no attribute 'missing'"):
        MetricConfig(name="custom", function=f"{module}:missing").build()
