"""Reading and writing models: ONNX files and protos in, ONNX files out, atomically.

Serialization, external data and subgraphs are onnx-ir's; this module adds the checks and
error messages a user needs, and writes so that a reader never sees a half-written file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from slimgraph.errors import ModelError

__all__ = ["EXTERNAL_DATA_THRESHOLD", "load", "model_bytes", "save", "to_proto"]

logger = logging.getLogger(__name__)

# Protobuf cannot serialize a message over 2 GiB; above this much tensor data, weights go to
# a side file next to the model.
EXTERNAL_DATA_THRESHOLD = 1 << 30


def load(source: str | os.PathLike[str] | onnx.ModelProto) -> ir.Model:
    """Lift an ONNX file or ``ModelProto`` into the IR.

    External data is memory-mapped lazily from the file's folder, not read into memory.
    """
    if isinstance(source, onnx.ModelProto):
        return ir.serde.deserialize_model(source)
    path = Path(source)
    if not path.is_file():
        found = "a directory" if path.is_dir() else "nothing"
        raise ModelError(f"model file {path}: expected an ONNX file, found {found}")
    try:
        model = ir.load(path)
    except (DecodeError, RuntimeError, ValueError, TypeError) as exc:
        raise ModelError(
            f"model file {path}: not a readable ONNX model ({type(exc).__name__}: {exc})"
        ) from exc
    if model.graph.num_nodes() == 0 and not model.graph.outputs:
        raise ModelError(f"model file {path}: expected an ONNX model, found an empty graph")
    return model


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a ``ModelProto`` (external tensors stay references)."""
    return ir.serde.serialize_model(model)


def model_bytes(model: ir.Model) -> int:
    """Total size of the tensor data held by initializers, in all graphs."""
    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
    return total


def save(model: ir.Model, path: str | os.PathLike[str], *, external_data: bool | None = None
         ) -> Path:
    """Write ``model`` to ``path`` atomically; returns the path.

    The file (and its ``.data`` side file when weights go to external data) is written in a
    temporary folder beside the destination and moved into place only when complete.
    ``external_data=None`` chooses by size: models whose weights exceed
    :data:`EXTERNAL_DATA_THRESHOLD` keep them in ``<name>.data``.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = model_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = dest.name + ".data" if external_data else None
    if not external_data:
        # Weights memory-mapped from another file must be written into this one, or the new
        # file would point at the old side file. (Loads them into memory, in place.)
        ir.external_data.load_to_model(model)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        ir.save(model, staging / dest.name, external_data=data_name)
        if data_name is not None:
            os.replace(staging / data_name, dest.parent / data_name)
        os.replace(staging / dest.name, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.debug("wrote %s%s", dest, f" with weights in {data_name}" if data_name else "")
    return dest
