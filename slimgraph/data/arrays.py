"""Samples stored as NumPy arrays: one ``.npy`` per model input, or a single ``.npz``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from slimgraph.data._common import ExistingFile, RangeSource, SourceConfigBase
from slimgraph.data.base import Batch
from slimgraph.errors import DataError, SpecError, closest

__all__ = ["ArraySource", "ArraysConfig"]

logger = logging.getLogger(__name__)


class ArraysConfig(SourceConfigBase):
    """Arrays whose first axis is the sample axis, bound to the model's inputs in order."""

    kind: Literal["arrays"] = Field(
        default="arrays", description="Source kind: NumPy .npy or .npz files."
    )
    inputs: list[ExistingFile] = Field(
        min_length=1,
        description="One .npy per model input, in input order, or a single .npz.",
    )
    keys: list[str] | None = Field(
        default=None,
        description="Arrays of the .npz to use as inputs, in order (default: all but label_key).",
    )
    labels: ExistingFile | None = Field(
        default=None, description="A .npy of labels, one per sample."
    )
    label_key: str | None = Field(default=None, description="The .npz array that holds labels.")

    @model_validator(mode="after")
    def _check_layout(self) -> ArraysConfig:
        suffixes = {path.suffix.lower() for path in self.inputs}
        if suffixes == {".npz"}:
            if len(self.inputs) > 1:
                raise SpecError(f"arrays.inputs: expected one .npz, found {len(self.inputs)}")
        elif suffixes != {".npy"}:
            found = ", ".join(path.name for path in self.inputs)
            raise SpecError(f"arrays.inputs: expected .npy files or one .npz, found {found}")
        else:
            for field in ("keys", "label_key"):
                if getattr(self, field) is not None:
                    raise SpecError(f"arrays.{field}: only applies to a .npz input")
        if self.labels is not None and self.labels.suffix.lower() != ".npy":
            raise SpecError(f"arrays.labels: expected a .npy file, found {self.labels.name!r}")
        if self.labels is not None and self.label_key is not None:
            raise SpecError("arrays: give labels or label_key, not both")
        return self

    def open(self) -> ArraySource:
        if self.inputs[0].suffix.lower() == ".npz":
            arrays, labels = self._load_npz(self.inputs[0])
        else:
            arrays = [_load_npy(path, "arrays.inputs") for path in self.inputs]
            labels = None
        if self.labels is not None:
            labels = _load_npy(self.labels, "arrays.labels")
        source = ArraySource(arrays, labels, limit=self.limit)
        logger.info("arrays: %d samples, %d inputs", len(source), len(arrays))
        return source

    def _load_npz(self, path: Path) -> tuple[list[np.ndarray], np.ndarray | None]:
        # A zip member cannot be memory-mapped, so a .npz is read whole here. Sets larger
        # than memory belong in .npy files, which are mapped and read one batch at a time.
        try:
            with np.load(path, allow_pickle=False) as archive:
                stored = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"arrays.inputs: cannot read {str(path)!r} as .npz ({exc})") from exc
        wanted = self.keys or [name for name in stored if name != self.label_key]
        for name in [*wanted, *([self.label_key] if self.label_key else [])]:
            if name not in stored:
                near = closest(name, stored)
                hint = f" (did you mean {near!r}?)" if near else ""
                raise SpecError(
                    f"arrays: {str(path)!r} has no array {name!r}; it holds "
                    f"{', '.join(stored)}{hint}"
                )
        labels = stored[self.label_key] if self.label_key else None
        return [stored[name] for name in wanted], labels


def _load_npy(path: Path, field: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{field}: cannot read {str(path)!r} as .npy ({exc})") from exc
    if array.ndim == 0:
        raise DataError(f"{field}: {str(path)!r} holds a scalar, expected a sample axis")
    return array


class ArraySource(RangeSource):
    """Slices of in-memory or memory-mapped arrays; each batch is copied out on its own."""

    def __init__(
        self, inputs: list[np.ndarray], labels: np.ndarray | None, *, limit: int | None = None
    ) -> None:
        counts = [len(array) for array in inputs]
        if labels is not None:
            counts.append(len(labels))
        if len(set(counts)) != 1:
            raise DataError(
                f"arrays: sample counts differ between arrays: {counts} "
                "(inputs in order, then labels)"
            )
        super().__init__(counts[0], limit)
        self._inputs = inputs
        self._labels = labels

    def _read(self, start: int, stop: int) -> Batch:
        inputs = tuple(np.array(array[start:stop]) for array in self._inputs)
        labels = None if self._labels is None else np.array(self._labels[start:stop])
        return Batch(inputs=inputs, labels=labels)
