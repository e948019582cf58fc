"""ImageNet VGG-16 (Simonyan and Zisserman, 2015, configuration D, no batch norm), as torchvision.

Thirteen 3x3 convolutions with bias and ReLU in five blocks (64, 128, 256, 512, 512 channels),
each block closed by a 2x2 max pool, then a classifier of two 4096-wide linear layers with ReLU
and dropout and a 1000-way linear layer: 138,357,544 parameters, 102.8 M of them in the first
linear layer. Parameter names match torchvision's state dicts (``features.0``..``features.28``,
``classifier.0``/``.3``/``.6``), so its checkpoints load strictly.

torchvision pools adaptively to 7x7 before the classifier. At 224x224 input the feature map is
7x7 already and that pooling is an identity; here it is left out of the graph in that case
(decided when the graph is traced), so the export holds no ``AveragePool`` of window 1. Other
input sizes still pool to 7x7.

Without weights the model is random, for speed measurements only: torchvision's initialisation
(Kaiming normal convolutions, linear weights normal with standard deviation 0.01, zero biases),
seeded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimgraph.zoo.resnet import Weights, init_torchvision_style, load_weights, seeded

__all__ = ["CONFIG_D", "VGG", "vgg16"]

NUM_CLASSES = 1000
POOLED_SIZE = 7
HIDDEN = 4096

CONFIG_D: tuple[int | None, ...] = (
    *(64, 64, None),
    *(128, 128, None),
    *(256, 256, 256, None),
    *(512, 512, 512, None),
    *(512, 512, 512, None),
)
"""Output channels of each 3x3 convolution in order, None for a 2x2 max pool."""


class VGG(nn.Module):
    """A VGG network of the layers in ``config``, without batch norm."""

    def __init__(
        self, config: tuple[int | None, ...] = CONFIG_D, num_classes: int = NUM_CLASSES
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for channels in config:
            if channels is None:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU()]
                in_channels = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * POOLED_SIZE * POOLED_SIZE, HIDDEN),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(HIDDEN, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        if tuple(out.shape[-2:]) != (POOLED_SIZE, POOLED_SIZE):
            out = F.adaptive_avg_pool2d(out, POOLED_SIZE)
        return self.classifier(torch.flatten(out, 1))


def vgg16(weights: Weights | None = None, seed: int = 0) -> VGG:
    """VGG-16 (configuration D, 138.4 M parameters); random from ``seed`` without weights.

    ``weights`` is a torchvision ``vgg16`` state dict or a file holding one. Expected input:
    RGB 224x224, scaled to 0-1 and normalised with the ImageNet mean and standard deviation.
    """
    with seeded(seed):
        model = VGG(CONFIG_D)
        if weights is None:
            init_torchvision_style(model, linear_std=0.01)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()
