"""Small models for end-to-end tests, importable by specs as ``tiny_models:<factory>``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TinyEncoder(nn.Module):
    """Embeddings (batch, 16, 32) -> one transformer encoder layer -> mean -> 4 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d_model=32, nhead=2, dim_feedforward=64,
                                                dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x).mean(dim=1))


def encoder(seed: int = 0) -> TinyEncoder:
    torch.manual_seed(seed)
    return TinyEncoder().eval()


def embeddings(count: int = 32, seed: int = 0) -> list[tuple[np.ndarray, None]]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((16, 32)).astype(np.float32), None) for _ in range(count)]
