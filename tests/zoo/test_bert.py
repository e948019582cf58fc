"""BERT-base and DistilBERT: geometry, the additive mask, example inputs and ONNX export."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from slimgraph.zoo import bert
from slimgraph.zoo.bert import BertClassifier, DistilBertClassifier

Classifier = BertClassifier | DistilBertClassifier
Exported = tuple[Path, ort.InferenceSession, Counter[str]]

# name: (parameters, exported op histogram). Eager attention and the wrapper's additive mask
# leave no shape arithmetic in the graph: Unsqueeze/Cast/Sub/Mul build the mask once.
MODELS: dict[str, tuple[int, dict[str, int]]] = {
    "bert_base": (
        109_483_778,
        {
            **{"Add": 122, "MatMul": 96, "Reshape": 48, "Transpose": 48, "Mul": 37},
            **{"LayerNormalization": 25, "Softmax": 12, "Div": 12, "Erf": 12, "Gather": 4},
            **{"Gemm": 2, "Unsqueeze": 1, "Cast": 1, "Sub": 1, "Tanh": 1},
        },
    ),
    "distilbert": (
        66_955_010,
        {
            **{"Add": 61, "MatMul": 48, "Reshape": 24, "Transpose": 24, "Mul": 19},
            **{"LayerNormalization": 13, "Softmax": 6, "Div": 6, "Erf": 6, "Gather": 3},
            **{"Gemm": 2, "Unsqueeze": 1, "Cast": 1, "Sub": 1, "Relu": 1},
        },
    ),
}


@functools.cache
def _model(name: str) -> Classifier:
    return bert.bert_base() if name == "bert_base" else bert.distilbert()


@pytest.fixture(scope="module", params=sorted(MODELS))
def named_model(request: pytest.FixtureRequest) -> tuple[str, Classifier]:
    return request.param, _model(request.param)


@pytest.fixture(scope="module")
def exported(
    named_model: tuple[str, Classifier], tmp_path_factory: pytest.TempPathFactory
) -> Exported:
    """The model exported once with a dynamic batch axis: file, session and op histogram."""
    name, model = named_model
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    example = bert.example_inputs(model, batch_size=2, seed=1)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        model,
        example,
        path,
        input_names=list(model.input_names),
        output_names=["logits"],
        dynamo=True,
        dynamic_shapes=tuple({0: batch} for _ in example),
        opset_version=18,
        # Weights in a side file: saving, checking and loading then skip a protobuf copy.
        external_data=True,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert program is not None
    return path, session, Counter(node.op_type for node in program.model.graph)


def _logits(model: Classifier, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.inference_mode():
        return model(*inputs)


def test_structure(named_model: tuple[str, Classifier]) -> None:
    name, model = named_model
    config = model.model.config
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == MODELS[name][0]
    assert config._attn_implementation == "eager"
    assert (config.vocab_size, config.num_labels) == (30522, 2)
    if name == "bert_base":
        assert config.num_hidden_layers == 12 and config.num_attention_heads == 12
        assert (config.hidden_size, config.intermediate_size) == (768, 3072)
    else:
        geometry = (config.n_layers, config.dim, config.n_heads, config.hidden_dim)
        assert geometry == (6, 768, 12, 3072)


def test_example_inputs(named_model: tuple[str, Classifier]) -> None:
    _, model = named_model
    inputs = bert.example_inputs(model)
    assert len(inputs) == len(model.input_names)
    assert all(t.shape == (1, 128) and t.dtype == torch.int64 for t in inputs)
    assert int(inputs[0].min()) >= 0 and int(inputs[0].max()) < 30522
    assert bool((inputs[1] == 1).all())
    assert torch.equal(bert.example_inputs(model, seed=0)[0], inputs[0])
    with pytest.raises(ValueError, match="sequence_length must be 1 to 512, got 513"):
        bert.example_inputs(model, sequence_length=513)


def test_additive_mask_matches_transformers_mask(named_model: tuple[str, Classifier]) -> None:
    _, model = named_model
    input_ids, mask, *rest = bert.example_inputs(model, batch_size=2, sequence_length=8)
    mask[1, 5:] = 0
    additive = bert.additive_attention_mask(mask, torch.float32)
    assert additive.shape == (2, 1, 1, 8)
    assert additive[1, 0, 0].tolist() == [0.0] * 5 + [bert.MASK_VALUE] * 3
    extra = {"token_type_ids": rest[0]} if rest else {}
    with torch.inference_mode():
        reference = model.model(input_ids=input_ids, attention_mask=mask, **extra).logits
    # Near miss: other tokens under the mask must leave the logits as they were.
    input_ids[1, 5:] = 7
    got = _logits(model, (input_ids, mask, *rest))
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)


def test_seeded_initialisation() -> None:
    state = torch.random.get_rng_state()
    again = bert.distilbert(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's generator moved"
    original = _model("distilbert")
    for key, value in original.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    weight = original.model.distilbert.transformer.layer[0].attention.q_lin.weight
    assert 0.019 < float(weight.detach().std()) < 0.021


def test_onnx_graph(named_model: tuple[str, Classifier], exported: Exported) -> None:
    name, model = named_model
    path, session, ops = exported
    onnx.checker.check_model(str(path), full_check=True)
    assert [value.name for value in session.get_inputs()] == list(model.input_names)
    assert all(value.shape == ["batch", 128] for value in session.get_inputs())
    assert [value.name for value in session.get_outputs()] == ["logits"]
    assert ops == MODELS[name][1]


@pytest.mark.parametrize("batch", [2, 1])
def test_onnx_matches_torch(
    named_model: tuple[str, Classifier], exported: Exported, batch: int
) -> None:
    _, model = named_model
    _, session, _ = exported
    inputs = bert.example_inputs(model, batch_size=batch, seed=10 + batch)
    if batch == 2:
        inputs[1][1, 100:] = 0
    feed = {name: t.numpy() for name, t in zip(model.input_names, inputs, strict=True)}
    (got,) = session.run(None, feed)
    expected = _logits(model, inputs).numpy()
    assert got.shape == expected.shape == (batch, 2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * float(np.abs(expected).max()))
