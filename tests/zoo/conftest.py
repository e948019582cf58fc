"""Shared fixtures for the model zoo tests: the data folder and an ONNX round trip."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

# Everything the tests load comes from installed packages; make any hub lookup fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The tests read the real data beside the repository unless SLIMGRAPH_DATA points elsewhere.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"

ExportCheck = Callable[..., onnx.ModelProto]
OutputCheck = Callable[..., None]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder; tests that need it are skipped only when it is absent."""
    folder = Path(os.environ.get("SLIMGRAPH_DATA", DEFAULT_DATA_DIR))
    if not folder.is_dir():
        pytest.skip(f"data folder {folder} not found; set SLIMGRAPH_DATA")
    return folder


def export_onnx(
    model: nn.Module,
    example: Sequence[torch.Tensor],
    input_names: Sequence[str],
    path: Path,
) -> onnx.ModelProto:
    """Export ``model`` with the torch.export-based exporter, batch axis dynamic on all inputs."""
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        tuple(example),
        path,
        input_names=list(input_names),
        output_names=["logits"],
        dynamo=True,
        dynamic_shapes=tuple({0: batch} for _ in example),
        opset_version=18,
        external_data=False,
    )
    return onnx.load(path)


def assert_onnx_matches(
    model: nn.Module,
    path: Path,
    inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    atol: float = 1e-4,
) -> None:
    """Run ``path`` in onnxruntime on ``inputs`` and compare with ``model`` within ``atol``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: tensor.numpy() for name, tensor in zip(input_names, inputs, strict=True)}
    (got,) = session.run(None, feed)
    with torch.inference_mode():
        expected = model(*inputs).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


@pytest.fixture
def onnx_matches() -> OutputCheck:
    """:func:`assert_onnx_matches`, for tests that export with their own arguments."""
    return assert_onnx_matches


@pytest.fixture
def onnx_roundtrip(tmp_path: Path) -> ExportCheck:
    """Export a model with a dynamic batch axis, check the graph, then compare outputs.

    Call as ``onnx_roundtrip(model, example, input_names, batches)``: ``example`` traces the
    export, each entry of ``batches`` (a list of input tuples of other batch sizes) must give
    the torch module's outputs within 1e-4. Returns the exported model.
    """

    def check(
        model: nn.Module,
        example: Sequence[torch.Tensor],
        input_names: Sequence[str],
        batches: Sequence[Sequence[torch.Tensor]],
    ) -> onnx.ModelProto:
        path = tmp_path / "model.onnx"
        proto = export_onnx(model, example, input_names, path)
        onnx.checker.check_model(proto, full_check=True)
        for graph_input in proto.graph.input:
            assert graph_input.type.tensor_type.shape.dim[0].dim_param, graph_input.name
        for inputs in batches:
            assert_onnx_matches(model, path, inputs, input_names)
        return proto

    return check
