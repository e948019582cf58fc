"""BERT-base and DistilBERT sequence classifiers with random weights, built offline.

The geometry is that of ``bert-base-uncased`` (12 layers, hidden 768, 12 heads, feed-forward
3072, vocabulary 30,522, 512 positions, 2 token types) and ``distilbert-base-uncased`` (6 such
layers, no token types), each with transformers' two-class sequence-classification head:
109,483,778 and 66,955,010 parameters. The configurations are written out here, so nothing is
read from a hub; the weights are transformers' own random initialisation (normal, standard
deviation 0.02), seeded. These models are for speed measurements only.

Each model is wrapped in an ``nn.Module`` whose forward takes int64 ``(input_ids,
attention_mask[, token_type_ids])`` of shape (batch, sequence) and returns the logits, so that
it exports to one ONNX graph with those inputs and one output. Two choices keep that graph
small; neither changes the numbers:

- Eager attention. The SDPA path adds ``IsNaN``/``Where`` guards for fully masked rows and
  extra ``Slice``/``Concat`` shape arithmetic to every layer.
- The wrapper turns the 0/1 mask into BERT's additive form, ``(1 - mask) * -10000`` with shape
  (batch, 1, 1, sequence), and hands that to the model, which adds it to the attention scores
  as it is. transformers' own mask builder exports as a ``Range``/``GatherND``/``And``/``Where``
  subgraph, and fills with the float32 minimum, which would wreck the range of any INT8
  ``Add`` calibrated on a masked input; -10000, the value of the original BERT code, already
  gives masked positions a softmax weight of exactly 0.
"""

from __future__ import annotations

import torch
from torch import nn

from slimgraph.zoo.resnet import seeded

__all__ = [
    "MASK_VALUE",
    "NUM_LABELS",
    "SEQUENCE_LENGTH",
    "BertClassifier",
    "DistilBertClassifier",
    "additive_attention_mask",
    "bert_base",
    "distilbert",
    "example_inputs",
]

VOCAB_SIZE = 30522
MAX_POSITIONS = 512
HIDDEN = 768
HEADS = 12
FEED_FORWARD = 3072
NUM_LABELS = 2
SEQUENCE_LENGTH = 128
MASK_VALUE = -10000.0
"""Added to the attention scores of masked key positions."""


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A (batch, sequence) 0/1 mask as (batch, 1, 1, sequence): 0 for 1, ``MASK_VALUE`` for 0."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_VALUE


class BertClassifier(nn.Module):
    """A ``BertForSequenceClassification`` called with token ids, mask and token types."""

    input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> torch.Tensor:
        mask = additive_attention_mask(attention_mask, self.model.dtype)
        output = self.model(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids)
        return output.logits


class DistilBertClassifier(nn.Module):
    """A ``DistilBertForSequenceClassification`` called with token ids and mask."""

    input_names = ("input_ids", "attention_mask")

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = additive_attention_mask(attention_mask, self.model.dtype)
        return self.model(input_ids=input_ids, attention_mask=mask).logits


def bert_base(seed: int = 0) -> BertClassifier:
    """BERT-base (uncased geometry) with a two-class head, randomly initialised from ``seed``."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=12,
        num_attention_heads=HEADS,
        intermediate_size=FEED_FORWARD,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=2,
        num_labels=NUM_LABELS,
    )
    with seeded(seed):
        model = BertForSequenceClassification._from_config(config, attn_implementation="eager")
    return BertClassifier(model).eval()


def distilbert(seed: int = 0) -> DistilBertClassifier:
    """DistilBERT (6 layers, hidden 768) with a two-class head, randomly initialised."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=VOCAB_SIZE,
        dim=HIDDEN,
        n_layers=6,
        n_heads=HEADS,
        hidden_dim=FEED_FORWARD,
        max_position_embeddings=MAX_POSITIONS,
        num_labels=NUM_LABELS,
    )
    with seeded(seed):
        model = DistilBertForSequenceClassification._from_config(
            config, attn_implementation="eager"
        )
    return DistilBertClassifier(model).eval()


def example_inputs(
    model: BertClassifier | DistilBertClassifier,
    batch_size: int = 1,
    sequence_length: int = SEQUENCE_LENGTH,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Inputs for ``model`` in the order of its ``input_names``, all int64.

    Token ids are uniform over the vocabulary (seeded), the attention mask is all ones and the
    token types, for BERT, all zeros.

    Raises:
        ValueError: ``sequence_length`` is outside 1 to 512 or ``batch_size`` below 1.
    """
    if not 1 <= sequence_length <= MAX_POSITIONS:
        raise ValueError(f"sequence_length must be 1 to {MAX_POSITIONS}, got {sequence_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    shape = (batch_size, sequence_length)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB_SIZE, shape, generator=generator, dtype=torch.int64)
    attention_mask = torch.ones(shape, dtype=torch.int64)
    if isinstance(model, BertClassifier):
        return input_ids, attention_mask, torch.zeros(shape, dtype=torch.int64)
    return input_ids, attention_mask
