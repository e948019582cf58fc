"""MobileNetV2: torchvision's shapes and names, seeded initialisation, weights, ONNX export."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from slimgraph.zoo.mobilenet_v2 import InvertedResidual, MobileNetV2, mobilenet_v2

Exported = tuple[Path, ort.InferenceSession, Counter[str]]

# Batch norm is folded into the convolutions by the exporter; ReLU6 becomes Clip.
EXPORTED_OPS = {"Conv": 52, "Clip": 35, "Add": 10, "AveragePool": 1, "Reshape": 1, "Gemm": 1}


@pytest.fixture(scope="module")
def model() -> MobileNetV2:
    return mobilenet_v2()


@pytest.fixture(scope="module")
def exported(model: MobileNetV2, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The model exported once with a dynamic batch axis: file, session and op histogram."""
    path = tmp_path_factory.mktemp("mobilenet_v2") / "mobilenet_v2.onnx"
    program = torch.onnx.export(
        model,
        (_images(2, seed=1),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=18,
        # Weights in a side file: saving, checking and loading then skip a protobuf copy.
        external_data=True,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert program is not None
    return path, session, Counter(node.op_type for node in program.model.graph)


def _images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_structure(model: MobileNetV2) -> None:
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    assert len(model.state_dict()) == 314
    blocks = [layer for layer in model.features if isinstance(layer, InvertedResidual)]
    assert len(blocks) == 17 and len(model.features) == 19
    assert sum(block.use_res_connect for block in blocks) == 10
    names = model.state_dict().keys()
    for key in ("features.0.0.weight", "features.1.conv.1.weight", "features.2.conv.3.bias"):
        assert key in names
    assert "features.18.1.running_var" in names and "classifier.1.weight" in names
    # The first block has no expansion: depthwise 32 channels, then project to 16.
    assert model.features[1].conv[0][0].groups == 32


def test_seeded_initialisation(model: MobileNetV2) -> None:
    state = torch.random.get_rng_state()
    again, other = mobilenet_v2(seed=0), mobilenet_v2(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's generator moved"
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert not torch.equal(other.classifier[1].weight, model.classifier[1].weight)
    norm = model.features[0][1]
    assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var), atol=0.05)
    assert not torch.allclose(norm.weight, torch.ones_like(norm.weight), atol=0.05)
    # torchvision's classifier init: normal, standard deviation 0.01, zero bias.
    assert 0.009 < float(model.classifier[1].weight.std()) < 0.011
    assert not model.classifier[1].bias.any()


def test_weights_round_trip_and_near_miss(model: MobileNetV2, tmp_path: Path) -> None:
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    reloaded = mobilenet_v2(weights=tmp_path / "weights.pt", seed=1)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    # Near miss: the classifier saved without its Sequential index.
    state = dict(model.state_dict())
    state["classifier.weight"] = state.pop("classifier.1.weight")
    with pytest.raises(ValueError, match=r"missing keys \['classifier\.1\.weight'\]"):
        mobilenet_v2(weights=state)


def test_onnx_graph(exported: Exported) -> None:
    path, session, ops = exported
    onnx.checker.check_model(str(path), full_check=True)
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "input" and isinstance(graph_input.shape[0], str)
    assert ops == EXPORTED_OPS


@pytest.mark.parametrize("batch", [2, 1])
def test_onnx_matches_torch(model: MobileNetV2, exported: Exported, batch: int) -> None:
    _, session, _ = exported
    images = _images(batch, seed=10 + batch)
    (got,) = session.run(None, {"input": images.numpy()})
    with torch.inference_mode():
        expected = model(images).numpy()
    assert got.shape == expected.shape == (batch, 1000)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * float(np.abs(expected).max()))
