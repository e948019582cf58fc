"""IDX files, the format of MNIST, plain or gzip-compressed.

An IDX file is a 4-byte magic number (two zero bytes, a dtype code, the number of dimensions),
then one big-endian uint32 per dimension, then the values in C order, big-endian.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from pydantic import Field

from slimgraph.data._common import ExistingFile, SourceConfigBase, sample_spans
from slimgraph.data.base import Batch
from slimgraph.errors import DataError

__all__ = ["IdxConfig", "IdxHeader", "IdxSource", "read_idx_header"]

logger = logging.getLogger(__name__)

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class IdxHeader:
    """What the header of an IDX file declares."""

    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def sample_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def _open_stream(path: Path) -> BinaryIO:
    with path.open("rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else path.open("rb")


def read_idx_header(stream: BinaryIO, path: Path) -> IdxHeader:
    """Parse the header at the start of ``stream``; ``path`` is for messages."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in _IDX_DTYPES:
        codes = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise DataError(
            f"idx: {str(path)!r} is not an IDX file: expected magic 00 00 <dtype code in "
            f"{codes}> <ndim>, found {magic.hex(' ') or 'an empty file'}"
        )
    ndim = magic[3]
    raw_dims = stream.read(4 * ndim)
    if ndim == 0 or len(raw_dims) < 4 * ndim:
        raise DataError(f"idx: {str(path)!r} declares {ndim} dimensions but its header ends early")
    shape = struct.unpack(f">{ndim}I", raw_dims)
    return IdxHeader(dtype=_IDX_DTYPES[magic[2]], shape=shape)


class IdxConfig(SourceConfigBase):
    """An IDX array of samples (images) and optionally an IDX vector of labels."""

    kind: Literal["idx"] = Field(default="idx", description="Source kind: IDX files (MNIST).")
    images: ExistingFile = Field(description="IDX file of samples, plain or gzip'd.")
    labels: ExistingFile | None = Field(
        default=None, description="IDX file of integer labels, one per sample."
    )
    scale: float = Field(default=1 / 255, description="Factor applied to the stored values.")
    add_channel: bool = Field(
        default=True, description="Insert a channel axis: (N, H, W) becomes (N, 1, H, W)."
    )

    def open(self) -> IdxSource:
        source = IdxSource(self.images, self.labels, self.scale, self.add_channel, self.limit)
        logger.info("idx: %d samples of shape %s from %s", len(source), source.shape, self.images)
        return source


def _header_of(path: Path) -> IdxHeader:
    try:
        with _open_stream(path) as stream:
            return read_idx_header(stream, path)
    except (OSError, EOFError) as exc:
        raise DataError(f"idx: cannot read {str(path)!r} ({exc})") from exc


class IdxSource:
    """Reads the files front to back on each pass, one batch of bytes at a time."""

    def __init__(
        self,
        images: Path,
        labels: Path | None,
        scale: float,
        add_channel: bool,
        limit: int | None = None,
    ) -> None:
        self._images, self._labels = images, labels
        self._scale, self._add_channel = scale, add_channel
        self._image_header = _header_of(images)
        self._label_header = None if labels is None else _header_of(labels)
        count = self._image_header.shape[0]
        if self._label_header is not None:
            if len(self._label_header.shape) != 1:
                raise DataError(
                    f"idx.labels: expected a vector of labels, {str(labels)!r} has shape "
                    f"{self._label_header.shape}"
                )
            if self._label_header.shape[0] != count:
                raise DataError(
                    f"idx: {str(images)!r} holds {count} samples but {str(labels)!r} holds "
                    f"{self._label_header.shape[0]} labels"
                )
        self._total = count if limit is None else min(count, limit)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample as yielded."""
        sample = self._image_header.shape[1:]
        return (1, *sample) if self._add_channel else sample

    def __len__(self) -> int:
        return self._total

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        spans = list(sample_spans(self._total, batch_size, limit))
        with contextlib.ExitStack() as stack:
            images = stack.enter_context(_open_after_header(self._images))
            labels = None
            if self._labels is not None:
                labels = stack.enter_context(_open_after_header(self._labels))
            for start, stop in spans:
                pixels = _take(images, self._images, self._image_header, stop - start)
                pixels = pixels.astype(np.float32) * np.float32(self._scale)
                label_values = None
                if labels is not None and self._label_header is not None:
                    label_values = _take(labels, self._labels, self._label_header, stop - start)
                    label_values = label_values.astype(np.int64)
                yield Batch(inputs=(pixels.reshape(-1, *self.shape),), labels=label_values)


def _open_after_header(path: Path) -> BinaryIO:
    stream = _open_stream(path)
    read_idx_header(stream, path)
    return stream


def _take(stream: BinaryIO, path: Path | None, header: IdxHeader, count: int) -> np.ndarray:
    """The next ``count`` samples of ``stream``."""
    wanted = count * header.sample_bytes
    try:
        raw = stream.read(wanted)
    except (OSError, EOFError) as exc:
        raise DataError(f"idx: cannot read {str(path)!r} ({exc})") from exc
    if len(raw) < wanted:
        raise DataError(
            f"idx: {str(path)!r} ends early: its header declares {header.shape[0]} "
            f"samples of {header.sample_bytes} bytes"
        )
    return np.frombuffer(raw, dtype=header.dtype).reshape(count, *header.shape[1:])
