"""``slimgraph compile``: spec in; INT8 model, report and reference model out.

The pipeline reads as one function, one named step per line. Outputs are written into a
staging folder beside the destination and moved into place only when every file is
complete; the input model is never written to.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx_ir as ir

from slimgraph import ir as sir
from slimgraph._callables import resolve_callable
from slimgraph.backends.onnx_qdq import lower_qdq
from slimgraph.backends.onnx_qoperator import lower_qoperator
from slimgraph.backends.onnxruntime import OrtExecutor, OrtOptions
from slimgraph.benchmark import measure_throughput
from slimgraph.build import CandidateBuilder, feeds_for, model_identity
from slimgraph.data import DataSource
from slimgraph.data.sampling import sample
from slimgraph.errors import DataError, ModelError, SpecError
from slimgraph.evaluate import Evaluation, evaluate
from slimgraph.frontends.onnx import lift_onnx
from slimgraph.ir.graphs import all_graphs
from slimgraph.ir.pass_manager import PassRecord
from slimgraph.ir.quant import QuantDType, QuantScheme
from slimgraph.judge import Judge
from slimgraph.passes.cleanup import cleanup_passes
from slimgraph.passes.quantize.config import OpOverride, QuantConfig
from slimgraph.passes.quantize.insert import REDUCED_WEIGHTS_KEY
from slimgraph.passes.quantize.plan import NODE_PLAN_KEY, NodePlan
from slimgraph.report import (
    CompileReport,
    FloatOp,
    ModelScore,
    dump_json,
    environment,
    write_text_atomic,
)
from slimgraph.spec import OverrideSection, SchemeSection, Spec, prefix_field, spec_hash
from slimgraph.target import Target, TargetChoice, choose, detect, named
from slimgraph.tuning.space import Candidate, build_space
from slimgraph.tuning.tuner import Goal, TrialOutcome, Tuner, TuningResult, Workspace

__all__ = ["CompileResult", "compile_spec"]

logger = logging.getLogger(__name__)

INT8_MODEL = "model.int8.onnx"
FP32_MODEL = "model.fp32.onnx"


@dataclass(frozen=True)
class CompileResult:
    out_dir: Path
    report: CompileReport
    met_goal: bool


class _Stages:
    """Times each stage and logs one line per stage with its figures."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        logger.info("stage %s: done in %.1f s", name, self.seconds[name])


def compile_spec(spec: Spec, out_dir: str | Path, *, fresh: bool = False) -> CompileResult:
    """Compile ``spec`` into ``out_dir`` (replaced atomically when the compile succeeds).

    Tuning keeps its log and best model so far in a workspace beside ``out_dir``; a run that
    was interrupted resumes from it unless ``fresh``.
    """
    out = Path(out_dir).resolve()
    _check_output_is_safe(spec, out)
    stages = _Stages()
    executor = OrtExecutor(OrtOptions(tuple(spec.runtime.providers), spec.runtime.threads))
    target = detect() if spec.quantization.target == "auto" else named(spec.quantization.target)
    choice = choose(target)
    config = _quant_config(spec, choice)
    with stages.stage("open data"):
        evaluation_data, calibration_data = _open_data(spec)

    with stages.stage("lift"):
        model = _lift(spec, executor)
    with stages.stage("clean-up"):
        cpu_only = list(spec.runtime.providers) == ["CPUExecutionProvider"]
        cleanup_records = sir.PassManager(cleanup_passes(cpu_only=cpu_only)).run(model)

    spec = _fit_batch_sizes(spec, model)
    approach, approach_reason = _approach(spec, model)
    if approach == "weight_only":
        config = replace(config, weight_only=True)
    workspace = _workspace(spec, out, model)
    builder = _builder(spec, model, config, approach, executor, calibration_data, workspace)
    with stages.stage("score FP32"):
        judge = _judge(spec, executor, model, evaluation_data)
    with stages.stage("tune"):
        tuning = _tune(spec, builder, judge, workspace, fresh)

    with stages.stage("build best"):
        best = builder.build(tuning.best.candidate)
        planned, _ = builder.plan(tuning.best.candidate, best.unseen)
        float_ops, counts = _float_ops(planned, best.model)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=_ensure_parent(out)))
    try:
        with stages.stage("write"):
            sir.save(best.model, staging / INT8_MODEL)
            sir.save(model, staging / FP32_MODEL)
        sessions = {"fp32": executor.session(staging / FP32_MODEL),
                    "int8": executor.session(staging / INT8_MODEL)}
        with stages.stage("evaluate"):
            evaluation = _final_evaluation(spec, judge, tuning, sessions, evaluation_data)
        with stages.stage("benchmark"):
            speed = _benchmark(spec, sessions, evaluation_data)
        report = _report(spec, target, choice, config, evaluation, speed, staging,
                         cleanup_records + best.records, float_ops, counts, stages.seconds,
                         tuning, judge)
        report.quantization.update(approach=approach, approach_reason=approach_reason,
                                   recipes=dict(builder.recipes))
        write_text_atomic(staging / "report.json", dump_json(report.to_json()))
        write_text_atomic(staging / "report.md", report.to_markdown())
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("compiled %s: %s", spec.display_name(), report.row())
    for text in report.warnings():
        logger.warning("%s: %s", spec.display_name(), text)
    return CompileResult(out, report, tuning.met_goal)


# -- steps ---------------------------------------------------------------------------------


def _quant_config(spec: Spec, choice: TargetChoice) -> QuantConfig:
    q = spec.quantization
    activation = _apply_scheme(choice.activation, q.activations, "quantization.activations")
    weight = _apply_scheme(choice.weight, q.weights, "quantization.weights")
    fmt = choice.format if q.format == "auto" else q.format
    # An explicit reduce_range in the spec is honoured as written, everywhere.
    guard = choice.saturation_guard and q.weights.reduce_range is None

    def override(section: OverrideSection, where: str) -> OpOverride:
        return OpOverride(
            activation=_apply_scheme(activation, section.activations, f"{where}.activations")
            if section.activations else None,
            weight=_apply_scheme(weight, section.weights, f"{where}.weights")
            if section.weights else None)

    by_op = {op: override(o, f"quantization.overrides.op_types.{op}")
             for op, o in q.overrides.op_types.items()}
    by_node = {name: override(o, f"quantization.overrides.nodes.{name}")
               for name, o in q.overrides.nodes.items()}
    return QuantConfig(activation, weight, fmt, by_op_type=by_op, by_node=by_node,
                       saturation_guard=guard).with_float(
        op_types=frozenset(q.keep_float.op_types), nodes=frozenset(q.keep_float.nodes))


def _apply_scheme(default: QuantScheme, section: SchemeSection, field: str) -> QuantScheme:
    scheme = default
    if section.dtype != "auto":
        scheme = replace(scheme, dtype=QuantDType(section.dtype))
    if section.symmetric is not None:
        scheme = replace(scheme, symmetric=section.symmetric)
    if section.reduce_range is not None:
        scheme = replace(scheme, reduce_range=section.reduce_range)
    if section.per_channel is not None:
        if field.endswith("activations") and section.per_channel:
            raise SpecError(f"{field}.per_channel: activations are quantized per tensor "
                            "(per-channel activation scales block integer kernels)")
        scheme = replace(scheme, per_channel=section.per_channel)
    return scheme


def _lift(spec: Spec, executor: OrtExecutor) -> ir.Model:
    section = spec.model
    if section.path is not None:
        model = lift_onnx(section.path)
        logger.info("lifted %s: %d nodes", section.path.name, model.graph.num_nodes())
        return model
    from slimgraph.frontends.pytorch import InputSpec, lift_torch

    factory = resolve_callable(section.factory or "", field="model.factory")
    kwargs = dict(section.options)
    if section.weights is not None:
        kwargs["weights"] = section.weights
    try:
        module = factory(**kwargs)
    except (TypeError, ValueError, OSError, RuntimeError, KeyError) as exc:
        raise ModelError(f"model.factory: {section.factory} raised {type(exc).__name__}: "
                         f"{exc}") from exc
    inputs = [InputSpec(i.name, tuple(i.shape), i.dtype) for i in section.export_inputs()]

    def run(model: ir.Model, arrays: list[np.ndarray]) -> list[np.ndarray]:
        session = executor.session(model)
        return session.run(session.bind(arrays))

    model = lift_torch(module, inputs, output_names=section.output_names,
                       exporter=section.exporter, opset=section.opset, seed=spec.seed,
                       run_onnx=run)
    logger.info("lifted %s: %d nodes", section.factory, model.graph.num_nodes())
    return model


def _open_data(spec: Spec) -> tuple[DataSource, DataSource]:
    """The evaluation source and the calibration sample, checked before any slow work."""
    sources = {}
    for field in ("evaluation", "calibration"):
        config = getattr(spec.data, field)
        if config is None:
            continue
        try:
            source = config.open()
        except (DataError, SpecError) as exc:
            raise type(exc)(prefix_field(f"data.{field}", str(exc))) from exc
        if len(source) == 0:
            raise DataError(f"data.{field}: no samples")
        sources[field] = source
    calibration = sources.get("calibration", sources["evaluation"])
    sample_count = spec.quantization.calibration.samples
    return sources["evaluation"], sample(calibration, sample_count, spec.seed)


def _fit_batch_sizes(spec: Spec, model: ir.Model) -> Spec:
    """A model whose inputs have a fixed batch size (many older ONNX models: batch 1) is
    fed batches of exactly that size."""
    fixed = {v.shape[0] for v in model.graph.inputs
             if v.shape is not None and len(v.shape) > 0 and isinstance(v.shape[0], int)}
    if len(fixed) != 1:
        return spec
    (size,) = fixed
    updates = {}
    if spec.data.batch_size != size:
        updates["data"] = spec.data.model_copy(update={"batch_size": size})
    cal = spec.quantization.calibration
    if cal.batch_size != size:
        updates["quantization"] = spec.quantization.model_copy(
            update={"calibration": cal.model_copy(update={"batch_size": size})})
    if spec.benchmark.batch_size != size:
        updates["benchmark"] = spec.benchmark.model_copy(update={"batch_size": size})
    if updates:
        logger.info("the model's inputs have a fixed batch of %d: evaluating, calibrating and "
                    "timing with batches of %d", size, size)
    return spec.model_copy(update=updates) if updates else spec


def _approach(spec: Spec, model: ir.Model) -> tuple[str, str]:
    """The approach the spec asks for, or for ``auto`` the one that suits the model."""
    asked = spec.quantization.approach
    if asked != "auto":
        return asked, "asked for in the spec"
    if _is_transformer(model):
        return "dynamic", ("attention found (Softmax between activation MatMuls): dynamic "
                           "ranges cannot clip the attention mask and run fastest here")
    return "static", "no attention found: static ranges calibrated ahead of time"


def _is_transformer(model: ir.Model) -> bool:
    ops = [n for n in model.graph]
    has_softmax = any(n.op_type == "Softmax" for n in ops)
    activation_matmul = any(
        n.op_type == "MatMul" and all(v is not None and v.const_value is None for v in n.inputs)
        for n in ops)
    return has_softmax and activation_matmul


def _builder(spec: Spec, model: ir.Model, config: QuantConfig, approach: str,
             executor: OrtExecutor, calibration: DataSource,
             workspace: Workspace) -> CandidateBuilder:
    recipes = spec.quantization.recipes
    return CandidateBuilder(
        model, config, executor, calibration,
        batch_size=spec.quantization.calibration.batch_size,
        cache_dir=workspace.path,
        cache_key=workspace.identity,
        method_options=_method_options(spec),
        lower=lower_qoperator if config.format == "qoperator" else lower_qdq,
        dynamic=approach == "dynamic",
        smooth_alpha=recipes.smooth_quant.alpha if recipes.smooth_quant.enabled else None,
        bias_correction=recipes.bias_correction,
    )


def _method_options(spec: Spec) -> dict[str, dict[str, float]]:
    return {"percentile": {"percentile": spec.quantization.calibration.percentile}}


def _workspace(spec: Spec, out: Path, model: ir.Model) -> Workspace:
    folder = spec.tuning.workspace
    path = Path(folder).expanduser().resolve() if folder else out.with_name(f"{out.name}.workspace")
    identity = f"{spec_hash(spec)}-{model_identity(model)}"
    return Workspace(path, identity)


def _judge(spec: Spec, executor: OrtExecutor, fp32: ir.Model, source: DataSource) -> Judge:
    tuning_source = source
    if spec.tuning.eval_samples is not None:
        tuning_source = sample(source, spec.tuning.eval_samples, spec.seed)
    batch = next(iter(source.batches(spec.benchmark.batch_size)))
    feeds = feeds_for(batch.inputs, [v.name for v in fp32.graph.inputs])
    return Judge(tuning_source, spec.metric, batch_size=spec.data.batch_size, executor=executor,
                 fp32=fp32, bench_feeds=feeds)


def _tune(spec: Spec, builder: CandidateBuilder, judge: Judge, workspace: Workspace,
          fresh: bool) -> TuningResult:
    t = spec.tuning
    higher = judge.higher_is_better if t.higher_is_better is None else t.higher_is_better
    relative = t.criterion.relative
    if relative is None and t.criterion.absolute is None:
        relative = 0.01
    goal = Goal(relative, t.criterion.absolute, higher)
    start_method = spec.quantization.calibration.method
    planned, _ = builder.plan(Candidate(method=start_method))
    quantized = [n for n in planned.graph if _is_planned_quantized(n)]
    methods = tuple(dict.fromkeys([start_method, *t.methods]))
    if builder.dynamic or builder.config.weight_only:
        methods = (start_method,)  # no calibrated ranges to choose between
    space = build_space(planned, quantized, methods, seed=spec.seed)

    def run_trial(candidate: Candidate, measure_objective: bool) -> TrialOutcome:
        built = builder.build(candidate)
        ops = sir.op_histogram(built.model)
        if not any(ops.get(op) for op in ("DequantizeLinear", "DynamicQuantizeLinear",
                                          "QLinearConv", "QLinearMatMul")):
            raise ValueError("this candidate quantizes nothing")
        score = judge.score(built.model)
        objective = None
        if measure_objective and judge_meets(goal, score, judge.fp32_score):
            objective = (judge.speedup(built.model) if t.objective == "performance"
                         else judge.size(built.model))
        return TrialOutcome(built.model, score, objective)

    tuner = Tuner(strategy_name=t.strategy, space=space,
                  start=Candidate(method=start_method, label="all quantizable ops in INT8"),
                  goal=goal, fp32_score=judge.fp32_score, run_trial=run_trial,
                  op_errors=builder.op_errors, workspace=workspace, max_trials=t.max_trials,
                  speedup=lambda c: judge.speedup(builder.build(c).model),
                  timeout_s=t.timeout_s, objective=t.objective)
    return tuner.run(fresh=fresh)


def judge_meets(goal: Goal, score: float, fp32: float) -> bool:
    return goal.met(score, fp32)


def _is_planned_quantized(node: ir.Node) -> bool:
    plan = node.meta.get(NODE_PLAN_KEY)
    return isinstance(plan, NodePlan) and plan.quantized


def _final_evaluation(spec: Spec, judge: Judge, tuning: TuningResult,  # type: ignore[no-untyped-def]
                      sessions: dict[str, object], source: DataSource):
    """Scores of FP32 and the chosen model on all evaluation data (reused from tuning when
    the trials were scored on all of it)."""
    if spec.tuning.eval_samples is None and tuning.best.score is not None:
        fp32 = judge.fp32_evaluation
        return Evaluation(fp32.metric, fp32.higher_is_better,
                          {"fp32": fp32.scores["fp32"], "int8": tuning.best.score},
                          fp32.samples, fp32.seconds)
    return evaluate(source, sessions, spec.metric.build, batch_size=spec.data.batch_size,
                    reference="fp32")


def _benchmark(spec: Spec, sessions: dict[str, object],  # type: ignore[no-untyped-def]
               source: DataSource):
    bench = spec.benchmark
    if not bench.enabled:
        return None
    batch = next(iter(source.batches(bench.batch_size)))
    feeds = sessions["fp32"].bind(batch.inputs)  # type: ignore[attr-defined]
    return measure_throughput(sessions, feeds, warmup=bench.warmup,
                              iterations=bench.iterations, repeats=bench.repeats)


def _float_ops(planned: ir.Model, built: ir.Model) -> tuple[list[FloatOp], dict[str, int]]:
    """Nodes of the plan left in FP32, grouped by op type and reason, and counts of what was
    quantized. Ops that no integer kernel exists for are one group per op type."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    quantized = compute = 0
    for graph in all_graphs(planned):
        for node in graph:
            plan = node.meta.get(NODE_PLAN_KEY)
            if not isinstance(plan, NodePlan) or plan.absorbed_into is not None:
                continue
            compute += 1
            if plan.quantized:
                quantized += 1
            else:
                groups[(node.op_type, plan.reason)].append(node.name or "<unnamed>")
    reduced = sum(bool(n.meta.get(REDUCED_WEIGHTS_KEY)) for g in all_graphs(built) for n in g)
    ops = [FloatOp(op, reason, len(names), names) for (op, reason), names in groups.items()]
    ops.sort(key=lambda f: (f.reason.startswith("no "), -f.count, f.op_type))
    return ops, {"quantized_nodes": quantized, "compute_nodes": compute,
                 "seven_bit_weight_nodes": reduced}


def _report(spec, target: Target, choice: TargetChoice, config: QuantConfig, evaluation,  # type: ignore[no-untyped-def]
            speed, staging: Path, records: list[PassRecord], float_ops: list[FloatOp],
            counts: dict[str, int], stages: dict[str, float], tuning: TuningResult,
            judge: Judge) -> CompileReport:
    def score(name: str, path: Path) -> ModelScore:
        t = speed[name] if speed else None
        return ModelScore(
            accuracy=evaluation.scores[name],
            throughput=t.samples_per_second if t else None,
            latency_p50_ms=t.latency_p50_ms if t else None,
            latency_p90_ms=t.latency_p90_ms if t else None,
            size_bytes=path.stat().st_size,
        )

    cal = spec.quantization.calibration
    cal_from = "data.calibration" if spec.data.calibration is not None else "data.evaluation"
    bench = spec.benchmark
    return CompileReport(
        model=spec.display_name(),
        metric=evaluation.metric,
        higher_is_better=evaluation.higher_is_better,
        fp32=score("fp32", staging / FP32_MODEL),
        int8=score("int8", staging / INT8_MODEL),
        evaluated_samples=evaluation.samples,
        quantization={
            "target": target.describe(),
            "reason": choice.reason,
            "activation": config.activation.describe(),
            "weight": config.weight.describe(),
            "format": config.format,
            "calibration": f"{tuning.best.candidate.method} over {cal.samples} samples "
                           f"drawn with seed {spec.seed} from {cal_from}",
        },
        tuning=_tuning_summary(spec, tuning, judge),
        ops={**counts, "fp32_histogram": dict(sir.op_histogram(sir.load(staging / FP32_MODEL))),
             "int8_histogram": dict(sir.op_histogram(sir.load(staging / INT8_MODEL)))},
        float_ops=float_ops,
        passes=[{"name": r.name, "change": r.describe(), "seconds": r.seconds} for r in records],
        stages=stages,
        environment=environment(
            cpu=target.model if target.detected else detect().model,
            int8_class=target.int8_class.value,
            cpu_flags=sorted(detect().flags),
            threads=spec.runtime.threads,
            providers=list(spec.runtime.providers),
            seed=spec.seed,
            spec_hash=spec_hash(spec),
        ),
        benchmark={"batch_size": bench.batch_size, "warmup": bench.warmup,
                   "iterations": bench.iterations, "repeats": bench.repeats,
                   "threads": spec.runtime.threads} if speed else {},
    )


def _tuning_summary(spec: Spec, tuning: TuningResult, judge: Judge) -> dict[str, object]:
    t = spec.tuning
    fp32 = judge.fp32_score

    def ratio(score: float | None) -> float | None:
        return None if score is None or fp32 == 0 else (score - fp32) / abs(fp32)

    return {
        "strategy": t.strategy,
        "goal": (f"absolute loss <= {t.criterion.absolute:g}" if t.criterion.absolute
                 is not None else f"relative loss <= {(t.criterion.relative or 0.01) * 100:g}%"),
        "objective": t.objective,
        "met_goal": tuning.met_goal,
        "stopped_because": tuning.stopped_because,
        "best_trial": tuning.best.index,
        "scored_on": (f"{t.eval_samples} sampled evaluation samples" if t.eval_samples
                      else "all evaluation samples"),
        "trials": [{"index": tr.index, "change": tr.candidate.label, "score": tr.score,
                    "accuracy_ratio": ratio(tr.score), "meets_goal": tr.meets_goal,
                    "objective": tr.objective, "seconds": tr.seconds, "error": tr.error,
                    "resumed": tr.resumed} for tr in tuning.trials],
    }


# -- output safety ---------------------------------------------------------------------------


def _check_output_is_safe(spec: Spec, out: Path) -> None:
    inputs = [p for p in (spec.model.path, spec.model.weights) if p is not None]
    for path in inputs:
        resolved = path.resolve()
        if resolved == out or out in resolved.parents:
            raise SpecError(f"output folder {out} holds the input {resolved}; compiling would "
                            "replace it. Choose another output folder")
    if out.exists() and not out.is_dir():
        raise SpecError(f"output {out}: expected a folder, found a file")


def _ensure_parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder to ``out``, replacing an earlier result."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        out.rename(old / out.name)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
