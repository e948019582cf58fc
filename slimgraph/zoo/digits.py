"""The quickstart model: a small CNN for scikit-learn's 8x8 handwritten digits.

The data ships inside scikit-learn (1,797 images, no download). A seeded shuffle splits it once
into 1,400 training and 397 test images. Without a weights file, :func:`digits_cnn` trains the
network on the training split in a few seconds, on one CPU thread with deterministic kernels and
fixed seeds, so two runs give bit-identical weights on the same machine and library versions.
Nothing is cached on disk: callers that want to keep the weights save ``model.state_dict()``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimgraph.zoo import load_state_dict_strict

__all__ = [
    "DigitsCNN",
    "digits_cnn",
    "digits_dataset",
    "digits_samples",
    "save_digits_test",
    "train_digits_cnn",
]

logger = logging.getLogger(__name__)

SPLIT_SEED = 0
TRAIN_SIZE = 1400
NUM_CLASSES = 10
PIXEL_MAX = 16.0


class DigitsCNN(nn.Module):
    """Two 3x3 conv + ReLU layers, a 2x2 max pool and a linear layer: (N, 1, 8, 8) -> (N, 10)."""

    def __init__(self, channels: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.fc = nn.Linear(channels[1] * 4 * 4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.max_pool2d(F.relu(self.conv2(out)), 2)
        return self.fc(torch.flatten(out, 1))


def digits_dataset(split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """One split of the digits: images (N, 1, 8, 8) float32 in [0, 1] and int64 labels (N,).

    The train split holds 1,400 images and the test split the other 397, after a shuffle with a
    fixed seed; both are the same on every call.

    Raises:
        ValueError: ``split`` is neither "train" nor "test".
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', found {split!r}")
    bunch = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(bunch.target))
    chosen = order[:TRAIN_SIZE] if split == "train" else order[TRAIN_SIZE:]
    images = (bunch.images[chosen] / PIXEL_MAX).astype(np.float32)[:, None, :, :]
    return images, bunch.target[chosen].astype(np.int64)


def digits_samples(split: Literal["train", "test"] = "test") -> list[tuple[np.ndarray, int]]:
    """One split as ``(image, label)`` pairs: a custom data loader for specs."""
    images, labels = digits_dataset(split)
    return [(image, int(label)) for image, label in zip(images, labels, strict=True)]


def save_digits_test(directory: str | Path) -> tuple[Path, Path]:
    """Write the test split as ``digits_test_x.npy`` and ``digits_test_y.npy`` in ``directory``.

    The folder is created if needed. Returns the paths of the images and of the labels.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = digits_dataset("test")
    images_path, labels_path = folder / "digits_test_x.npy", folder / "digits_test_y.npy"
    np.save(images_path, images)
    np.save(labels_path, labels)
    logger.info("wrote %d digits test images to %s", len(labels), folder)
    return images_path, labels_path


@contextlib.contextmanager
def _reproducible(seed: int) -> Iterator[None]:
    """Run the body on one thread, with deterministic kernels and seeded torch RNGs.

    The global thread count, determinism flag and RNG state are restored afterwards, so that
    training leaves the caller's settings as they were.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def train_digits_cnn(
    epochs: int = 20, batch_size: int = 128, learning_rate: float = 1e-2, seed: int = 0
) -> DigitsCNN:
    """Train a :class:`DigitsCNN` on the train split with Adam; return it in eval mode."""
    images, labels = digits_dataset("train")
    inputs, targets = torch.from_numpy(images), torch.from_numpy(labels)
    start = time.perf_counter()
    with _reproducible(seed):
        model = DigitsCNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(targets))
            for first in range(0, len(targets), batch_size):
                batch = order[first : first + batch_size]
                optimizer.zero_grad()
                loss = F.cross_entropy(model(inputs[batch]), targets[batch])
                loss.backward()
                optimizer.step()
    logger.info(
        "trained digits CNN: %d epochs in %.1f s, final batch loss %.4f",
        epochs,
        time.perf_counter() - start,
        loss.item(),
    )
    return model.eval()


def digits_cnn(weights: str | Path | None = None) -> DigitsCNN:
    """The quickstart digits CNN: loaded from a saved state dict, or trained afresh (seconds).

    Raises:
        ValueError: the weights file is not a state dict of :class:`DigitsCNN`.
    """
    if weights is None:
        return train_digits_cnn()
    model = DigitsCNN()
    try:
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read {str(weights)!r} as a torch state dict: {exc}") from exc
    if not isinstance(state_dict, dict):
        raise ValueError(f"{str(weights)!r} holds a {type(state_dict).__name__}, not a state dict")
    load_state_dict_strict(model, state_dict, weights)
    return model.eval()
