"""The CIFAR-10 ResNets of He et al. (2016, section 4.2), with option-A shortcuts.

Three stages of 16, 32 and 64 channels at 32x32, 16x16 and 8x8, each of ``n`` basic blocks
(two 3x3 conv + batch norm), then global average pooling and a 10-way linear layer; depth is
``6n + 2``. Parameter names match the checkpoints in ``models/cifar10_resnet/`` of the shared
data folder (``conv1``, ``bn1``, ``layer1.0.conv1``..., ``linear``), once their ``module.``
prefix is stripped.

Top-1 on the 10,000 JPEG test images of the shared data (torch 2.13 CPU): ResNet-20 81.03 %,
ResNet-32 82.56 %, ResNet-44 82.67 %, ResNet-56 83.20 %.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slimgraph.zoo import load_state_dict_strict

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PadChannelsShortcut",
    "load_cifar_resnet_weights",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
]

logger = logging.getLogger(__name__)

NUM_CLASSES = 10
STAGE_WIDTHS = (16, 32, 64)


class PadChannelsShortcut(nn.Module):
    """Option-A shortcut: keep every second row and column, then zero-pad the channels.

    The extra channels are split evenly before and after the existing ones, as in the
    checkpoints' original code. It is written as a strided slice and a constant ``F.pad`` on
    the channel axis, which export to one ONNX ``Slice`` (constant starts, ends and steps) and
    one ``Pad`` (constant pads, value 0). Both keep every shape static apart from the batch
    axis, and onnxruntime's INT8 quantizer treats them as data movement that shares the input's
    scale; zero is exactly representable, so the padded channels stay exact. The alternative,
    ``Concat`` with a zeros tensor, needs that tensor's batch size at run time
    (``Shape``/``ConstantOfShape`` in the graph) and is therefore avoided.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        extra = out_channels - in_channels
        if extra < 0 or extra % 2:
            raise ValueError(
                f"option-A shortcut pads channels evenly on both sides: cannot go from "
                f"{in_channels} to {out_channels} channels"
            )
        self.pad = extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        subsampled = x[:, :, ::2, ::2]
        return F.pad(subsampled, (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch norm layers with a shortcut around them."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            if stride != 2:
                raise ValueError(f"option-A shortcut subsamples by 2, not by {stride}")
            self.shortcut = PadChannelsShortcut(in_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet with ``blocks_per_stage`` basic blocks in each of its three stages."""

    def __init__(self, blocks_per_stage: int, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.layer1 = self._stage(STAGE_WIDTHS[0], STAGE_WIDTHS[0], blocks_per_stage, 1)
        self.layer2 = self._stage(STAGE_WIDTHS[0], STAGE_WIDTHS[1], blocks_per_stage, 2)
        self.layer3 = self._stage(STAGE_WIDTHS[1], STAGE_WIDTHS[2], blocks_per_stage, 2)
        self.linear = nn.Linear(STAGE_WIDTHS[2], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, channels, stride)]
        layers += [BasicBlock(channels, channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # A pooling window of the whole feature map, fixed when the graph is traced, exports as
        # ``AveragePool`` (8x8 for 32x32 inputs), which onnxruntime quantizes; the exporter
        # lowers ``AdaptiveAvgPool2d(1)`` to ``ReduceMean``, which it does not.
        out = F.avg_pool2d(out, kernel_size=(int(out.shape[-2]), int(out.shape[-1])))
        return self.linear(torch.flatten(out, 1))


def load_cifar_resnet_weights(model: CifarResNet, path: str | Path) -> None:
    """Load a checkpoint into ``model`` strictly.

    Accepts the published format (a dict whose ``state_dict`` keys carry a ``module.`` prefix
    left by ``nn.DataParallel``) as well as a plain state dict saved from this class.

    Raises:
        ValueError: the file is not a checkpoint, or its keys or shapes do not match.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read {str(path)!r} as a torch checkpoint: {exc}") from exc
    state_dict = (
        checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    )
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"{str(path)!r} holds a {type(checkpoint).__name__}, expected a state dict or a "
            f"dict with a 'state_dict' entry"
        )
    stripped = {key.removeprefix("module."): value for key, value in state_dict.items()}
    load_state_dict_strict(model, stripped, path)


def _build(depth: int, weights: str | Path | None) -> CifarResNet:
    model = CifarResNet(blocks_per_stage=(depth - 2) // 6)
    if weights is not None:
        load_cifar_resnet_weights(model, weights)
        logger.info("loaded ResNet-%d weights from %s", depth, weights)
    return model.eval()


def resnet20(weights: str | Path | None = None) -> CifarResNet:
    """ResNet-20 (3 blocks per stage, 0.27 M parameters), randomly initialised without weights."""
    return _build(20, weights)


def resnet32(weights: str | Path | None = None) -> CifarResNet:
    """ResNet-32 (5 blocks per stage, 0.46 M parameters), randomly initialised without weights."""
    return _build(32, weights)


def resnet44(weights: str | Path | None = None) -> CifarResNet:
    """ResNet-44 (7 blocks per stage, 0.66 M parameters), randomly initialised without weights."""
    return _build(44, weights)


def resnet56(weights: str | Path | None = None) -> CifarResNet:
    """ResNet-56 (9 blocks per stage, 0.85 M parameters), randomly initialised without weights."""
    return _build(56, weights)
