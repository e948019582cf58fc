"""Progress bars for long work (calibration, evaluation, benchmarks).

Bars go to stderr and are off unless the application turns them on (the command line does,
when stderr is a terminal or when asked), so that library users and tests see nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["enable", "track"]

T = TypeVar("T")

_enabled = False


def enable(on: bool = True) -> None:
    """Turn progress bars on or off for this process."""
    global _enabled
    _enabled = on


def track(items: Iterable[T], *, total: int | None, desc: str, unit: str = "batch"
          ) -> Iterator[T]:
    """Iterate over ``items``, drawing a bar when progress is enabled."""
    if not _enabled:
        yield from items
        return
    from tqdm import tqdm

    with tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
              dynamic_ncols=True) as bar:
        yield from bar
