"""The project's own errors.

Every error a user can cause by what they wrote (a spec, a model file, a data folder) is a
:class:`UserError`: the command line prints its message as one line and exits with status 2.
Anything else is a defect in slimgraph and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "DataError",
    "ModelError",
    "PassError",
    "SlimgraphError",
    "SpecError",
    "TargetError",
    "UserError",
    "VerificationError",
    "closest",
]


class SlimgraphError(Exception):
    """Base of every error raised on purpose by slimgraph."""


class UserError(SlimgraphError):
    """Something the user supplied is wrong; the message says what and how to fix it."""


class SpecError(UserError):
    """A spec file is malformed: unknown key, wrong type, missing file."""


class ModelError(UserError):
    """A model cannot be read, lifted or run."""


class DataError(UserError):
    """A data source cannot be read or does not fit the model."""


class TargetError(UserError):
    """The requested target (CPU, execution provider, format) cannot honour an option."""


class VerificationError(SlimgraphError):
    """The IR broke one of its invariants; the message names the node or value."""


class PassError(SlimgraphError):
    """A compression pass failed; the message names the pass and what ran before it."""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The closest spelling of ``word`` among ``choices``, or None when nothing is near."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None
