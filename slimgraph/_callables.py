"""Resolve ``package.module:function`` references named in specs."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from slimgraph.errors import SpecError

__all__ = ["resolve_callable"]


def resolve_callable(reference: str, *, field: str) -> Callable[..., Any]:
    """Import ``package.module:attribute`` and return the attribute, which must be callable.

    ``field`` names the spec field the reference came from, for the error message.
    """
    module_name, sep, attr_path = reference.partition(":")
    if not sep or not module_name or not attr_path:
        raise SpecError(
            f"{field}: expected 'package.module:function', found {reference!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"{field}: cannot import module {module_name!r} ({exc})") from exc
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise SpecError(
                f"{field}: module {module_name!r} has no attribute {attr_path!r}"
            ) from exc
    if not callable(target):
        raise SpecError(f"{field}: {reference!r} is a {type(target).__name__}, not a callable")
    return target
