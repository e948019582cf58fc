"""Spec loading: valid specs load, and every kind of mistake names the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from slimgraph.errors import SpecError
from slimgraph.spec import load_spec, parse_spec, spec_hash


@pytest.fixture()
def mnist_spec(data_dir: Path) -> dict:
    return {
        "model": {"path": str(data_dir / "models" / "mnist-8.onnx")},
        "data": {"evaluation": {
            "kind": "idx",
            "images": "${SLIMGRAPH_DATA}/mnist/t10k-images-idx3-ubyte.gz",
            "labels": "${SLIMGRAPH_DATA}/mnist/t10k-labels-idx1-ubyte.gz",
        }},
        "metric": {"name": "accuracy"},
    }


def _error(data: dict, tmp_path: Path, suffix: str = ".yaml") -> str:
    path = tmp_path / f"spec{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message  # the file is named
    return message


def test_valid_spec_loads_with_defaults(mnist_spec: dict, tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(mnist_spec))
    spec = load_spec(path)
    assert spec.quantization.calibration.method == "minmax"
    assert spec.benchmark.batch_size == 1 and spec.runtime.threads == 1
    assert spec.display_name() == "mnist-8"
    assert len(spec_hash(spec)) == 16


def test_environment_variable_is_expanded(mnist_spec: dict, data_dir: Path) -> None:
    spec = parse_spec(mnist_spec)
    assert spec.data.evaluation.images == data_dir / "mnist" / "t10k-images-idx3-ubyte.gz"


def test_unknown_key_names_the_closest(mnist_spec: dict, tmp_path: Path) -> None:
    mnist_spec["quantization"] = {"calibraton": {"samples": 10}}
    message = _error(mnist_spec, tmp_path)
    assert "quantization.calibraton: unknown key" in message
    assert "did you mean 'calibration'" in message


def test_unknown_key_inside_a_source(mnist_spec: dict, tmp_path: Path) -> None:
    mnist_spec["data"]["evaluation"]["imagez"] = "x"
    message = _error(mnist_spec, tmp_path)
    assert "data.evaluation.imagez: unknown key" in message and "'images'" in message


def test_wrong_type_says_what_was_found(mnist_spec: dict, tmp_path: Path) -> None:
    mnist_spec["benchmark"] = {"iterations": "many"}
    message = _error(mnist_spec, tmp_path, ".json")
    assert "benchmark.iterations: expected an integer, found 'many'" in message


def test_wrong_choice_lists_the_allowed(mnist_spec: dict, tmp_path: Path) -> None:
    mnist_spec["quantization"] = {"activations": {"dtype": "int4"}}
    message = _error(mnist_spec, tmp_path)
    assert "quantization.activations.dtype" in message and "'uint8'" in message


def test_missing_model_file_lists_the_folder(mnist_spec: dict, tmp_path: Path,
                                             data_dir: Path) -> None:
    mnist_spec["model"]["path"] = str(data_dir / "models" / "mnist-9.onnx")
    message = _error(mnist_spec, tmp_path)
    assert "model.path" in message and "does not exist" in message
    assert "did you mean 'mnist-8.onnx'" in message


def test_unset_variable_is_named(mnist_spec: dict, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SLIMGRAPH_DATA", raising=False)
    message = _error(mnist_spec, tmp_path)
    assert "data.evaluation.images" in message and "'SLIMGRAPH_DATA' is not set" in message


def test_unknown_source_kind(mnist_spec: dict, tmp_path: Path) -> None:
    mnist_spec["data"]["evaluation"]["kind"] = "idxx"
    message = _error(mnist_spec, tmp_path)
    assert "data.evaluation.kind" in message and "did you mean 'idx'" in message


def test_model_needs_exactly_one_source(mnist_spec: dict, tmp_path: Path) -> None:
    mnist_spec["model"]["factory"] = "slimgraph.zoo.digits:digits_cnn"
    assert "exactly one of 'path'" in _error(mnist_spec, tmp_path)


def test_relative_paths_are_read_from_the_spec_folder(mnist_spec: dict, tmp_path: Path,
                                                      data_dir: Path) -> None:
    (tmp_path / "m.onnx").write_bytes((data_dir / "models" / "mnist-8.onnx").read_bytes())
    mnist_spec["model"]["path"] = "m.onnx"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(mnist_spec))
    assert load_spec(path).model.path == tmp_path / "m.onnx"


def test_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: [1\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(path)


def test_activations_cannot_be_per_channel(mnist_spec: dict) -> None:
    from slimgraph.compiler import _quant_config
    from slimgraph.target import choose, named

    mnist_spec["quantization"] = {"activations": {"per_channel": True}}
    spec = parse_spec(mnist_spec)
    with pytest.raises(SpecError, match="per tensor"):
        _quant_config(spec, choose(named("x86-vnni")))


def test_shipped_specs_are_valid() -> None:
    for path in sorted(Path(__file__).resolve().parent.parent.glob("specs/*.yaml")):
        assert load_spec(path).model is not None, path
