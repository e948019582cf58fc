"""onnxruntime as an executor: sessions with the threads and providers the spec asks for."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from slimgraph.errors import DataError, ModelError, TargetError
from slimgraph.ir import io

__all__ = ["OrtExecutor", "OrtOptions", "OrtSession", "available_providers"]

logger = logging.getLogger(__name__)

Optimization = Literal["disabled", "basic", "extended", "all"]

_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

# Protobuf refuses messages over 2 GiB; bigger models go to onnxruntime through a file.
_IN_MEMORY_LIMIT = (1 << 31) - (1 << 24)


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


@dataclass(frozen=True)
class OrtOptions:
    """How sessions run: execution providers in priority order, threads, graph optimization."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 1
    inter_op_threads: int = 1
    optimization: Optimization = "all"


class OrtSession:
    """One loaded model; binds inputs by name and casts them to the declared types."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._inputs = session.get_inputs()
        self._outputs = session.get_outputs()

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._outputs]

    def bind(
        self, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Feeds for one run from positional arrays or arrays keyed by input name.

        Keyed inputs the model does not take are ignored (a tokenizer gives more than some
        models use); a missing input is a :class:`DataError`.
        """
        if isinstance(inputs, Mapping):
            missing = [i.name for i in self._inputs if i.name not in inputs]
            if missing:
                raise DataError(f"data gives inputs {sorted(inputs)}, the model also needs "
                                f"{missing}")
            arrays = [inputs[i.name] for i in self._inputs]
        else:
            if len(inputs) != len(self._inputs):
                raise DataError(f"data gives {len(inputs)} input array(s), the model takes "
                                f"{len(self._inputs)}: {self.input_names}")
            arrays = list(inputs)
        feeds: dict[str, np.ndarray] = {}
        for spec, array in zip(self._inputs, arrays, strict=True):
            dtype = _NUMPY_TYPES.get(spec.type)
            feeds[spec.name] = np.ascontiguousarray(array, dtype=dtype)
        return feeds

    def run(self, feeds: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        return self._session.run(list(outputs) if outputs else None, dict(feeds))


class OrtExecutor:
    """Creates onnxruntime sessions with fixed options. Unknown providers fail at once."""

    def __init__(self, options: OrtOptions | None = None) -> None:
        self.options = options or OrtOptions()
        installed = available_providers()
        unknown = [p for p in self.options.providers if p not in installed]
        if unknown:
            raise TargetError(
                f"runtime.providers: {unknown} not installed; this onnxruntime has {installed}"
            )
        if self.options.threads < 0:
            raise TargetError(f"runtime.threads: expected 0 (all cores) or more, found "
                              f"{self.options.threads}")

    def session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.threads
        so.inter_op_num_threads = self.options.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = _LEVELS[self.options.optimization]
        so.log_severity_level = 3
        return so

    def session(self, model: ir.Model | str | os.PathLike[str]) -> OrtSession:
        """Load an IR model (or an ONNX file) into a new session."""
        so = self.session_options()
        providers = list(self.options.providers)
        try:
            if not isinstance(model, ir.Model):
                return OrtSession(ort.InferenceSession(str(model), so, providers=providers))
            if io.model_bytes(model) < _IN_MEMORY_LIMIT:
                payload = io.to_proto(model).SerializeToString()
                return OrtSession(ort.InferenceSession(payload, so, providers=providers))
            with tempfile.TemporaryDirectory(prefix="slimgraph-") as tmp:
                path = io.save(model, Path(tmp) / "model.onnx", external_data=True)
                return OrtSession(ort.InferenceSession(str(path), so, providers=providers))
        except (ort.capi.onnxruntime_pybind11_state.Fail,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                ort.capi.onnxruntime_pybind11_state.NotImplemented,
                ort.capi.onnxruntime_pybind11_state.InvalidArgument) as exc:
            raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc
