"""SmoothQuant: move activation outliers into the weights before quantizing a matrix product.

Transformer activations carry a few channels tens of times larger than the rest; a per-tensor
scale sized for them leaves the other channels a handful of integer levels. For a product
``X·W`` with a constant weight, ``X·W = (X·diag(s)⁻¹)·(diag(s)·W)``: input channel ``j`` is
divided by ``s_j`` on the activation side and its weight row multiplied by ``s_j``, where
per-channel weight quantization takes it in its stride. Xiao et al. (2023) choose
``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``; alpha moves the difficulty between the two.

The division costs nothing when the activation comes out of a LayerNormalization: ``1/s``
folds into its gamma and beta. Elsewhere one Mul is inserted in front of the products.

Used in this order, on the FP32 model before planning quantization::

    values = smoothable_values(model)
    alpha, _ = choose_alpha(model, executor, batches, act_scheme=..., weight_scheme=...)
    absmax = channel_absmax(model, values, executor, batches)
    SmoothQuant(scales_for(model, absmax, alpha))(model)
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from slimgraph.errors import DataError
from slimgraph.ir.edit import NameSource, add_initializer, set_constant_input
from slimgraph.ir.quant import QuantParams, QuantScheme, params_from_range, params_from_weight
from slimgraph.passes.calibrate import Observer
from slimgraph.passes.protocols import Executor

__all__ = [
    "DEFAULT_ALPHAS",
    "SmoothQuant",
    "channel_absmax",
    "choose_alpha",
    "scales_for",
    "smoothable_values",
    "smoothing_scales",
]

logger = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

_PRODUCTS = frozenset({"MatMul", "Gemm"})

# Normalizations whose first output is normalized(x) * gamma + beta, with the input indices of
# gamma and beta: 1/s folds into both.
_NORMS: Mapping[tuple[str, str], tuple[int, int]] = {
    ("", "LayerNormalization"): (1, 2),
    ("com.microsoft", "SkipLayerNormalization"): (2, 3),
}

# Scales are kept inside this band so that 1/s and W·s stay ordinary float32 numbers.
_SCALE_FLOOR, _SCALE_CEILING = 1e-5, 1e5


# -- which values can be smoothed ------------------------------------------------------------


def smoothable_values(model: ir.Model) -> list[ir.Value]:
    """Values of the main graph read only as the input of MatMul/Gemm with constant weights."""
    graph = model.graph
    candidates = list(graph.inputs) + [v for node in graph for v in node.outputs]
    return [v for v in candidates if _smoothing_blocker(graph, v) is None]


def _smoothing_blocker(graph: ir.Graph, value: ir.Value) -> str | None:
    """Why ``value`` cannot be smoothed, or None when it can."""
    if value.dtype != ir.DataType.FLOAT:
        return "it is not float"
    users = value.consumers()
    if not users:
        return "nothing reads it"
    for user in users:
        if user.graph is not graph:
            return f"{user.op_type} {user.name!r} reads it inside a subgraph"
        why_not = _product_blocker(user, value)
        if why_not is not None:
            return why_not
    return None


def _product_blocker(node: ir.Node, value: ir.Value) -> str | None:
    """Why ``node`` cannot take its input ``value`` smoothed, or None when it can."""
    if node.op_type not in _PRODUCTS or node.domain not in ("", "ai.onnx"):
        return f"{node.op_type} {node.name!r} also reads it"
    if [i for i, v in enumerate(node.inputs) if v is value] != [0]:
        return f"{node.op_type} {node.name!r} reads it as its weight"
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
        return f"the weight of {node.name!r} is not a constant matrix"
    if weight.const_value.dtype != ir.DataType.FLOAT:
        return f"the weight of {node.name!r} is not float"
    if node.op_type == "Gemm" and _int_attr(node, "transA", 0):
        return f"Gemm {node.name!r} transposes its input (transA=1)"
    return None


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _input_rows(node: ir.Node) -> np.ndarray:
    """The constant weight of a MatMul or Gemm as ``[K, N]``: input channels on axis 0."""
    weight = node.inputs[1].const_value.numpy()
    return weight.T if node.op_type == "Gemm" and _int_attr(node, "transB", 0) else weight


# -- statistics ------------------------------------------------------------------------------


def channel_absmax(
    model: ir.Model,
    values: Sequence[ir.Value],
    executor: Executor,
    feeds: Iterable[Mapping[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Per-channel ``max |x|`` along the last axis of each of ``values``, batch by batch."""
    observer = Observer(model, [v.name for v in values], executor)
    ranges = _channel_ranges(observer, feeds)
    return {name: np.maximum(-low, high) for name, (low, high) in ranges.items()}


def _channel_ranges(
    observer: Observer, feeds: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel minimum and maximum along the last axis of the observed values (NaN
    skipped), one batch in memory at a time."""
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for feed in feeds:
        for name, array in zip(observer.names, observer.run(feed), strict=True):
            rows = array.reshape(-1, array.shape[-1])
            low, high = np.fmin.reduce(rows, axis=0), np.fmax.reduce(rows, axis=0)
            if name in ranges:
                low = np.fmin(ranges[name][0], low)
                high = np.fmax(ranges[name][1], high)
            ranges[name] = (low, high)
    if not ranges and observer.names:
        raise DataError("smoothing: calibration data is empty: no batch was read")
    return ranges


# -- scales ----------------------------------------------------------------------------------


def smoothing_scales(
    act_absmax: np.ndarray, weights: Sequence[np.ndarray], alpha: float
) -> np.ndarray:
    """``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` per input channel ``j``.

    ``weights`` are every product that reads the activation, each with its input channels on
    axis 0 (``[K, N]``; a Gemm with ``transB=1`` transposed); ``max|W_j|`` is taken over all
    of them, since they share the one division of the activation. A channel that never fired
    or whose weights are all zero gets 1: there is nothing to balance.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha: expected a number in [0, 1], found {alpha}")
    if not weights:
        raise ValueError("smoothing scales: expected the weights of at least one product")
    act = np.abs(np.asarray(act_absmax, dtype=np.float64)).reshape(-1)
    weight_max = np.zeros_like(act)
    for weight in weights:
        if weight.shape[0] != act.size:
            raise ValueError(
                f"smoothing scales: a weight has {weight.shape[0]} input channels (axis 0), "
                f"the activation {act.size}; pass weights as [K, N]"
            )
        rows = np.abs(np.asarray(weight, dtype=np.float64)).reshape(act.size, -1)
        weight_max = np.maximum(weight_max, rows.max(axis=1))
    live = (act > 0) & (weight_max > 0) & np.isfinite(act) & np.isfinite(weight_max)
    scales = np.ones_like(act)
    scales[live] = act[live] ** alpha / weight_max[live] ** (1.0 - alpha)
    return np.clip(scales, _SCALE_FLOOR, _SCALE_CEILING).astype(np.float32)


def scales_for(
    model: ir.Model, act_absmax: Mapping[str, np.ndarray], alpha: float
) -> dict[str, np.ndarray]:
    """Smoothing scales of each value in ``act_absmax``, from the weights of its products.

    Values that cannot be smoothed get none (see :func:`smoothable_values`).
    """
    by_name = {v.name: v for v in smoothable_values(model)}
    return {
        name: smoothing_scales(absmax, [_input_rows(u) for u in by_name[name].consumers()], alpha)
        for name, absmax in act_absmax.items()
        if name in by_name
    }


# -- choosing alpha --------------------------------------------------------------------------


def choose_alpha(
    model: ir.Model,
    executor: Executor,
    feeds: Iterable[Mapping[str, np.ndarray]],
    candidates: Sequence[float] = DEFAULT_ALPHAS,
    *,
    act_scheme: QuantScheme,
    weight_scheme: QuantScheme,
    batches: int = 4,
) -> tuple[float, dict[float, float]]:
    """The alpha among ``candidates`` whose smoothing quantizes the products best, and the
    error of each.

    The error of one alpha is the sum over smoothable products of the relative squared error
    ``|X·W - Q(X/s)·Q(W·s)|² / |X·W|²`` over the first ``batches`` batches of ``feeds``:
    activations per tensor with the min-max range of ``X/s`` over those batches, weights as
    ``weight_scheme`` says (per output channel when it is per-channel). Smoothing leaves the
    FP32 products unchanged, so every product is measured on ``model`` as it is. Two passes
    run over the batches (ranges, then errors); only the batches' inputs are kept between
    them.
    """
    alphas = [float(a) for a in candidates]
    if not alphas:
        raise ValueError("smoothing: expected at least one candidate alpha, found none")
    for alpha in alphas:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"smoothing alpha: expected numbers in [0, 1], found {alpha}")
    kept = list(itertools.islice(feeds, batches))
    if not kept:
        raise DataError("smoothing: calibration data is empty: no batch was read")
    values = smoothable_values(model)
    if not values:
        logger.warning(
            "smoothing: no MatMul or Gemm with a constant weight to smooth; "
            "alpha %.2f kept without measuring",
            alphas[0],
        )
        return alphas[0], dict.fromkeys(alphas, 0.0)

    observer = Observer(model, [v.name for v in values], executor)
    errors = _ProductErrors(
        values, _channel_ranges(observer, kept), alphas, act_scheme, weight_scheme
    )
    for feed in kept:
        for value, array in zip(values, observer.run(feed), strict=True):
            errors.add(value, array)
    totals = errors.totals()
    best = min(alphas, key=totals.__getitem__)
    logger.info(
        "smoothing: alpha %.2f chosen for %d activations (%s)",
        best,
        len(values),
        ", ".join(f"{a:.2f}: {e:.3g}" for a, e in totals.items()),
    )
    return best, totals


class _ProductErrors:
    """Running squared errors of every smoothable product under every candidate alpha."""

    def __init__(
        self,
        values: Sequence[ir.Value],
        ranges: Mapping[str, tuple[np.ndarray, np.ndarray]],
        alphas: Sequence[float],
        act_scheme: QuantScheme,
        weight_scheme: QuantScheme,
    ) -> None:
        self.alphas = list(alphas)
        self.weight_scheme = weight_scheme
        self.weights = {v.name: [_input_rows(u) for u in v.consumers()] for v in values}
        self.scales: dict[tuple[float, str], np.ndarray] = {}
        self.act_params: dict[tuple[float, str], QuantParams] = {}
        for alpha in self.alphas:
            for value in values:
                low, high = ranges[value.name]
                absmax = np.maximum(-low, high)
                scales = smoothing_scales(absmax, self.weights[value.name], alpha)
                self.scales[alpha, value.name] = scales
                # s > 0, so the range of X/s is that of each channel's range divided by s.
                self.act_params[alpha, value.name] = params_from_range(
                    float(np.min(low / scales)), float(np.max(high / scales)), act_scheme
                )
        self.error = dict.fromkeys(itertools.product(self.alphas, self._products()), 0.0)
        self.power = dict.fromkeys(self._products(), 0.0)

    def _products(self) -> list[tuple[str, int]]:
        return [(name, i) for name, ws in self.weights.items() for i in range(len(ws))]

    def add(self, value: ir.Value, array: np.ndarray) -> None:
        rows = array.reshape(-1, array.shape[-1])
        weights = self.weights[value.name]
        exact = [rows @ w for w in weights]
        for i, y in enumerate(exact):
            self.power[value.name, i] += float(np.sum(np.square(y, dtype=np.float64)))
        for alpha in self.alphas:
            scales = self.scales[alpha, value.name]
            params = self.act_params[alpha, value.name]
            rows_q = params.dequantize(params.quantize(rows / scales))
            for i, (w, y) in enumerate(zip(weights, exact, strict=True)):
                diff = y - rows_q @ self._fake_quant(w * scales[:, None])
                self.error[alpha, (value.name, i)] += float(
                    np.sum(np.square(diff, dtype=np.float64))
                )

    def _fake_quant(self, weight: np.ndarray) -> np.ndarray:
        axis = 1 if self.weight_scheme.per_channel else None  # output channels of [K, N]
        params = params_from_weight(weight, self.weight_scheme, axis=axis)
        return params.dequantize(params.quantize(weight))

    def totals(self) -> dict[float, float]:
        return {
            alpha: sum(self.error[alpha, p] / max(self.power[p], 1e-30) for p in self.power)
            for alpha in self.alphas
        }


# -- the pass --------------------------------------------------------------------------------


class SmoothQuant(ir.passes.InPlacePass):
    """Divide each value named in ``scales`` by its scales and multiply the weight rows of the
    products that read it by them; FP32 outputs do not change.

    The division folds into the gamma and beta of a LayerNormalization (or
    SkipLayerNormalization) that produces the value, when they are constants and the value is
    not a graph output; otherwise one Mul by ``1/s`` is inserted before the products. A value
    read by anything but MatMul/Gemm with a constant weight is left alone, with a warning.
    After the pass, ``smoothed`` names the values changed and ``folded`` counts the folds.
    """

    def __init__(self, scales: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.scales: dict[str, np.ndarray] = {}
        for name, raw in scales.items():
            array = np.asarray(raw, dtype=np.float32)
            if array.ndim != 1 or not np.all(np.isfinite(array)) or np.any(array <= 0):
                raise ValueError(
                    f"smoothing scales of {name!r}: expected a vector of finite numbers above "
                    f"0, found shape {list(array.shape)} with min {np.min(array, initial=0)}"
                )
            self.scales[name] = array
        self.smoothed: list[str] = []
        self.folded = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.smoothed, self.folded = [], 0
        graph = model.graph
        by_name = {v.name: v for v in graph.inputs if v.name}
        by_name.update({v.name: v for node in graph for v in node.outputs if v.name})
        names = NameSource(graph)
        for name, scales in self.scales.items():
            if name not in by_name:
                raise ValueError(
                    f"smoothing: no value named {name!r} in the main graph; "
                    "scales are keyed by the names of this model's values"
                )
            value = by_name[name]
            why_not = _smoothing_blocker(graph, value)
            if why_not is not None:
                logger.warning("smoothing: %s left alone: %s", name, why_not)
                continue
            self._smooth(graph, value, scales, names)
        return ir.passes.PassResult(model, modified=bool(self.smoothed))

    def _smooth(
        self, graph: ir.Graph, value: ir.Value, scales: np.ndarray, names: NameSource
    ) -> None:
        users = list(value.consumers())
        for user in users:
            channels = _input_rows(user).shape[0]
            if channels != scales.size:
                raise ValueError(
                    f"smoothing {value.name!r}: {scales.size} scales for "
                    f"{user.op_type} {user.name!r} with {channels} input channels"
                )
        for user in users:
            trans_b = user.op_type == "Gemm" and _int_attr(user, "transB", 0)
            row_scales = scales[None, :] if trans_b else scales[:, None]
            weight = user.inputs[1].const_value.numpy().astype(np.float64)
            set_constant_input(graph, user, 1, (weight * row_scales).astype(np.float32), names)
        inverse = (1.0 / scales.astype(np.float64)).astype(np.float32)
        if _fold_into_norm(graph, value, inverse, names):
            self.folded += 1
            logger.debug("smoothing %s: folded into %s", value.name, value.producer().name)
        else:
            _insert_mul(graph, value, users, inverse, names)
            logger.debug("smoothing %s: Mul before %d products", value.name, len(users))
        self.smoothed.append(value.name)


def _fold_into_norm(
    graph: ir.Graph, value: ir.Value, inverse: np.ndarray, names: NameSource
) -> bool:
    """Multiply the gamma and beta of the normalization producing ``value`` by ``inverse``;
    False when there is none, or they are not float constants, or the value is an output."""
    norm = value.producer()
    if norm is None or value.is_graph_output() or norm.outputs[0] is not value:
        return False
    slots = _NORMS.get(("" if norm.domain == "ai.onnx" else norm.domain, norm.op_type))
    if slots is None:
        return False
    present = [(i, norm.inputs[i]) for i in slots if i < len(norm.inputs) and norm.inputs[i]]
    if not present or present[0][0] != slots[0]:
        return False  # no gamma
    for _, param in present:
        if param.const_value is None or param.const_value.dtype != ir.DataType.FLOAT:
            return False
        if param.const_value.shape and param.const_value.shape[-1] not in (1, inverse.size):
            return False
    for index, param in present:
        data = param.const_value.numpy().astype(np.float64)
        set_constant_input(graph, norm, index, (data * inverse).astype(np.float32), names)
    return True


def _insert_mul(
    graph: ir.Graph, value: ir.Value, users: list[ir.Node], inverse: np.ndarray, names: NameSource
) -> None:
    """``value -> Mul(1/s) -> users``, the Mul placed before the first of them."""
    uses = list(value.uses())
    factor = add_initializer(graph, inverse, names.fresh(f"{value.name}_smoothing"))
    out = ir.Value(name=names.fresh(f"{value.name}_smoothed"), type=value.type, shape=value.shape)
    mul = ir.node(
        "Mul", [value, factor], outputs=[out], name=names.fresh(f"{value.name}_smoothing_Mul")
    )
    for user, index in uses:
        user.replace_input_with(index, out)
    position = {node: i for i, node in enumerate(graph)}
    graph.insert_before(min(users, key=position.__getitem__), mul)
