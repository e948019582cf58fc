"""ImageNet ResNet-18/50: torchvision's shapes and names, batch norm, weights, ONNX export."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from slimgraph.zoo.resnet import Bottleneck, ResNet, global_average_pool, resnet18, resnet50

Exported = tuple[Path, ort.InferenceSession, Counter[str]]

# name: (factory, parameters, state dict entries, exported op histogram)
MODELS: dict[str, tuple[Callable[..., ResNet], int, int, dict[str, int]]] = {
    "resnet18": (
        resnet18,
        11_689_512,
        122,
        dict(Conv=20, Relu=17, Add=8, MaxPool=1, AveragePool=1, Reshape=1, Gemm=1),
    ),
    "resnet50": (
        resnet50,
        25_557_032,
        320,
        dict(Conv=53, Relu=49, Add=16, MaxPool=1, AveragePool=1, Reshape=1, Gemm=1),
    ),
}


@functools.cache
def _model(name: str) -> ResNet:
    return MODELS[name][0]()


@pytest.fixture(scope="module", params=sorted(MODELS))
def named_model(request: pytest.FixtureRequest) -> tuple[str, ResNet]:
    return request.param, _model(request.param)


@pytest.fixture(scope="module")
def exported(named_model: tuple[str, ResNet], tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The model exported once with a dynamic batch axis: file, session and op histogram."""
    name, model = named_model
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
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


def test_structure(named_model: tuple[str, ResNet]) -> None:
    name, model = named_model
    _, parameters, entries, _ = MODELS[name]
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert len(model.state_dict()) == entries


def test_torchvision_names_and_strides() -> None:
    model = ResNet(Bottleneck, (3, 4, 6, 3))
    names = model.state_dict().keys()
    for key in ("conv1.weight", "layer1.0.conv3.weight", "layer4.2.bn3.running_var", "fc.bias"):
        assert key in names
    assert "layer1.0.downsample.0.weight" in names and "layer1.1.downsample.0.weight" not in names
    # v1.5: the stride sits on the 3x3 convolution, not on the first 1x1.
    first = model.layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    assert first.downsample is not None and first.downsample[0].stride == (2, 2)


def test_batch_norm_is_not_identity(named_model: tuple[str, ResNet]) -> None:
    _, model = named_model
    norm = model.layer1[0].bn1
    assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var), atol=0.05)
    assert norm.running_mean.abs().max() > 0.05
    assert not torch.allclose(norm.weight, torch.ones_like(norm.weight), atol=0.05)


def test_weights_load_from_file_and_mapping(tmp_path: Path) -> None:
    original = _model("resnet18")
    torch.save(original.state_dict(), tmp_path / "weights.pt")
    for weights in (tmp_path / "weights.pt", original.state_dict()):
        reloaded = resnet18(weights=weights)
        for key, value in original.state_dict().items():
            assert torch.equal(reloaded.state_dict()[key], value), key


def test_wrong_weights_are_rejected(named_model: tuple[str, ResNet], tmp_path: Path) -> None:
    name, model = named_model
    if name == "resnet50":
        with pytest.raises(ValueError, match=r"unexpected keys \['layer1\.0\.bn3\.bias'"):
            resnet18(weights=model.state_dict())
        return
    # Near miss: the right keys, with the classifier cut to 10 classes.
    state = dict(model.state_dict())
    state["fc.weight"], state["fc.bias"] = state["fc.weight"][:10], state["fc.bias"][:10]
    with pytest.raises(ValueError, match=r"wrong shapes \['fc\.bias: file \(10,\)"):
        resnet18(weights=state)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pt")
    with pytest.raises(ValueError, match=r"wrapped\.pt.*unexpected keys \['state_dict'\]"):
        resnet18(weights=tmp_path / "wrapped.pt")


def test_onnx_graph(named_model: tuple[str, ResNet], exported: Exported) -> None:
    name, _ = named_model
    path, session, ops = exported
    onnx.checker.check_model(str(path), full_check=True)
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "input" and isinstance(graph_input.shape[0], str)
    # Batch norm is folded into the convolutions by the exporter; pooling is AveragePool.
    assert ops == MODELS[name][3]


@pytest.mark.parametrize("batch", [2, 1])
def test_onnx_matches_torch(
    named_model: tuple[str, ResNet], exported: Exported, batch: int
) -> None:
    _, model = named_model
    _, session, _ = exported
    images = _images(batch, seed=10 + batch)
    (got,) = session.run(None, {"input": images.numpy()})
    with torch.inference_mode():
        expected = model(images).numpy()
    assert got.shape == expected.shape == (batch, 1000)
    # Calibrated batch norm keeps the logits of a random ResNet-50 near unit scale; with
    # torchvision's identity statistics they grow past 100.
    assert 0.1 < float(expected.std()) < 5.0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * float(np.abs(expected).max()))


def test_global_pool_is_whole_map_average() -> None:
    x = torch.randn(2, 5, 7, 9)
    torch.testing.assert_close(global_average_pool(x), nn.AdaptiveAvgPool2d(1)(x))
