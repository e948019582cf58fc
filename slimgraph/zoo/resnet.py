"""ImageNet ResNet-18 and ResNet-50 (He et al., 2016), layer for layer as in torchvision.

A 7x7 stride-2 stem with batch norm, ReLU and a 3x3 stride-2 max pool, four stages of 64, 128,
256 and 512 channels (times 4 for the bottleneck), global average pooling and a 1000-way linear
layer. The bottleneck puts its stride on the 3x3 convolution ("ResNet v1.5"), as torchvision
does. Parameter names match torchvision's state dicts (``conv1``, ``bn1``,
``layer1.0.conv1``..., ``layer2.0.downsample.0``/``.1``, ``fc``), so its checkpoints load
strictly; parameter counts are torchvision's: 11,689,512 and 25,557,032.

Without weights the model is random, for speed measurements only. The initialisation is
torchvision's (:func:`init_torchvision_style`), followed by :func:`randomize_batch_norm`, which
draws every batch norm's affine parameters a little away from the identity and sets its running
statistics to those it measures on a batch of noise images. Activations then keep the magnitudes
of a trained network, and folding batch norm into the convolutions changes the weights, as it
does for a trained model. Both steps are seeded and leave the caller's random state alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slimgraph.zoo import load_state_dict_strict

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "Weights",
    "global_average_pool",
    "init_torchvision_style",
    "load_weights",
    "randomize_batch_norm",
    "resnet18",
    "resnet50",
    "seeded",
]

logger = logging.getLogger(__name__)

NUM_CLASSES = 1000
STAGE_WIDTHS = (64, 128, 256, 512)

Weights = str | Path | Mapping[str, torch.Tensor]
"""A state dict, or the path of a file that holds one."""


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch norm layers, with a 1x1 projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = _projection(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, each with batch norm, and a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = _projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The 1x1 conv + batch norm shortcut, or None where the identity fits."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class ResNet(nn.Module):
    """An ImageNet ResNet of ``block`` units, ``blocks_per_stage[i]`` of them in stage ``i``."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks_per_stage: tuple[int, int, int, int],
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = STAGE_WIDTHS[0]
        stages = []
        for index, (width, blocks) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage, strict=True)):
            units = []
            for position in range(blocks):
                stride = 2 if index > 0 and position == 0 else 1
                units.append(block(in_channels, width, stride))
                in_channels = width * block.expansion
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(global_average_pool(out), 1))


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial axes of an NCHW tensor, keeping them as 1 x 1.

    The window is the whole feature map, read when the graph is traced, so the exporter emits
    one ``AveragePool`` (7x7 at 224x224 input), which onnxruntime quantizes. With torch 2.13's
    exporter both ``nn.AdaptiveAvgPool2d(1)`` and ``x.mean((2, 3))`` become ``ReduceMean``,
    which it does not. The height and width are therefore fixed in an exported graph.
    """
    return F.avg_pool2d(x, kernel_size=(int(x.shape[-2]), int(x.shape[-1])))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with torch's CPU generator seeded, restoring the caller's state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def init_torchvision_style(model: nn.Module, linear_std: float | None = None) -> None:
    """Initialise ``model`` in place the way torchvision's classification models do.

    Convolutions: Kaiming normal over fan-out with the ReLU gain, zero bias. Batch norm: weight
    1, bias 0, running mean 0 and variance 1. Linear layers: normal with ``linear_std`` and zero
    bias (MobileNetV2, VGG), or torch's default uniform init left as built when it is None
    (ResNet). Draws from torch's global generator; wrap the call in :func:`seeded`.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)


@torch.no_grad()
def randomize_batch_norm(model: nn.Module, image_size: int = 224, spread: float = 0.1) -> None:
    """Give every batch norm of ``model`` random affine parameters and measured statistics.

    Per channel the weight is ``1 + spread * N(0, 1)`` and the bias ``spread * N(0, 1)``. The
    running mean and variance are then measured in one training-mode pass over a batch of two
    ``image_size`` images of N(0, 1) noise (the scale of normalised images), so each batch norm
    sees its real input statistics: its output has about zero mean and unit variance per
    channel, as in a trained network, instead of growing from block to block as it does with
    torchvision's identity statistics (ResNet-50's logits reach the hundreds). The statistics
    differ per channel and are not 0 and 1, so folding batch norm into the convolutions changes
    the weights. Draws from torch's global generator; wrap the call in :func:`seeded`.
    """
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    momenta = [module.momentum for module in norms]
    for module in norms:
        module.weight.copy_(1.0 + spread * torch.randn(module.num_features))
        module.bias.copy_(spread * torch.randn(module.num_features))
        module.reset_running_stats()
        # A momentum of None makes the running statistics the plain average over the pass.
        module.momentum = None
    was_training = model.training
    model.train()
    model(torch.randn(2, 3, image_size, image_size))
    model.train(was_training)
    for module, momentum in zip(norms, momenta, strict=True):
        module.momentum = momentum


def load_weights(model: nn.Module, weights: Weights) -> None:
    """Load a state dict, or a file holding one, into ``model`` with every key matching.

    Raises:
        ValueError: the file is not a state dict, or its keys or shapes do not match.
    """
    if isinstance(weights, Mapping):
        load_state_dict_strict(model, weights, "<state dict>")
        return
    try:
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read {str(weights)!r} as a torch state dict: {exc}") from exc
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"{str(weights)!r} holds a {type(state_dict).__name__}, not a state dict; save the "
            f"model's state_dict() instead"
        )
    load_state_dict_strict(model, state_dict, weights)
    logger.info("loaded %s weights from %s", type(model).__name__, weights)


def _build(
    block: type[BasicBlock | Bottleneck],
    blocks_per_stage: tuple[int, int, int, int],
    weights: Weights | None,
    seed: int,
) -> ResNet:
    with seeded(seed):
        model = ResNet(block, blocks_per_stage)
        if weights is None:
            init_torchvision_style(model)
            randomize_batch_norm(model)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def resnet18(weights: Weights | None = None, seed: int = 0) -> ResNet:
    """ResNet-18 (basic blocks 2-2-2-2, 11.7 M parameters); random from ``seed`` without weights.

    ``weights`` is a torchvision ``resnet18`` state dict or a file holding one. Expected input:
    RGB 224x224, scaled to 0-1 and normalised with the ImageNet mean and standard deviation.
    """
    return _build(BasicBlock, (2, 2, 2, 2), weights, seed)


def resnet50(weights: Weights | None = None, seed: int = 0) -> ResNet:
    """ResNet-50 (bottlenecks 3-4-6-3, 25.6 M parameters); random from ``seed`` without weights.

    ``weights`` is a torchvision ``resnet50`` state dict or a file holding one. Expected input
    as for :func:`resnet18`.
    """
    return _build(Bottleneck, (3, 4, 6, 3), weights, seed)
