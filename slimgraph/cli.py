"""The ``slimgraph`` command: compile, validate and inspect.

Bad input (a spec, a model file, a data folder) ends with one line on stderr and exit status
2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from slimgraph import __version__, progress
from slimgraph.errors import SlimgraphError, UserError

__all__ = ["main"]

logger = logging.getLogger("slimgraph.cli")

EXIT_USER_ERROR = 2
EXIT_GOAL_MISSED = 3
_QUIET_LIBRARIES = ("onnxscript", "onnx_ir", "torch", "transformers", "urllib3", "PIL")
QUICKSTART = Path(__file__).resolve().parent.parent / "specs" / "quickstart.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.debug, args.quiet)
    progress.enable(args.progress if args.progress is not None else sys.stderr.isatty())
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"slimgraph: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("slimgraph: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``slimgraph inspect m.onnx | head``): not an error.
        sys.stderr.close()
        return 0
    except SlimgraphError as exc:
        if args.debug:
            raise
        print(f"slimgraph: internal error: {_one_line(str(exc))} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return 1


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimgraph", description=(
        "Compile a model into a faster INT8 model as a spec file describes, and report "
        "accuracy and speed against the original."))
    parser.add_argument("--version", action="version", version=f"slimgraph {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    common.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="draw progress bars (default: when stderr is a terminal)")
    common.add_argument("--no-progress", dest="progress", action="store_false")
    sub = parser.add_subparsers(dest="command", required=True)

    comp = sub.add_parser("compile", parents=[common], help="compile a spec")
    comp.add_argument("spec", nargs="?", type=Path, default=None,
                      help=f"spec file, YAML or JSON (default: {QUICKSTART.name})")
    comp.add_argument("-o", "--out", type=Path, default=None,
                      help="output folder (default: out/<name>)")
    comp.add_argument("--fresh", action="store_true",
                      help="ignore the tuning log of an earlier, interrupted run")
    comp.set_defaults(run=_compile)

    val = sub.add_parser("validate", parents=[common], help="check a spec without compiling")
    val.add_argument("spec", type=Path)
    val.set_defaults(run=_validate)

    ins = sub.add_parser("inspect", parents=[common], help="summarise an ONNX model")
    ins.add_argument("model", type=Path)
    ins.set_defaults(run=_inspect)
    return parser


def _configure_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if not debug:
        for name in _QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)


def _compile(args: argparse.Namespace) -> int:
    from slimgraph.compiler import compile_spec
    from slimgraph.spec import load_spec

    spec_path = args.spec or QUICKSTART
    if args.spec is None:
        if not QUICKSTART.is_file():
            raise UserError(f"no spec given and the quickstart spec {QUICKSTART} is missing "
                            "(install slimgraph from its source folder with pip install -e .)")
        logger.info("no spec given: compiling the quickstart, %s", QUICKSTART)
    spec = load_spec(spec_path)
    out = args.out or Path("out") / _safe_name(spec.display_name())
    result = compile_spec(spec, out, fresh=args.fresh)
    print(result.report.row())
    print(f"wrote {result.out_dir}/model.int8.onnx, report.md, report.json")
    if not result.met_goal:
        print(f"slimgraph: no candidate met the accuracy goal "
              f"({result.report.tuning.get('goal')}); wrote the most accurate one",
              file=sys.stderr)
        return EXIT_GOAL_MISSED
    return 0


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def _validate(args: argparse.Namespace) -> int:
    from slimgraph._callables import resolve_callable
    from slimgraph.spec import load_spec

    spec = load_spec(args.spec)
    if spec.model.factory:
        resolve_callable(spec.model.factory, field="model.factory")
    evaluation = spec.data.evaluation.open()
    calibration = spec.data.calibration.open() if spec.data.calibration else None
    model = spec.model.path or spec.model.factory
    print(f"{args.spec}: valid. model {model}; evaluation {len(evaluation)} samples; "
          f"calibration {len(calibration) if calibration else 'from evaluation'}; "
          f"metric {spec.metric.name}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from slimgraph import ir as sir

    model = sir.load(args.model)
    histogram = sir.op_histogram(model)
    params = sum(v.const_value.size for g in (model.graph, *model.graph.subgraphs())
                 for v in g.initializers.values() if v.const_value is not None)
    integer, heavy = _integer_share(model)
    print(f"{args.model}: {sum(histogram.values())} nodes, {params:,} parameters, "
          f"{sir.io.model_bytes(model) / 1e6:.2f} MB of weights, opsets "
          f"{dict(model.opset_imports)}")
    print(f"quantized: {integer} of {heavy} Conv/Gemm/MatMul nodes run on integers "
          f"({histogram.get('QuantizeLinear', 0)} QuantizeLinear, "
          f"{histogram.get('DequantizeLinear', 0)} DequantizeLinear)")
    for op, count in sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {op:32s} {count}")
    return 0


_HEAVY = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_INTEGER_HEAVY = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger",
                            "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"})


def _integer_share(model) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Heavy nodes (convolutions and matrix products), and how many run on integers: integer
    ops, or float ops whose activation input is dequantized (onnxruntime fuses those)."""
    import onnx_ir as ir

    integer = heavy = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in _INTEGER_HEAVY:
            heavy += 1
            integer += 1
        elif node.op_type in _HEAVY:
            heavy += 1
            first = node.inputs[0] if node.inputs else None
            producer = first.producer() if first is not None else None
            integer += producer is not None and producer.op_type == "DequantizeLinear"
    return integer, heavy


if __name__ == "__main__":
    sys.exit(main())
