"""Synthetic samples for speed-only measurements of models without offline weights or data.

Accuracy means nothing on them; agreement with the FP32 model (cosine, MSE) still shows that
quantization did not break the model. Everything is seeded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["random_images", "random_tokens"]


def random_images(count: int = 64, shape: Sequence[int] = (3, 224, 224),
                  seed: int = 0) -> list[tuple[np.ndarray, None]]:
    """``count`` images shaped like normalised photographs: values around 0, spread ~1,
    smooth over neighbouring pixels (white noise is an unrealistic input for a CNN)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        coarse = rng.standard_normal((shape[0], max(1, shape[1] // 8), max(1, shape[2] // 8)))
        image = np.kron(coarse, np.ones((1, 8, 8)))[:, : shape[1], : shape[2]]
        image = image + 0.3 * rng.standard_normal(tuple(shape))
        samples.append((np.clip(image, -2.5, 2.5).astype(np.float32), None))
    return samples


def random_tokens(count: int = 64, length: int = 128, vocab: int = 30522, seed: int = 0,
                  names: Sequence[str] = ("input_ids", "attention_mask", "token_type_ids"),
                  ) -> list[tuple[dict[str, np.ndarray], None]]:
    """``count`` tokenised sentences padded to ``length``: [CLS] words [SEP] then padding,
    with real lengths spread over the sequence and a matching attention mask."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        used = int(rng.integers(length // 4, length + 1))
        ids = np.zeros(length, dtype=np.int64)
        ids[:used] = rng.integers(1000, vocab, size=used)
        ids[0], ids[used - 1] = 101, 102
        mask = (np.arange(length) < used).astype(np.int64)
        arrays = {"input_ids": ids, "attention_mask": mask,
                  "token_type_ids": np.zeros(length, dtype=np.int64)}
        samples.append(({name: arrays[name] for name in names}, None))
    return samples
