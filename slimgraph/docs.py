"""The spec reference, generated from the declarations in :mod:`slimgraph.spec` and
:mod:`slimgraph.data`: ``python -m slimgraph.docs > docs/spec.md``."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from slimgraph.data import SOURCE_CONFIGS, MetricConfig
from slimgraph.spec import Spec

__all__ = ["spec_reference"]


def spec_reference() -> str:
    lines = [
        "# Spec reference",
        "",
        "Generated from the declarations in `slimgraph/spec.py` and `slimgraph/data/` by",
        "`python -m slimgraph.docs`; do not edit by hand. Paths may use `${VAR}` (taken from",
        "the environment) and are read relative to the spec file's folder.",
        "",
    ]
    lines += _section("spec (top level)", Spec)
    for name, model in _nested(Spec):
        lines += _section(name, model)
    lines += ["## Data sources", "", "`data.evaluation` and `data.calibration` take one of "
              "these, chosen by `kind`.", ""]
    for kind, config in SOURCE_CONFIGS.items():
        lines += _section(f"source kind `{kind}`", config, level=3)
    lines += _section("metric", MetricConfig)
    return "\n".join(lines).rstrip() + "\n"


def _nested(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    found = []
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        if sub is not None and sub not in SOURCE_CONFIGS.values() and sub is not MetricConfig:
            path = f"{prefix}{name}"
            found.append((path, sub))
            found += _nested(sub, prefix=f"{path}.")
    return found


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list,):
        return None
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _section(title: str, model: type[BaseModel], level: int = 2) -> list[str]:
    doc = (model.__doc__ or "").strip().splitlines()
    lines = [f"{'#' * level} {title}", ""]
    if doc:
        lines += [doc[0], ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | "
                     f"{(field.description or '').replace('|', '/')} |")
    return [*lines, ""]


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "see below" if isinstance(value, BaseModel) else f"`{value!r}`"
    return "" if field.default is PydanticUndefined else f"`{field.default!r}`"


_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path",
            Any: "any"}


def _type_name(annotation: Any) -> str:
    """A reader's name for a field type: ``integer``, ``list of string``, ``'a' / 'b'``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        names = (["source (see Data sources)"] if all(a in _SOURCES for a in kinds)
                 else [_type_name(a) for a in kinds])
        return " or ".join(dict.fromkeys(names)) + (" or null" if len(kinds) < len(args) else "")
    if origin is Literal:
        return " / ".join(f"`{a!r}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return "mapping"
    if annotation in _SOURCES:
        return "source (see Data sources)"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section (below)" if annotation is not MetricConfig else "metric (below)"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


_SOURCES = frozenset(SOURCE_CONFIGS.values())


if __name__ == "__main__":
    sys.stdout.write(spec_reference())
