"""CIFAR ResNets: structure, strict checkpoint loading, ONNX export and accuracy on real data."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from slimgraph.zoo.cifar_resnet import CifarResNet, resnet20, resnet32, resnet44, resnet56

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PER_CLASS = 50
# ResNet-20 on the first 50 JPEGs of each class (500 images), measured with torch 2.13 CPU:
# 399 correct (79.8 %; 81.03 % on all 10,000). The band allows one or two images to flip on
# other CPUs' rounding, and nothing more.
RESNET20_SUBSET_CORRECT = 399


def _checkpoint(data_dir: Path, depth: int) -> Path:
    (path,) = sorted((data_dir / "models" / "cifar10_resnet").glob(f"resnet{depth}-*.th"))
    return path


def _cifar_subset(data_dir: Path, per_class: int) -> tuple[torch.Tensor, np.ndarray]:
    root = data_dir / "cifar10" / "test"
    classes = sorted(folder.name for folder in root.iterdir() if folder.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((root / name).glob("*.jpg"))[:per_class]:
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
            images.append(((pixels - MEAN) / STD).transpose(2, 0, 1))
            labels.append(index)
    return torch.from_numpy(np.stack(images)), np.array(labels)


@pytest.mark.parametrize(
    ("factory", "blocks", "parameters"),
    [
        (resnet20, 3, 269_722),
        (resnet32, 5, 464_154),
        (resnet44, 7, 658_586),
        (resnet56, 9, 853_018),
    ],
)
def test_structure_and_shapes(
    factory: Callable[[], CifarResNet], blocks: int, parameters: int
) -> None:
    model = factory()
    assert isinstance(model, CifarResNet)
    assert not model.training
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == blocks
    assert sum(p.numel() for p in model.parameters()) == parameters
    with torch.inference_mode():
        assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


def test_shortcut_subsamples_and_zero_pads_channels() -> None:
    block = resnet20().layer2[0]
    x = torch.randn(2, 16, 32, 32)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 16, 16)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_loads_published_checkpoint(data_dir: Path) -> None:
    model = resnet20(weights=_checkpoint(data_dir, 20))
    published = torch.load(_checkpoint(data_dir, 20), map_location="cpu", weights_only=True)
    assert torch.equal(model.linear.weight, published["state_dict"]["module.linear.weight"])
    assert not model.training


def test_reloads_plain_state_dict(data_dir: Path, tmp_path: Path) -> None:
    # Near miss that must load: no 'module.' prefix and no wrapping dict.
    original = resnet20(weights=_checkpoint(data_dir, 20))
    torch.save(original.state_dict(), tmp_path / "plain.pt")
    reloaded = resnet20(weights=tmp_path / "plain.pt")
    for key, value in original.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_deeper_checkpoint_is_rejected(data_dir: Path) -> None:
    path = _checkpoint(data_dir, 56)
    with pytest.raises(ValueError, match=r"unexpected keys \['layer1\.3\.bn1\.bias'") as info:
        resnet20(weights=path)
    assert str(path) in str(info.value)


def test_renamed_key_is_rejected(data_dir: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(_checkpoint(data_dir, 20), map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    state["module.fc.weight"] = state.pop("module.linear.weight")
    torch.save(checkpoint, tmp_path / "renamed.th")
    with pytest.raises(ValueError, match=r"missing keys \['linear\.weight'\].*'fc\.weight'"):
        resnet20(weights=tmp_path / "renamed.th")


def test_wrong_shape_is_rejected(data_dir: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(_checkpoint(data_dir, 20), map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["module.linear.bias"] = torch.zeros(100)
    torch.save(checkpoint, tmp_path / "cifar100.th")
    with pytest.raises(ValueError, match=r"linear\.bias: file \(100,\), model \(10,\)"):
        resnet20(weights=tmp_path / "cifar100.th")


def test_non_checkpoint_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.th").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        resnet20(weights=tmp_path / "notes.th")


def test_onnx_export_uses_static_simple_ops(
    data_dir: Path, onnx_roundtrip: Callable[..., onnx.ModelProto]
) -> None:
    model = resnet20(weights=_checkpoint(data_dir, 20))
    torch.manual_seed(0)
    batches = [(torch.randn(1, 3, 32, 32),), (torch.randn(5, 3, 32, 32),)]
    proto = onnx_roundtrip(model, (torch.randn(2, 3, 32, 32),), ["input"], batches)
    ops = Counter(node.op_type for node in proto.graph.node)
    assert set(ops) == {"Conv", "Relu", "Add", "Slice", "Pad", "AveragePool", "Reshape", "Gemm"}
    assert ops["Conv"] == 19 and ops["Pad"] == 2
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    pads = [constants[node.input[1]].tolist() for node in proto.graph.node if node.op_type == "Pad"]
    assert pads == [[0, 8, 0, 0, 0, 8, 0, 0], [0, 16, 0, 0, 0, 16, 0, 0]]


def test_accuracy_on_subset(data_dir: Path) -> None:
    images, labels = _cifar_subset(data_dir, PER_CLASS)
    model = resnet20(weights=_checkpoint(data_dir, 20))
    with torch.inference_mode():
        predictions = model(images).argmax(dim=1).numpy()
    correct = int((predictions == labels).sum())
    assert abs(correct - RESNET20_SUBSET_CORRECT) <= 2, correct
