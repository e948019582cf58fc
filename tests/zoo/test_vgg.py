"""VGG-16: torchvision's shapes and names, the 7x7 pooling left out at 224, ONNX export."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from slimgraph.zoo.vgg import VGG, vgg16

Exported = tuple[Path, ort.InferenceSession, Counter[str]]

EXPORTED_OPS = {"Conv": 13, "Relu": 15, "MaxPool": 5, "Reshape": 1, "Gemm": 3}


@pytest.fixture(scope="module")
def model() -> VGG:
    return vgg16()


@pytest.fixture(scope="module")
def exported(model: VGG, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The model exported once with a dynamic batch axis: file, session and op histogram."""
    path = tmp_path_factory.mktemp("vgg16") / "vgg16.onnx"
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


def _images(batch: int, seed: int, size: int = 224) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_structure(model: VGG) -> None:
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == 138_357_544
    convs = [index for index, layer in enumerate(model.features) if isinstance(layer, nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert [key for key in model.state_dict() if key.startswith("classifier")] == [
        f"classifier.{index}.{kind}" for index in (0, 3, 6) for kind in ("weight", "bias")
    ]
    assert model.classifier[0].in_features == 512 * 7 * 7


def test_torchvision_initialisation(model: VGG) -> None:
    # Convolutions: Kaiming normal over fan-out, sqrt(2 / (64 * 9)) = 0.059 for the first.
    assert 0.055 < float(model.features[0].weight.std()) < 0.063
    # Linear layers: normal with standard deviation 0.01; every bias zero.
    assert 0.0099 < float(model.classifier[3].weight.std()) < 0.0101
    assert not model.features[0].bias.any() and not model.classifier[6].bias.any()


def test_other_sizes_pool_to_seven(model: VGG) -> None:
    # 64x64 gives a 2x2 map, which is pooled to 7x7 as torchvision does.
    images = _images(1, seed=0, size=64)
    with torch.inference_mode():
        features = model.features(images)
        expected = model.classifier(torch.flatten(nn.AdaptiveAvgPool2d(7)(features), 1))
        got = model(images)
    assert features.shape[-2:] == (2, 2)
    torch.testing.assert_close(got, expected)


def test_weights_load_strictly(model: VGG) -> None:
    # Near miss: every key present, the last layer cut to 10 classes.
    state = dict(model.state_dict())
    state["classifier.6.bias"] = state["classifier.6.bias"][:10]
    with pytest.raises(
        ValueError,
        match=r"missing keys \[\], unexpected keys \[\], "
        r"wrong shapes \['classifier\.6\.bias: file \(10,\), model \(1000,\)'\]",
    ):
        vgg16(weights=state)


def test_onnx_graph(exported: Exported) -> None:
    path, session, ops = exported
    onnx.checker.check_model(str(path), full_check=True)
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "input" and isinstance(graph_input.shape[0], str)
    # No AveragePool: the 7x7 adaptive pooling is an identity at 224 and is left out.
    assert ops == EXPORTED_OPS


@pytest.mark.parametrize("batch", [2, 1])
def test_onnx_matches_torch(model: VGG, exported: Exported, batch: int) -> None:
    _, session, _ = exported
    images = _images(batch, seed=10 + batch)
    (got,) = session.run(None, {"input": images.numpy()})
    with torch.inference_mode():
        expected = model(images).numpy()
    assert got.shape == expected.shape == (batch, 1000)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * float(np.abs(expected).max()))
