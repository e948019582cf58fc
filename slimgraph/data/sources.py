"""The data sources a spec can name, one config class per ``kind``.

Each config validates its options (paths are expanded and must exist) and opens into a
:class:`~slimgraph.data.base.DataSource` with ``open()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, TypeAdapter

from slimgraph.data._common import SourceConfigBase, expand_path
from slimgraph.data.arrays import ArraysConfig
from slimgraph.data.custom import CustomConfig
from slimgraph.data.idx import IdxConfig
from slimgraph.data.images import ImageFolderConfig
from slimgraph.data.text import TsvConfig

__all__ = [
    "SOURCE_CONFIGS",
    "ArraysConfig",
    "CustomConfig",
    "IdxConfig",
    "ImageFolderConfig",
    "SourceConfig",
    "TsvConfig",
    "expand_path",
    "parse_source",
]

SourceConfig = Annotated[
    ArraysConfig | ImageFolderConfig | IdxConfig | TsvConfig | CustomConfig,
    Field(discriminator="kind"),
]
"""Any source config, chosen by its ``kind`` field."""

SOURCE_CONFIGS: dict[str, type[SourceConfigBase]] = {
    "arrays": ArraysConfig,
    "image_folder": ImageFolderConfig,
    "idx": IdxConfig,
    "tsv": TsvConfig,
    "custom": CustomConfig,
}
"""Config class of each source kind, in the order the documentation lists them."""

_ADAPTER: TypeAdapter[SourceConfig] = TypeAdapter(SourceConfig)


def parse_source(data: object, *, base_dir: str | Path | None = None) -> SourceConfig:
    """Validate a mapping (from a spec) into the config of its ``kind``.

    Relative paths are taken from ``base_dir`` when given, else from the working directory.
    """
    context = {"base_dir": base_dir} if base_dir is not None else None
    return _ADAPTER.validate_python(data, context=context)
