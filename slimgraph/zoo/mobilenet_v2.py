"""ImageNet MobileNetV2 (Sandler et al., 2018) at width 1.0, layer for layer as in torchvision.

A 3x3 stride-2 stem of 32 channels, 17 inverted residual blocks (1x1 expand with ReLU6, 3x3
depthwise with ReLU6, 1x1 linear projection, identity shortcut where the shape allows), a 1x1
conv to 1280 channels, global average pooling and dropout plus a 1000-way linear layer: 3,504,872
parameters. Parameter names match torchvision's state dicts (``features.0.0``, ``features.0.1``,
``features.N.conv.0.0``..., ``features.18.0``, ``classifier.1``), so its checkpoints load
strictly.

Without weights the model is random, for speed measurements only: torchvision's initialisation
(linear weights normal with standard deviation 0.01), then
:func:`~slimgraph.zoo.resnet.randomize_batch_norm`, both seeded.
"""

from __future__ import annotations

import torch
from torch import nn

from slimgraph.zoo.resnet import (
    Weights,
    global_average_pool,
    init_torchvision_style,
    load_weights,
    randomize_batch_norm,
    seeded,
)

__all__ = ["BLOCKS", "ConvBNReLU6", "InvertedResidual", "MobileNetV2", "mobilenet_v2"]

NUM_CLASSES = 1000
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
DROPOUT = 0.2

BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
"""Stages as (expansion, output channels, blocks, stride of the first block), at width 1.0."""


class ConvBNReLU6(nn.Sequential):
    """Convolution without bias, batch norm and ReLU6, numbered 0, 1, 2 as in torchvision."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """1x1 expand (left out at expansion 1), 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, 1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 at width 1.0 with a ``num_classes``-way classifier."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(3, STEM_CHANNELS, 3, stride=2)]
        in_channels = STEM_CHANNELS
        for expansion, out_channels, blocks, stride in BLOCKS:
            for index in range(blocks):
                block_stride = stride if index == 0 else 1
                layers.append(InvertedResidual(in_channels, out_channels, block_stride, expansion))
                in_channels = out_channels
        layers.append(ConvBNReLU6(in_channels, HEAD_CHANNELS, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(HEAD_CHANNELS, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Whole-map average pooling exports as AveragePool; see global_average_pool.
        out = global_average_pool(self.features(x))
        return self.classifier(torch.flatten(out, 1))


def mobilenet_v2(weights: Weights | None = None, seed: int = 0) -> MobileNetV2:
    """MobileNetV2 (3.5 M parameters); random from ``seed`` without weights.

    ``weights`` is a torchvision ``mobilenet_v2`` state dict or a file holding one. Expected
    input: RGB 224x224, scaled to 0-1 and normalised with the ImageNet mean and standard
    deviation.
    """
    with seeded(seed):
        model = MobileNetV2()
        if weights is None:
            init_torchvision_style(model, linear_std=0.01)
            randomize_batch_norm(model)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()
