"""The spec: what to compile, on what data, for what goal, declared once as data.

Every option is a typed field with a default and a one-line description (the reference in
``docs/spec.md`` is generated from these declarations). Unknown keys, wrong types and
missing files are :class:`SpecError` s that name the field, what was found, what is
allowed and the closest valid key. ``${VAR}`` in a path is taken from the environment, and
relative paths are read from the spec file's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    model_validator,
)

from slimgraph.data import SOURCE_CONFIGS, MetricConfig, SourceConfig
from slimgraph.data._common import describe_missing, resolve_path
from slimgraph.errors import SpecError, closest

__all__ = ["Spec", "load_spec", "parse_spec", "spec_hash"]


def _prefix_errors(prefix: str) -> WrapValidator:
    """Re-raise errors from a nested config with the field path in front."""

    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except SpecError as exc:
            raise SpecError(prefix_field(prefix, str(exc))) from exc

    return WrapValidator(validate)


def prefix_field(prefix: str, text: str) -> str:
    """``prefix.field: ...`` from a nested message that starts ``kind.field: ...``."""
    if text.startswith(prefix):
        return text
    head, sep, rest = text.partition(".")
    if sep and head in SOURCE_CONFIGS:
        text = rest
    return f"{prefix}.{text}" if not text.startswith(":") else f"{prefix}{text}"


def _existing_file(value: object, info: ValidationInfo) -> Path:
    label = f"model.{info.field_name}"
    if not isinstance(value, str | os.PathLike):
        raise SpecError(f"{label}: expected a path, found {value!r}")
    try:
        path = resolve_path(value, info)
    except SpecError as exc:
        raise SpecError(prefix_field("model", str(exc))) from exc
    if not path.exists():
        raise SpecError(describe_missing(path, label, value))
    if not path.is_file():
        raise SpecError(f"{label}: expected a file, found the folder {str(path)!r}")
    return path


ModelFile = Annotated[Path, BeforeValidator(_existing_file)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Section):
    """One model input, for exporting a framework model."""

    name: str = Field(description="Input name in the exported model.")
    shape: list[int] = Field(description="Example shape, batch first (the batch stays dynamic).")
    dtype: Literal["float32", "int64", "int32"] = Field("float32", description="Element type.")


class ModelSection(_Section):
    """The model to compile: an ONNX file, or a PyTorch factory."""

    name: str | None = Field(None, description="Name shown in the report (default: the file "
                             "or factory name).")
    path: ModelFile | None = Field(None, description="An ONNX model file.")
    factory: str | None = Field(None, description="'package.module:function' returning a "
                                "torch nn.Module.")
    weights: ModelFile | None = Field(None, description="Weights file passed to the factory "
                                      "as weights=...")
    options: dict[str, Any] = Field(default_factory=dict, description="More keyword "
                                    "arguments for the factory.")
    input_shape: list[int] | None = Field(None, description="Shorthand for one float32 input "
                                          "named 'input' with this example shape.")
    inputs: list[InputSpec] | None = Field(None, description="The factory model's inputs, when "
                                           "there are several or they are not float32.")
    output_names: list[str] | None = Field(None, description="Names for the exported outputs.")
    exporter: Literal["dynamo", "torchscript"] = Field("dynamo", description="torch's ONNX "
                                                       "exporter: torch.export-based or legacy.")
    opset: int = Field(18, ge=13, le=23, description="Opset of the exported ONNX model.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if (self.path is None) == (self.factory is None):
            raise SpecError("model: give exactly one of 'path' (ONNX) or 'factory' (PyTorch), "
                            f"found {'both' if self.path else 'neither'}")
        if self.factory is not None and not (self.input_shape or self.inputs):
            raise SpecError("model.input_shape: a factory model needs 'input_shape' or "
                            "'inputs' to be exported")
        if self.path is not None:
            for key in ("weights", "input_shape", "inputs", "output_names"):
                if getattr(self, key):
                    raise SpecError(f"model.{key}: only for a factory model, not for an ONNX "
                                    "file")
        return self

    def export_inputs(self) -> list[InputSpec]:
        if self.inputs:
            return list(self.inputs)
        return [InputSpec(name="input", shape=list(self.input_shape or []))]

    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.path is not None:
            return self.path.stem
        return (self.factory or "model").rpartition(":")[2]


class DataSection(_Section):
    """Where samples come from."""

    evaluation: Annotated[SourceConfig, _prefix_errors("data.evaluation")] = Field(
        description="Labelled (or unlabelled) data the accuracy is measured on.")
    calibration: Annotated[SourceConfig | None, _prefix_errors("data.calibration")] = Field(
        None, description="Data for calibration (default: a sample of the evaluation data).")
    batch_size: int = Field(32, ge=1, description="Batch size for evaluation runs.")


class CalibrationSection(_Section):
    """How activation ranges are measured."""

    method: Literal["minmax", "percentile", "entropy", "mse"] = Field(
        "minmax", description="How a tensor's range is chosen from its statistics: min-max, "
        "a percentile, least KL divergence (entropy) or least squared error (mse).")
    percentile: float = Field(99.999, gt=50, le=100, description="percentile method only: "
                              "the percentile of values kept inside the range.")
    samples: int = Field(300, ge=1, description="How many samples to calibrate on.")
    batch_size: int = Field(16, ge=1, description="Samples per calibration batch (memory "
                            "grows with this, not with the sample count).")


class SchemeSection(_Section):
    """One tensor class's quantization scheme; ``auto`` fields follow the target."""

    dtype: Literal["auto", "int8", "uint8"] = Field("auto", description="Integer type.")
    symmetric: bool | None = Field(None, description="Range centred on zero (default: by "
                                   "target).")
    per_channel: bool | None = Field(None, description="Weights only: one scale per output "
                                     "channel (default: by target).")
    reduce_range: bool | None = Field(None, description="Use 7 of the 8 bits (default: by "
                                      "target; needed on x86 without VNNI).")


class KeepFloatSection(_Section):
    """Ops never quantized, by type or by name."""

    op_types: list[str] = Field(default_factory=list, description="Op types never quantized.")
    nodes: list[str] = Field(default_factory=list, description="Node names never quantized.")


class OverrideSection(_Section):
    """Schemes for some ops, on top of the model-wide ones."""

    activations: SchemeSection | None = Field(None, description="Activation scheme for these "
                                              "ops.")
    weights: SchemeSection | None = Field(None, description="Weight scheme for these ops.")


class OverridesSection(_Section):
    """Per-op schemes: by op type, then by node name (the more specific wins)."""

    op_types: dict[str, OverrideSection] = Field(default_factory=dict, description="Op type "
                                                 "(Conv, MatMul...) to its schemes.")
    nodes: dict[str, OverrideSection] = Field(default_factory=dict, description="Node name to "
                                              "its schemes.")


class SmoothQuantSection(_Section):
    """SmoothQuant: move activation outliers into the weights of MatMul/Gemm layers."""

    enabled: bool = Field(False, description="Smooth the inputs of MatMul/Gemm layers with "
                          "constant weights before quantizing (transformers).")
    alpha: float | Literal["auto"] = Field("auto", description="Migration strength in [0, 1]; "
                                           "auto picks it from 0.3-0.8 by quantization error "
                                           "on calibration data.")

    @model_validator(mode="after")
    def _alpha_range(self) -> SmoothQuantSection:
        if isinstance(self.alpha, float) and not 0.0 <= self.alpha <= 1.0:
            raise SpecError(f"quantization.recipes.smooth_quant.alpha: expected 0 to 1 or "
                            f"'auto', found {self.alpha}")
        return self


class RecipesSection(_Section):
    """Accuracy recipes applied around quantization."""

    smooth_quant: SmoothQuantSection = Field(default_factory=SmoothQuantSection,
                                             description="SmoothQuant settings.")
    bias_correction: bool = Field(False, description="Subtract from each bias the shift that "
                                  "weight quantization causes, measured on calibration data "
                                  "(static approach).")


class QuantizationSection(_Section):
    """What to quantize and how; `auto` follows the target CPU."""

    approach: Literal["auto", "static", "dynamic", "weight_only"] = Field(
        "auto", description="static: activation ranges calibrated ahead of time; dynamic: "
        "measured at run time (transformers, LSTMs); weight_only: INT8 weights, float "
        "compute (size only); auto: dynamic for transformers, static otherwise.")
    format: Literal["auto", "qdq", "qoperator"] = Field(
        "auto", description="qdq: QuantizeLinear/DequantizeLinear around float ops; "
        "qoperator: integer operators (QLinearConv...); auto: by target.")
    target: str = Field("auto", description="CPU class to compile for: auto (this machine), "
                        "x86-vnni, x86-amx, x86-avx512, x86-avx2, arm64-dotprod, arm64.")
    activations: SchemeSection = Field(default_factory=SchemeSection,
                                       description="Activation scheme.")
    weights: SchemeSection = Field(default_factory=SchemeSection, description="Weight scheme.")
    calibration: CalibrationSection = Field(default_factory=CalibrationSection,
                                            description="Calibration settings.")
    keep_float: KeepFloatSection = Field(default_factory=KeepFloatSection,
                                         description="Ops to leave in FP32.")
    overrides: OverridesSection = Field(default_factory=OverridesSection,
                                        description="Schemes by op type and by node name.")
    recipes: RecipesSection = Field(default_factory=RecipesSection,
                                    description="SmoothQuant and bias correction.")


class CriterionSection(_Section):
    """The accuracy loss allowed against FP32: relative or absolute, not both."""

    relative: float | None = Field(None, ge=0, lt=1, description="Largest relative loss, "
                                   "e.g. 0.01 for 1 % (the default when neither is given).")
    absolute: float | None = Field(None, ge=0, description="Largest absolute loss in the "
                                   "metric's units, e.g. 0.005.")

    @model_validator(mode="after")
    def _one_kind(self) -> CriterionSection:
        if self.relative is not None and self.absolute is not None:
            raise SpecError("tuning.criterion: give 'relative' or 'absolute', not both")
        return self


class TuningSection(_Section):
    """Accuracy-driven tuning: the goal, the search and its budget."""

    criterion: CriterionSection = Field(default_factory=CriterionSection,
                                        description="Accuracy loss allowed against FP32 "
                                        "(default: 1 % relative).")
    higher_is_better: bool | None = Field(None, description="Whether a larger metric is "
                                          "better (default: the metric's own direction).")
    strategy: Literal["basic", "conservative", "mse", "exhaustive", "random", "bayesian"] = (
        Field("basic", description="Search order; see the README's Tuning section."))
    max_trials: int = Field(100, ge=1, description="Most candidates to build and score.")
    timeout_s: float = Field(0, ge=0, description="0: stop at the first candidate that meets "
                             "the goal; otherwise keep searching for the best objective for "
                             "this many seconds.")
    objective: Literal["performance", "size"] = Field("performance", description="What "
                                                      "'best' means among candidates that "
                                                      "meet the goal.")
    methods: list[Literal["minmax", "percentile", "entropy", "mse"]] = Field(
        ["minmax", "percentile", "entropy", "mse"], min_length=1,
        description="Range methods the strategies may try (the first trial uses "
        "quantization.calibration.method).")
    eval_samples: int | None = Field(None, ge=1, description="Score trials on this many "
                                     "evaluation samples (spread over the set) for speed; the "
                                     "final model is scored on all of them.")
    workspace: str | None = Field(None, description="Folder for the trial log, statistics "
                                  "and best model so far (default: <output>.workspace).")


class RuntimeSection(_Section):
    """How onnxruntime runs the models."""

    providers: list[str] = Field(["CPUExecutionProvider"], min_length=1,
                                 description="onnxruntime execution providers, in priority order.")
    threads: int = Field(1, ge=0, description="Intra-op threads (0: onnxruntime's default).")


class BenchmarkSection(_Section):
    """How throughput is measured."""

    enabled: bool = Field(True, description="Measure FP32 and INT8 throughput.")
    batch_size: int = Field(1, ge=1, description="Batch size of the throughput runs.")
    warmup: int = Field(20, ge=0, description="Untimed runs before timing.")
    iterations: int = Field(200, ge=1, description="Timed runs per repeat.")
    repeats: int = Field(5, ge=1, description="Repeats, FP32 and INT8 interleaved; the median "
                         "is reported.")


class Spec(_Section):
    """A compile spec."""

    name: str | None = Field(None, description="Name of this compile (default: the model's).")
    model: ModelSection = Field(description="The model to compile.")
    data: DataSection = Field(description="Evaluation and calibration data.")
    metric: Annotated[MetricConfig, _prefix_errors("metric")] = Field(
        description="How accuracy is scored.")
    quantization: QuantizationSection = Field(default_factory=QuantizationSection,
                                              description="What to quantize and how.")
    runtime: RuntimeSection = Field(default_factory=RuntimeSection,
                                    description="How models are run.")
    benchmark: BenchmarkSection = Field(default_factory=BenchmarkSection,
                                        description="How speed is measured.")
    tuning: TuningSection = Field(default_factory=TuningSection,
                                  description="Accuracy goal and the search for it.")
    seed: int = Field(0, description="Seed for sampling and anything random.")

    def display_name(self) -> str:
        return self.name or self.model.display_name()


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read and validate a YAML or JSON spec file."""
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"spec {file}: no such file")
    text = file.read_text()
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"spec {file}: not valid {'JSON' if file.suffix == '.json' else 'YAML'}"
                        f": {' '.join(str(exc).split())}") from exc
    try:
        return parse_spec(data, base_dir=file.parent)
    except SpecError as exc:
        raise SpecError(f"spec {file}: {exc}") from exc


def parse_spec(data: object, *, base_dir: str | os.PathLike[str] | None = None) -> Spec:
    """Validate an already-parsed spec (a mapping)."""
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping of sections at the top, found "
                        f"{type(data).__name__}")
    context = {"base_dir": Path(base_dir) if base_dir is not None else None}
    try:
        return Spec.model_validate(data, context=context)
    except ValidationError as exc:
        raise SpecError(_describe(exc, data)) from exc


def spec_hash(spec: Spec) -> str:
    """A short hash of the validated spec, for reproducibility records."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# -- error messages ------------------------------------------------------------------------

_TYPE_WORDS = {
    "int_parsing": "an integer", "int_type": "an integer", "float_parsing": "a number",
    "float_type": "a number", "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping",
}


def _describe(exc: ValidationError, data: object) -> str:
    # An unknown key explains the "missing" error that usually comes with it: show it first.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    line = _describe_one(first, data)
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return line


def _describe_one(error: Any, data: object) -> str:
    loc = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
    loc = [p for p in loc if p not in _UNION_TAGS]
    where = ".".join(loc) or "spec"
    kind = error["type"]
    found = error.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], data)
        hint = closest(loc[-1], allowed) if allowed else None
        return (f"{where}: unknown key; allowed: {', '.join(sorted(allowed))}"
                + (f" (did you mean {hint!r}?)" if hint else ""))
    if kind == "missing":
        return f"{where}: required, missing"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{where}: expected one of {expected}, found {found!r}"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        tag = error.get("ctx", {}).get("tag")
        near = closest(str(tag), [t.strip(" '") for t in str(expected).split(",")])
        return (f"{where}.kind: expected one of {expected}, found {tag!r}"
                + (f" (did you mean {near!r}?)" if near else ""))
    if kind == "union_tag_not_found":
        return f"{where}.kind: required, missing (it says which kind of source this is)"
    if kind in _TYPE_WORDS:
        return f"{where}: expected {_TYPE_WORDS[kind]}, found {found!r}"
    return f"{where}: {error['msg']}, found {found!r}"


_UNION_TAGS = frozenset({"arrays", "image_folder", "idx", "tsv", "custom"})


def _allowed_keys(loc: list[str], data: object) -> list[str]:
    """Field names of the section at ``loc`` (walking the declarations, not the data)."""
    model: Any = Spec
    node: Any = data
    for part in loc:
        node = node.get(part) if isinstance(node, dict) else None
        model = _field_model(model, part, node)
        if model is None:
            return []
    return list(model.model_fields)


def _field_model(model: Any, name: str, value: Any) -> Any:
    field = getattr(model, "model_fields", {}).get(name)
    if field is None:
        return None
    return _pick_model(field.annotation, value)


def _pick_model(annotation: Any, value: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _pick_model(args[0], value)
    candidates = [_pick_model(a, value) for a in args]
    candidates = [c for c in candidates if c is not None]
    kind = value.get("kind") if isinstance(value, dict) else None
    for candidate in candidates:
        kind_field = candidate.model_fields.get("kind")
        if kind is not None and kind_field is not None and kind in get_args(kind_field.annotation):
            return candidate
    return candidates[0] if candidates else None
