"""What every source shares: path fields, the ``limit`` option and range-based batching."""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

from slimgraph.data.base import Batch
from slimgraph.errors import SpecError, closest

__all__ = [
    "ExistingDir",
    "ExistingFile",
    "RangeSource",
    "SourceConfigBase",
    "describe_missing",
    "expand_path",
    "field_label",
    "resolve_path",
    "sample_spans",
]

_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_LISTED_ENTRIES = 12


def expand_path(value: str, field: str) -> Path:
    """Expand ``${VAR}``, ``$VAR`` and a leading ``~`` in ``value``.

    An unset variable is a :class:`SpecError` naming ``field``, never left in the path. A
    variable that starts the path and holds a relative path (``SLIMGRAPH_DATA=../data``) is
    read from the working directory, where the shell that set it stands, not from the spec's
    folder.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") if match.group("braced") is not None else match["plain"]
        if name not in os.environ:
            raise SpecError(
                f"{field}: environment variable {name!r} is not set (used in {value!r}); "
                "set it or write the path out"
            )
        found = os.environ[name]
        if match.start() == 0 and found and not os.path.isabs(os.path.expanduser(found)):
            return os.path.abspath(found)
        return found

    return Path(_VARIABLE.sub(substitute, value)).expanduser()


def field_label(info: ValidationInfo) -> str:
    """``kind.field`` for error messages, e.g. ``image_folder.root``."""
    kind = info.data.get("kind")
    return f"{kind}.{info.field_name}" if kind else str(info.field_name)


def resolve_path(value: object, info: ValidationInfo) -> Path:
    """Expand ``value`` and anchor a relative path at the validation context's ``base_dir``.

    A spec loader passes ``context={"base_dir": spec_folder}`` so that relative paths in a
    spec mean the same thing from any working directory.
    """
    if not isinstance(value, str | os.PathLike):
        raise SpecError(f"{field_label(info)}: expected a path, found {value!r}")
    path = expand_path(os.fspath(value), field_label(info))
    base_dir = (info.context or {}).get("base_dir")
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return path


def describe_missing(path: Path, label: str, original: object) -> str:
    """One line saying that ``path`` is missing and what its folder holds instead."""
    shown = f"{str(path)!r}" + (f" (from {original!r})" if str(original) != str(path) else "")
    parent = path.parent
    if not parent.is_dir():
        return f"{label}: {shown} does not exist, nor does its folder {str(parent)!r}"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in parent.iterdir())
    listed = ", ".join(names[:_LISTED_ENTRIES]) + (", ..." if len(names) > _LISTED_ENTRIES else "")
    message = f"{label}: {shown} does not exist; {str(parent)!r} holds: {listed or 'nothing'}"
    near = closest(path.name, [name.rstrip("/") for name in names])
    return message + (f" (did you mean {near!r}?)" if near else "")


def _existing(kind: str) -> Any:
    def validate(value: object, info: ValidationInfo) -> Path:
        label = field_label(info)
        path = resolve_path(value, info)
        if not path.exists():
            raise SpecError(describe_missing(path, label, value))
        if kind == "file" and not path.is_file():
            raise SpecError(f"{label}: expected a file, found the folder {str(path)!r}")
        if kind == "folder" and not path.is_dir():
            raise SpecError(f"{label}: expected a folder, found the file {str(path)!r}")
        return path

    return BeforeValidator(validate)


ExistingFile = Annotated[Path, _existing("file")]
"""A path field that must name an existing file once expanded."""

ExistingDir = Annotated[Path, _existing("folder")]
"""A path field that must name an existing folder once expanded."""


class SourceConfigBase(BaseModel):
    """Options shared by every source kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int | None = Field(
        default=None, ge=1, description="Take at most this many samples (the first ones)."
    )


def sample_spans(total: int, batch_size: int, limit: int | None) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each batch over the first ``min(total, limit)`` samples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, found {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be at least 0, found {limit}")
    end = total if limit is None else min(total, limit)
    for start in range(0, end, batch_size):
        yield start, min(start + batch_size, end)


class RangeSource(abc.ABC):
    """A source that can read any contiguous range of its samples."""

    def __init__(self, total: int, limit: int | None) -> None:
        self._total = total if limit is None else min(total, limit)

    def __len__(self) -> int:
        return self._total

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        for start, stop in sample_spans(self._total, batch_size, limit):
            yield self._read(start, stop)

    @abc.abstractmethod
    def _read(self, start: int, stop: int) -> Batch:
        """Read and decode samples ``start`` to ``stop`` (exclusive)."""
