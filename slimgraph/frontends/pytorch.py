"""The PyTorch frontend: an ``nn.Module`` in, the IR out, through torch's ONNX exporter.

The default exporter (``torch.export``-based, ``dynamo=True``) hands back an onnx-ir model
directly, with the batch axis dynamic. The older TorchScript exporter is available for
modules that ``torch.export`` cannot trace. Either way the lifted model is checked against
the module itself on the example input before it is returned.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from slimgraph.errors import ModelError

__all__ = ["InputSpec", "lift_torch"]

logger = logging.getLogger(__name__)

Exporter = Literal["dynamo", "torchscript"]

# Exported outputs must match the module's within this much, absolute, scaled by the size of
# the outputs (so that logits in the hundreds are held to the same relative standard).
MATCH_TOLERANCE = 1e-4


@dataclass(frozen=True)
class InputSpec:
    """One model input for export: name, example shape (batch first) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def example(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            return rng.integers(0, 2, size=self.shape).astype(self.dtype)
        return rng.standard_normal(self.shape).astype(self.dtype)


def lift_torch(
    module: Any,
    inputs: Sequence[InputSpec],
    *,
    output_names: Sequence[str] | None = None,
    exporter: Exporter = "dynamo",
    opset: int = 18,
    example: Sequence[np.ndarray] | None = None,
    seed: int = 0,
    run_onnx: Callable[[ir.Model, Sequence[np.ndarray]], list[np.ndarray]] | None = None,
) -> ir.Model:
    """Export ``module`` (an ``nn.Module``) with a dynamic batch axis and lift it.

    ``example`` arrays (one per input) replace the random example inputs when given.
    ``run_onnx``, when given, runs the lifted model so that its outputs can be compared
    with the module's; a mismatch beyond :data:`MATCH_TOLERANCE` is an error.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"model factory returned {type(module).__name__}, expected nn.Module")
    module.eval()
    arrays = list(example) if example is not None else [s.example(seed) for s in inputs]
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
    names = [s.name for s in inputs]
    outputs = list(output_names) if output_names else None
    try:
        if exporter == "dynamo":
            model = _export_dynamo(module, tensors, names, outputs, opset)
        else:
            model = _export_torchscript(module, tensors, names, outputs, opset)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"torch's ONNX exporter ({exporter}) failed on {type(module).__name__}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    model.graph.name = model.graph.name or type(module).__name__
    if run_onnx is not None:
        _check_match(module, tensors, model, arrays, run_onnx)
    return model


def _export_dynamo(module: Any, tensors: tuple[Any, ...], names: list[str],
                   outputs: list[str] | None, opset: int) -> ir.Model:
    import torch

    batch = torch.export.Dim("batch")
    sig_names = list(_forward_parameter_names(module, len(tensors)))
    dynamic_shapes = {name: {0: batch} for name in sig_names}
    with _quiet():
        program = torch.onnx.export(
            module,
            tensors,
            dynamo=True,
            input_names=names,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            verbose=False,
            optimize=True,
        )
    return program.model


def _export_torchscript(module: Any, tensors: tuple[Any, ...], names: list[str],
                        outputs: list[str] | None, opset: int) -> ir.Model:
    import torch

    out_names = outputs or ["output"]
    axes = {name: {0: "batch"} for name in [*names, *out_names]}
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(
            module, tensors, buffer, dynamo=False, input_names=names, output_names=out_names,
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
        )
    import onnx

    return ir.serde.deserialize_model(onnx.load_from_string(buffer.getvalue()))


def _forward_parameter_names(module: Any, count: int) -> list[str]:
    import inspect

    params = [
        p.name for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) < count:
        raise ModelError(
            f"{type(module).__name__}.forward takes {len(params)} positional inputs, the spec "
            f"gives {count}"
        )
    return params[:count]


@contextlib.contextmanager
def _quiet():  # type: ignore[no-untyped-def]
    """Silence the exporter's progress prints and deprecation chatter; errors still raise."""
    sink = io.StringIO()
    with (warnings.catch_warnings(), contextlib.redirect_stdout(sink),
          contextlib.redirect_stderr(sink)):
        warnings.simplefilter("ignore")
        exporter_logger = logging.getLogger("torch.onnx")
        level = exporter_logger.level
        exporter_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            exporter_logger.setLevel(level)


def _check_match(module: Any, tensors: tuple[Any, ...], model: ir.Model,
                 arrays: list[np.ndarray],
                 run_onnx: Callable[[ir.Model, Sequence[np.ndarray]], list[np.ndarray]]) -> None:
    import torch

    with torch.no_grad():
        expected = module(*tensors)
    expected_list = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    got = run_onnx(model, arrays)
    for index, (want, have) in enumerate(zip(expected_list, got, strict=False)):
        want_np = want.detach().numpy()
        scale = max(1.0, float(np.abs(want_np).max()))
        err = float(np.abs(want_np - have).max()) / scale
        if err > MATCH_TOLERANCE:
            raise ModelError(
                f"exported model's output {index} differs from the module's by {err:.2e} "
                f"(relative to its largest value), more than {MATCH_TOLERANCE:g}"
            )
    logger.info("lifted %s: outputs match the module within %g", type(module).__name__,
                MATCH_TOLERANCE)
