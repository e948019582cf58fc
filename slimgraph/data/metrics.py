"""Running metrics over model outputs: task metrics against labels, agreement with a reference.

Every metric keeps counts or sums only, so memory does not grow with the data; the one
exception is a plain custom function, which sees all outputs at once (see FunctionMetric).

Class scores are read from the last axis of the chosen output. A single-column output (or one
with no class axis) is a binary score: positive (class 1) when it is above 0, as for a logit.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimgraph._callables import resolve_callable
from slimgraph.data.base import Metric
from slimgraph.errors import DataError, SpecError, closest

__all__ = [
    "F1",
    "METRICS",
    "Accuracy",
    "Cosine",
    "FunctionMetric",
    "MacroF1",
    "MeanSquaredError",
    "MetricConfig",
]

logger = logging.getLogger(__name__)


def _output(name: str, outputs: Sequence[np.ndarray], index: int, role: str) -> np.ndarray:
    if index >= len(outputs):
        raise DataError(
            f"metric {name}: asked for output {index}, but the {role} has {len(outputs)} outputs"
        )
    return np.asarray(outputs[index])


def _class_scores(
    name: str, outputs: Sequence[np.ndarray], index: int, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores as (samples, classes) and labels as (samples,) int64, checked against each other.

    Outputs of shape (..., classes) go with labels of shape (...): a token classifier's
    (batch, tokens, classes) logits go with (batch, tokens) labels.
    """
    if labels is None:
        raise DataError(f"metric {name}: needs labels, but the data source gives none")
    scores = _output(name, outputs, index, "model")
    labels = np.asarray(labels)
    if scores.shape == labels.shape:
        scores = scores[..., np.newaxis]
    if labels.size != int(np.prod(scores.shape[:-1])):
        raise DataError(
            f"metric {name}: outputs of shape {scores.shape} do not fit labels of shape "
            f"{labels.shape}; expected labels of shape {scores.shape[:-1]}"
        )
    if not np.issubdtype(labels.dtype, np.integer) and np.any(np.mod(labels, 1) != 0):
        raise DataError(f"metric {name}: expected integer class labels, found {labels.dtype}")
    return scores.reshape(-1, scores.shape[-1]), labels.reshape(-1).astype(np.int64)


def _predicted_classes(scores: np.ndarray) -> np.ndarray:
    """Argmax (first index on ties) over classes, or ``score > 0`` for a single column."""
    if scores.shape[-1] == 1:
        return (scores[:, 0] > 0).astype(np.int64)
    return np.argmax(scores, axis=-1)


def _label_rank(name: str, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Where each label's class stands among the scores: 0 is top-1.

    Ties are broken by class index, as argmax does, so a model that gives every class the same
    score is right only for class 0. A sample with any NaN score ranks its label last.
    """
    classes = scores.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"metric {name}: labels must lie in [0, {classes}) for {classes} classes, "
            f"found {labels.min()}..{labels.max()}"
        )
    own = np.take_along_axis(scores, labels[:, np.newaxis], axis=-1)
    higher = np.sum(scores > own, axis=-1)
    tied_before = np.sum((scores == own) & (np.arange(classes) < labels[:, np.newaxis]), axis=-1)
    return np.where(np.isnan(scores).any(axis=-1), classes, higher + tied_before)


def _no_samples(name: str) -> DataError:
    return DataError(f"metric {name}: no samples were seen; the data source gave no batches")


class Accuracy:
    """Share of samples whose label is among the ``k`` highest-scoring classes."""

    higher_is_better = True
    needs_labels = True
    needs_reference = False

    def __init__(self, *, k: int = 1, output: int = 0) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, found {k}")
        self.name = "accuracy" if k == 1 else f"top{k}_accuracy"
        self.k = k
        self.output = output
        self.reset()

    def reset(self) -> None:
        self._correct = 0
        self._seen = 0

    def update(
        self,
        outputs: Sequence[np.ndarray],
        labels: np.ndarray | None,
        reference: Sequence[np.ndarray] | None,
    ) -> None:
        scores, labels = _class_scores(self.name, outputs, self.output, labels)
        classes = scores.shape[-1]
        if classes == 1 and self.k == 1:
            correct = _predicted_classes(scores) == labels
        elif self.k > classes:
            raise DataError(f"metric {self.name}: k={self.k} exceeds the {classes} classes")
        else:
            correct = _label_rank(self.name, scores, labels) < self.k
        self._correct += int(np.sum(correct))
        self._seen += labels.size

    def result(self) -> float:
        if not self._seen:
            raise _no_samples(self.name)
        return self._correct / self._seen


class _ConfusionCounts:
    """Per-class true positives, false positives and false negatives."""

    name: str
    needs_labels = True
    needs_reference = False
    higher_is_better = True

    def __init__(self, *, output: int = 0) -> None:
        self.output = output
        self.reset()

    def reset(self) -> None:
        self._tp = np.zeros(0, dtype=np.int64)
        self._fp = np.zeros(0, dtype=np.int64)
        self._fn = np.zeros(0, dtype=np.int64)
        self._seen = 0

    def update(
        self,
        outputs: Sequence[np.ndarray],
        labels: np.ndarray | None,
        reference: Sequence[np.ndarray] | None,
    ) -> None:
        scores, labels = _class_scores(self.name, outputs, self.output, labels)
        predicted = _predicted_classes(scores)
        if labels.size and labels.min() < 0:
            raise DataError(f"metric {self.name}: labels must be >= 0, found {labels.min()}")
        size = max(len(self._tp), max(2, scores.shape[-1]), int(labels.max(initial=0)) + 1)
        hits = predicted == labels
        self._tp = _grow(self._tp, size) + np.bincount(labels[hits], minlength=size)
        self._fp = _grow(self._fp, size) + np.bincount(predicted[~hits], minlength=size)
        self._fn = _grow(self._fn, size) + np.bincount(labels[~hits], minlength=size)
        self._seen += labels.size

    def _f1(self) -> np.ndarray:
        """F1 = 2tp / (2tp + fp + fn) per class; 0 where the class never occurs at all."""
        if not self._seen:
            raise _no_samples(self.name)
        denominator = 2 * self._tp + self._fp + self._fn
        return np.divide(
            2 * self._tp, denominator, out=np.zeros(len(denominator)), where=denominator > 0
        )


def _grow(counts: np.ndarray, size: int) -> np.ndarray:
    return np.pad(counts, (0, size - len(counts)))


class F1(_ConfusionCounts):
    """Binary F1 of class 1 (any other class is negative).

    Predictions are the argmax of the class scores, or ``score > 0`` for a single column.
    When class 1 is never predicted or never labelled the result is 0 (as scikit-learn's
    default), including the case of no positives at all.
    """

    name = "f1"

    def result(self) -> float:
        return float(self._f1()[1])


class MacroF1(_ConfusionCounts):
    """Unweighted mean of per-class F1 over the classes found in labels or predictions."""

    name = "macro_f1"

    def result(self) -> float:
        f1 = self._f1()
        present = (self._tp + self._fp + self._fn) > 0
        return float(np.mean(f1[present]))


def _paired(
    name: str,
    outputs: Sequence[np.ndarray],
    reference: Sequence[np.ndarray] | None,
    index: int,
) -> tuple[np.ndarray, np.ndarray]:
    if reference is None:
        raise DataError(f"metric {name}: needs the reference model's outputs, none were given")
    ours = _output(name, outputs, index, "model")
    theirs = _output(name, reference, index, "reference model")
    if ours.shape != theirs.shape:
        raise DataError(
            f"metric {name}: output {index} has shape {ours.shape}, the reference's has "
            f"{theirs.shape}"
        )
    return ours.astype(np.float64), theirs.astype(np.float64)


class Cosine:
    """Mean over samples of the cosine similarity between output and reference, each
    flattened per sample. Two zero vectors agree fully (1); one zero vector not at all (0)."""

    name = "cosine"
    higher_is_better = True
    needs_labels = False
    needs_reference = True

    def __init__(self, *, output: int = 0) -> None:
        self.output = output
        self.reset()

    def reset(self) -> None:
        self._total = 0.0
        self._seen = 0

    def update(
        self,
        outputs: Sequence[np.ndarray],
        labels: np.ndarray | None,
        reference: Sequence[np.ndarray] | None,
    ) -> None:
        ours, theirs = _paired(self.name, outputs, reference, self.output)
        ours = ours.reshape(len(ours), -1)
        theirs = theirs.reshape(len(theirs), -1)
        norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
        dots = np.sum(ours * theirs, axis=1)
        both_zero = ~ours.any(axis=1) & ~theirs.any(axis=1)
        cosines = np.divide(dots, norms, out=np.zeros(len(dots)), where=norms > 0)
        self._total += float(np.sum(np.where(both_zero, 1.0, cosines)))
        self._seen += len(ours)

    def result(self) -> float:
        if not self._seen:
            raise _no_samples(self.name)
        return self._total / self._seen


class MeanSquaredError:
    """Mean over all elements of the squared difference between output and reference."""

    name = "mse"
    higher_is_better = False
    needs_labels = False
    needs_reference = True

    def __init__(self, *, output: int = 0) -> None:
        self.output = output
        self.reset()

    def reset(self) -> None:
        self._total = 0.0
        self._count = 0

    def update(
        self,
        outputs: Sequence[np.ndarray],
        labels: np.ndarray | None,
        reference: Sequence[np.ndarray] | None,
    ) -> None:
        ours, theirs = _paired(self.name, outputs, reference, self.output)
        self._total += float(np.sum(np.square(ours - theirs)))
        self._count += ours.size

    def result(self) -> float:
        if not self._count:
            raise _no_samples(self.name)
        return self._total / self._count


class FunctionMetric:
    """A plain ``fn(outputs_list, labels_list) -> float`` as a Metric.

    ``outputs_list`` holds the chosen output of each batch, ``labels_list`` each batch's
    labels (None when the source has none). Shortcoming: unlike the built-in metrics this one
    keeps every batch's outputs in memory until ``result``; a function that cannot see the
    whole set at once should be written as a Metric class instead.
    """

    needs_labels = False
    needs_reference = False

    def __init__(
        self,
        function: Callable[[list[np.ndarray], list[np.ndarray] | None], Any],
        *,
        name: str,
        output: int = 0,
        higher_is_better: bool = True,
    ) -> None:
        self.name = name
        self.higher_is_better = higher_is_better
        self.output = output
        self._function = function
        self.reset()

    def reset(self) -> None:
        self._outputs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(
        self,
        outputs: Sequence[np.ndarray],
        labels: np.ndarray | None,
        reference: Sequence[np.ndarray] | None,
    ) -> None:
        self._outputs.append(np.array(_output(self.name, outputs, self.output, "model")))
        if labels is not None:
            self._labels.append(np.array(labels))

    def result(self) -> float:
        if not self._outputs:
            raise _no_samples(self.name)
        value = self._function(self._outputs, self._labels or None)
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise SpecError(
                f"metric {self.name}: the function returned {value!r}, expected a number"
            ) from exc


METRICS: dict[str, type[Metric]] = {
    "accuracy": Accuracy,
    "f1": F1,
    "macro_f1": MacroF1,
    "cosine": Cosine,
    "mse": MeanSquaredError,
}
"""Built-in metrics by spec name; ``custom`` (a user function) is handled by MetricConfig."""

_CUSTOM = "custom"


class MetricConfig(BaseModel):
    """One metric named in a spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="accuracy, f1, macro_f1, cosine, mse, or custom.")
    k: int = Field(
        default=1, ge=1, description="accuracy only: right when the label is in the top k."
    )
    output: int = Field(default=0, ge=0, description="Index of the model output to score.")
    function: str | None = Field(
        default=None,
        description="custom only: 'package.module:function' giving a Metric, or a plain "
        "fn(outputs_list, labels_list) -> float.",
    )
    higher_is_better: bool = Field(
        default=True, description="custom plain function only: whether larger is better."
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        names = [*METRICS, _CUSTOM]
        if value not in names:
            near = closest(value, names)
            hint = f"; did you mean {near!r}?" if near else ""
            raise SpecError(
                f"metric.name: unknown metric {value!r}, expected one of {', '.join(names)}{hint}"
            )
        return value

    @model_validator(mode="after")
    def _options_fit_name(self) -> MetricConfig:
        if self.k != 1 and self.name != "accuracy":
            raise SpecError(f"metric.k: only accuracy takes k, found k={self.k} on {self.name}")
        if (self.function is None) == (self.name == _CUSTOM):
            raise SpecError(
                "metric.function: required for name 'custom' and only allowed there, "
                f"found name {self.name!r} with function {self.function!r}"
            )
        if "higher_is_better" in self.model_fields_set and self.name != _CUSTOM:
            raise SpecError(f"metric.higher_is_better: fixed for {self.name}, only custom sets it")
        return self

    def build(self) -> Metric:
        """A fresh metric with its counts at zero."""
        if self.function is not None:
            return self._build_custom(self.function)
        if self.name == "accuracy":
            return Accuracy(k=self.k, output=self.output)
        return METRICS[self.name](output=self.output)  # type: ignore[call-arg]

    def _build_custom(self, reference: str) -> Metric:
        function = resolve_callable(reference, field="metric.function")
        if _takes_no_arguments(function):
            made = function()
            if not isinstance(made, Metric):
                raise SpecError(
                    f"metric.function: {reference!r} returned a {type(made).__name__}, which "
                    "lacks the Metric attributes (name, higher_is_better, needs_labels, "
                    "needs_reference, reset, update, result)"
                )
            return made
        name = reference.rpartition(":")[2]
        return FunctionMetric(
            function, name=name, output=self.output, higher_is_better=self.higher_is_better
        )


def _takes_no_arguments(function: Callable[..., Any]) -> bool:
    try:
        inspect.signature(function).bind()
    except (TypeError, ValueError):
        return False
    return True
