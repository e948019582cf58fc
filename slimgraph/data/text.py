"""Sentence and sentence-pair classification data from a TSV file, tokenised per batch."""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from slimgraph._callables import resolve_callable
from slimgraph.data._common import (
    ExistingFile,
    RangeSource,
    SourceConfigBase,
    describe_missing,
    field_label,
    resolve_path,
)
from slimgraph.data.base import Batch
from slimgraph.errors import DataError, SpecError, closest

__all__ = ["InputName", "TextSource", "TsvConfig", "load_tokenizer"]

logger = logging.getLogger(__name__)

InputName = Literal["input_ids", "attention_mask", "token_type_ids"]

_CALLABLE_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

Tokenizer = Callable[..., Mapping[str, Any]]


class TsvConfig(SourceConfigBase):
    """A tab-separated file with a header row; one text column, or two for sentence pairs.

    Fields are taken literally (no quote handling): GLUE files hold unbalanced quotes.
    """

    kind: Literal["tsv"] = Field(default="tsv", description="Source kind: text in a TSV file.")
    path: ExistingFile = Field(description="The TSV file; its first row names the columns.")
    text_columns: list[str] = Field(
        min_length=1,
        max_length=2,
        description="Column holding the sentence, or two columns holding a sentence pair.",
    )
    label_column: str | None = Field(
        default=None, description="Column holding the label (integer class or number)."
    )
    tokenizer: str = Field(
        description="Folder holding a Hugging Face tokenizer, or 'package.module:function' "
        "returning such a folder or a tokenizer object."
    )
    max_length: int = Field(default=128, ge=1, description="Tokens per sample, after truncation.")
    padding: Literal["max_length", "longest"] = Field(
        default="max_length",
        description="Pad every sample to max_length, or to the longest sample of its batch.",
    )
    input_names: list[InputName] | None = Field(
        default=None,
        description="Tokenizer outputs to feed the model (default: all the tokenizer gives).",
    )

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _tokenizer_folder(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str | os.PathLike) or (
            isinstance(value, str) and _CALLABLE_REFERENCE.match(value)
        ):
            return value
        path = resolve_path(value, info)
        if not path.is_dir():
            raise SpecError(describe_missing(path, field_label(info), value))
        return str(path)

    def open(self) -> TextSource:
        header, rows, lines = _read_table(self.path)
        columns = [_column_index(header, name, self.path) for name in self.text_columns]
        texts = [[row[index] for row in rows] for index in columns]
        labels = None
        if self.label_column is not None:
            index = _column_index(header, self.label_column, self.path)
            values = [row[index] for row in rows]
            labels = _parse_labels(values, lines, self.path, self.label_column)
        tokenizer = load_tokenizer(self.tokenizer)
        source = TextSource(
            texts,
            labels,
            tokenizer,
            max_length=self.max_length,
            padding=self.padding,
            input_names=self.input_names,
            limit=self.limit,
        )
        logger.info(
            "tsv: %d samples from %s, columns %s, inputs %s",
            len(source),
            self.path,
            self.text_columns,
            source.input_names,
        )
        return source


def _read_table(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the rows, and each row's line number."""
    # utf-8-sig: the GLUE MRPC files start with a byte-order mark.
    with path.open(encoding="utf-8-sig", newline="") as stream:
        reader = csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if not header:
            raise DataError(f"tsv.path: {str(path)!r} is empty; expected a header row")
        rows: list[list[str]] = []
        lines: list[int] = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"tsv.path: {str(path)!r} line {reader.line_num} has {len(row)} fields, "
                    f"the header has {len(header)}"
                )
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise DataError(f"tsv.path: {str(path)!r} has a header but no rows")
    return header, rows, lines


def _column_index(header: list[str], name: str, path: Path) -> int:
    if name in header:
        return header.index(name)
    near = closest(name, header)
    hint = f" (did you mean {near!r}?)" if near else ""
    raise SpecError(
        f"tsv: column {name!r} is not in {str(path)!r}; its columns are "
        f"{', '.join(map(repr, header))}{hint}"
    )


def _parse_labels(values: list[str], lines: list[int], path: Path, column: str) -> np.ndarray:
    """Integer labels as int64; any non-integer label makes them all float32 (regression)."""
    numbers: list[int | float] = []
    for value, line in zip(values, lines, strict=True):
        try:
            numbers.append(int(value))
        except ValueError:
            try:
                numbers.append(float(value))
            except ValueError as exc:
                raise DataError(
                    f"tsv.label_column: {str(path)!r} line {line}, column {column!r}: "
                    f"expected a number, found {value!r}"
                ) from exc
    integers = all(isinstance(number, int) for number in numbers)
    return np.asarray(numbers, dtype=np.int64 if integers else np.float32)


def load_tokenizer(reference: str) -> Tokenizer:
    """A tokenizer from a folder, or from ``package.module:function`` returning one or a folder."""
    if _CALLABLE_REFERENCE.match(reference) and not Path(reference).is_dir():
        made = resolve_callable(reference, field="tsv.tokenizer")()
        if isinstance(made, str | os.PathLike):
            return _from_folder(Path(made))
        if not callable(made):
            raise SpecError(
                f"tsv.tokenizer: {reference!r} returned a {type(made).__name__}; expected a "
                "tokenizer folder or a callable tokenizer"
            )
        return made
    return _from_folder(Path(reference))


def _from_folder(path: Path) -> Tokenizer:
    # Never reach a hub: the variable covers the first import of transformers in this
    # process, local_files_only covers the case where it was imported already.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise SpecError(
            f"tsv.tokenizer: loading the tokenizer folder {str(path)!r} needs the "
            "'transformers' package, which is not installed"
        ) from exc
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"tsv.tokenizer: cannot load a tokenizer from {str(path)!r} ({exc})"
        ) from exc


class TextSource(RangeSource):
    """Holds the raw text in memory and tokenises each batch when it is asked for."""

    def __init__(
        self,
        texts: Sequence[Sequence[str]],
        labels: np.ndarray | None,
        tokenizer: Tokenizer,
        *,
        max_length: int,
        padding: Literal["max_length", "longest"],
        input_names: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(len(texts[0]), limit)
        self._texts = [list(column) for column in texts]
        self._labels = labels
        self._tokenizer = tokenizer
        self._max_length = max_length
        self._padding = padding
        given = list(self._encode(0, 1))
        if input_names is None:
            self.input_names: tuple[str, ...] = tuple(given)
        else:
            unknown = [name for name in input_names if name not in given]
            if unknown:
                raise SpecError(
                    f"tsv.input_names: the tokenizer does not give {', '.join(unknown)}; "
                    f"it gives {', '.join(given)}"
                )
            self.input_names = tuple(input_names)

    @property
    def labels(self) -> np.ndarray | None:
        """Every sample's label, known without tokenising."""
        return None if self._labels is None else self._labels[: len(self)].copy()

    def _encode(self, start: int, stop: int) -> Mapping[str, Any]:
        pairs = self._texts[1][start:stop] if len(self._texts) > 1 else None
        return self._tokenizer(
            self._texts[0][start:stop],
            pairs,
            padding=self._padding,
            truncation=True,
            max_length=self._max_length,
            return_tensors="np",
        )

    def _read(self, start: int, stop: int) -> Batch:
        encoded = self._encode(start, stop)
        inputs = {name: np.asarray(encoded[name], dtype=np.int64) for name in self.input_names}
        labels = None if self._labels is None else self._labels[start:stop].copy()
        return Batch(inputs=inputs, labels=labels)
