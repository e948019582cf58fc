"""Bias correction: remove the shift that weight rounding adds to each output channel's mean.

Quantizing a weight changes what a layer computes by ``(W_q - W)·x``. Over the data that error
has the mean ``(W_q - W)·E[x]`` per output channel, and when the inputs do not average to zero
(after a ReLU, images in [0, 1]) it moves every output like a wrong bias, which no later layer
undoes. Subtracting it from the bias (Nagel et al., 2019) leaves only the zero-mean part.

:class:`CorrectBias` runs after InsertQDQ, on the quantized model: it reads each weight's
integers, scale, zero point and axis from the DequantizeLinear in front of the layer, so it
corrects what the runtime will compute. The float weights are gone from the graph by then,
so they are taken before quantizing, keyed by node name (:func:`float_weights`), and the mean
of each layer's input is measured on the FP32 model (:func:`layer_input_means`)::

    weights = float_weights(model)
    means = layer_input_means(model, executor, batches)
    ... PlanQuantization, AssignParams, InsertQDQ ...
    CorrectBias(means, weights)(model)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from slimgraph.errors import DataError, PassError
from slimgraph.ir.edit import NameSource, add_initializer, set_constant_input
from slimgraph.ir.quant import QuantDType, QuantParams
from slimgraph.passes.calibrate import Observer
from slimgraph.passes.protocols import Executor

__all__ = ["CorrectBias", "channel_means", "float_weights", "layer_input_means"]

logger = logging.getLogger(__name__)

_INT32_LIMIT = float(np.iinfo(np.int32).max)


# -- what is corrected -----------------------------------------------------------------------


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return attr.as_float() if attr is not None else default


def _input_axis(node: ir.Node) -> int | None:
    """The channel axis of the activation input of a layer bias correction handles, or None
    when ``node`` is not one: Conv (NCHW, axis 1), Gemm without transA and MatMul with a 2-D
    weight (last axis)."""
    if node.domain not in ("", "ai.onnx") or len(node.inputs) < 2 or node.inputs[0] is None:
        return None
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm" and not _int_attr(node, "transA", 0):
        return -1
    if node.op_type == "MatMul":
        return -1
    return None


def float_weights(model: ir.Model) -> dict[str, np.ndarray]:
    """The float weight of every named Conv, Gemm and MatMul of the main graph whose weight is
    a constant, keyed by node name; take it before quantizing, for :class:`CorrectBias`."""
    weights = {}
    for node in model.graph:
        weight = node.inputs[1] if _input_axis(node) is not None else None
        if (
            node.name
            and weight is not None
            and weight.const_value is not None
            and weight.const_value.dtype == ir.DataType.FLOAT
        ):
            weights[node.name] = weight.const_value.numpy()
    return weights


# -- statistics ------------------------------------------------------------------------------


def channel_means(
    model: ir.Model,
    values: Sequence[ir.Value],
    executor: Executor,
    feeds: Iterable[Mapping[str, np.ndarray]],
    axis: int,
) -> dict[str, np.ndarray]:
    """Mean of each of ``values`` per channel along ``axis`` (1 for NCHW, -1 for the last),
    over every other axis and every batch; one batch in memory at a time."""
    return _means(model, {v.name: axis for v in values}, executor, feeds)


def layer_input_means(
    model: ir.Model, executor: Executor, feeds: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Per-channel means of the activation input of every layer in :func:`float_weights`, in
    one pass over ``feeds``, keyed by value name."""
    weights = float_weights(model)
    axes: dict[str, int] = {}
    for node in model.graph:
        value = node.inputs[0] if node.name in weights else None
        if value is not None and value.const_value is None and value.name:
            # Known shortcoming: a value read by a Conv and by a MatMul needs two axes; the
            # first layer's wins and the other is skipped by CorrectBias (length mismatch).
            axes.setdefault(value.name, _input_axis(node))  # type: ignore[arg-type]
    return _means(model, axes, executor, feeds)


def _means(
    model: ir.Model,
    axes: Mapping[str, int],
    executor: Executor,
    feeds: Iterable[Mapping[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    if not axes:
        return {}
    observer = Observer(model, list(axes), executor)
    names = observer.names
    sums: dict[str, np.ndarray] = {}
    counts = dict.fromkeys(names, 0)
    for feed in feeds:
        for name, array in zip(names, observer.run(feed), strict=True):
            moved = np.moveaxis(array.astype(np.float64), axes[name], 0)
            rows = moved.reshape(moved.shape[0], -1)
            sums[name] = sums.get(name, 0.0) + rows.sum(axis=1)
            counts[name] += rows.shape[1]
    if not sums:
        raise DataError("bias correction: calibration data is empty: no batch was read")
    return {name: (sums[name] / max(counts[name], 1)).astype(np.float32) for name in names}


# -- the pass --------------------------------------------------------------------------------


class CorrectBias(ir.passes.InPlacePass):
    """Subtract ``(W_deq - W)·E[x]`` from the bias of every Conv, Gemm and MatMul whose weight
    is a DequantizeLinear of constant integers.

    ``input_means`` holds the per-channel mean of each layer's input, keyed by the name of the
    value in the FP32 model (an input that now arrives through QuantizeLinear ->
    DequantizeLinear is traced back to it); ``float_weights`` the FP32 weight of each layer,
    keyed by node name. An INT32 bias behind a DequantizeLinear is re-quantized with its own
    scale; a float bias is updated; a Conv or Gemm without one gets one (INT32 with scale =
    input scale x weight scale when its input is dequantized, so that the runtime still fuses
    it), a MatMul gets an Add after it, or the Add it already has is updated. Layers whose
    weight is not dequantized are left alone. After the pass ``corrected`` counts the layers
    and ``channels`` the output channels whose bias changed.
    """

    def __init__(
        self, input_means: Mapping[str, np.ndarray], float_weights: Mapping[str, np.ndarray]
    ) -> None:
        super().__init__()
        self.input_means = {
            k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in input_means.items()
        }
        self.float_weights = dict(float_weights)
        self.corrected = 0
        self.channels = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.corrected, self.channels = 0, 0
        graph = model.graph
        names = NameSource(graph)
        missing: list[str] = []
        for node in list(graph):
            if _input_axis(node) is None or _dequantized(node.inputs[1]) is None:
                continue  # not a layer, or its weight stays float: nothing was rounded
            shift = self._shift(node)
            if shift is None:
                missing.append(node.name or node.op_type)
                continue
            changed = _subtract_from_bias(graph, node, shift, names)
            if changed is None:
                missing.append(node.name or node.op_type)
                continue
            self.corrected += 1
            self.channels += changed
            logger.debug(
                "bias correction %s: %d channels, largest shift %.3g",
                node.name,
                changed,
                float(np.max(np.abs(shift), initial=0.0)),
            )
        if missing:
            logger.warning(
                "bias correction: %d quantized layers left uncorrected (no float "
                "weight or input mean of the right size, or a bias computed at "
                "run time): %s",
                len(missing),
                ", ".join(missing),
            )
        logger.info("bias correction: %d layers, %d channels", self.corrected, self.channels)
        return ir.passes.PassResult(model, modified=self.corrected > 0)

    def _shift(self, node: ir.Node) -> np.ndarray | None:
        """``(W_deq - W)·E[x]`` per output channel, or None when a number is missing."""
        weight = self.float_weights.get(node.name or "")
        mean = self.input_means.get(_float_source(node.inputs[0]).name or "")
        dequantized = _dequantized(node.inputs[1])
        if weight is None or mean is None or dequantized is None:
            return None
        if dequantized.shape != weight.shape:
            return None
        error = dequantized.astype(np.float64) - weight.astype(np.float64)
        if node.op_type == "Conv":
            return _conv_shift(node, error, mean)
        if node.op_type == "Gemm" and _int_attr(node, "transB", 0):
            error = error.T
        if error.ndim != 2 or error.shape[0] != mean.size:
            return None
        shift = mean @ error
        return shift * _float_attr(node, "alpha", 1.0) if node.op_type == "Gemm" else shift


def _conv_shift(node: ir.Node, error: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """``sum over i, taps of error[o, i, tap] * mean[i] * coverage[tap]``, each output reading
    its group's inputs.

    ``coverage`` is the share of output positions at which a tap reads the image rather than
    the padding (zeros): the bias is one number per channel, so it corrects the shift averaged
    over the output positions, which is exact when x has the same mean everywhere.
    """
    groups = _int_attr(node, "group", 1)
    out_channels, group_inputs = error.shape[:2]
    if mean.size != groups * group_inputs or out_channels % groups:
        return None
    coverage = _tap_coverage(node, error.shape[2:])
    per_input = (error * coverage).reshape(out_channels, group_inputs, -1).sum(axis=2)
    group_means = np.repeat(mean.reshape(groups, group_inputs), out_channels // groups, axis=0)
    return (per_input * group_means).sum(axis=1)


def _tap_coverage(node: ir.Node, kernel: tuple[int, ...]) -> np.ndarray:
    """Per kernel tap, the share of output positions where it reads inside the input; all
    ones when the spatial size of the input is not known."""
    shape = node.inputs[0].shape
    if shape is None or len(shape) != len(kernel) + 2:
        return np.ones(kernel)
    sizes = list(shape)[2:]
    if not all(isinstance(d, int) for d in sizes):
        return np.ones(kernel)
    rank = len(kernel)
    strides = _ints_attr(node, "strides", [1] * rank)
    dilations = _ints_attr(node, "dilations", [1] * rank)
    pads = _ints_attr(node, "pads", [0] * 2 * rank)
    auto_pad = node.attributes.get("auto_pad")
    mode = auto_pad.as_string() if auto_pad is not None else "NOTSET"
    coverage = np.ones(kernel)
    for d in range(rank):
        size, k, stride, dilation = sizes[d], kernel[d], strides[d], dilations[d]
        begin, end = pads[d], pads[d + rank]
        if mode == "VALID":
            begin = end = 0
        elif mode in ("SAME_UPPER", "SAME_LOWER"):
            total = max((-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
            begin = total // 2 if mode == "SAME_UPPER" else total - total // 2
            end = total - begin
        outputs = (size + begin + end - (k - 1) * dilation - 1) // stride + 1
        if outputs < 1:
            return np.ones(kernel)
        index = np.arange(outputs)[:, None] * stride - begin + np.arange(k)[None, :] * dilation
        share = ((index >= 0) & (index < size)).mean(axis=0)
        coverage *= share.reshape([k if a == d else 1 for a in range(rank)])
    return coverage


def _ints_attr(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else default


def _float_source(value: ir.Value) -> ir.Value:
    """The float value that ``value`` dequantizes, through QuantizeLinear -> DequantizeLinear
    pairs; ``value`` itself when it is not one."""
    while True:
        dq = value.producer()
        if dq is None or dq.op_type != "DequantizeLinear" or dq.inputs[0] is None:
            return value
        q = dq.inputs[0].producer()
        if q is None or q.op_type != "QuantizeLinear" or q.inputs[0] is None:
            return value
        value = q.inputs[0]


def _dq_params(value: ir.Value | None) -> tuple[QuantParams, ir.Value] | None:
    """Parameters of the DequantizeLinear that produces ``value`` (constant scale and zero
    point), and its integer input; None when ``value`` is not such a DequantizeLinear's."""
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
        return None
    quantized, scale, zero_point = [*dq.inputs, None, None][:3]
    if quantized is None or scale is None or scale.const_value is None:
        return None
    if zero_point is not None and zero_point.const_value is None:
        return None
    if _int_attr(dq, "block_size", 0):
        return None  # blocked quantization: several scales per channel
    try:
        dtype = QuantDType[quantized.dtype.name] if quantized.dtype is not None else None
    except KeyError:
        return None  # 4-bit, float 8: not a QuantDType
    scales = scale.const_value.numpy()
    zp = zero_point.const_value.numpy() if zero_point is not None else np.zeros_like(scales)
    rank = len(quantized.shape) if quantized.shape is not None else None
    if dtype is None or (scales.size > 1 and rank is None):
        return None
    if scales.size > 1:
        params = QuantParams(
            scales.reshape(-1), zp.reshape(-1), dtype, _int_attr(dq, "axis", 1) % rank
        )
    else:
        params = QuantParams(scales.reshape(()), zp.reshape(()), dtype)
    return params, quantized


def _dequantized(value: ir.Value | None) -> np.ndarray | None:
    """The float weight a DequantizeLinear of constant 8- or 16-bit integers gives."""
    found = _dq_params(value)
    if found is None or found[0].dtype is QuantDType.INT32 or found[1].const_value is None:
        return None
    params, quantized = found
    return params.dequantize(quantized.const_value.numpy())


# -- changing the bias -----------------------------------------------------------------------


def _subtract_from_bias(
    graph: ir.Graph, node: ir.Node, shift: np.ndarray, names: NameSource
) -> int | None:
    """Subtract ``shift`` from the bias of ``node``; the number of channels that changed, or
    None when the bias cannot be changed."""
    if node.op_type == "MatMul":
        return _correct_after_matmul(graph, node, shift, names)
    delta = -shift
    if node.op_type == "Gemm":
        beta = _float_attr(node, "beta", 1.0)
        if beta == 0.0:
            return None  # C is ignored
        delta = delta / beta
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is None:
        return _add_bias(graph, node, delta, names)
    found = _dq_params(bias)
    if found is not None and found[0].dtype is QuantDType.INT32:
        return _requantize_bias(graph, bias, found, delta, names)
    if bias.const_value is not None and bias.const_value.dtype == ir.DataType.FLOAT:
        updated = bias.const_value.numpy().astype(np.float64) + delta
        set_constant_input(graph, node, 2, updated.astype(np.float32), names)
        return int(np.count_nonzero(delta))
    return None


def _requantize_bias(
    graph: ir.Graph,
    bias: ir.Value,
    found: tuple[QuantParams, ir.Value],
    delta: np.ndarray,
    names: NameSource,
) -> int | None:
    """The INT32 bias plus ``delta``, rounded on its own scale (the scale stays, so the
    runtime's fusion does not change)."""
    params, quantized = found
    if quantized.const_value is None:
        return None
    q = quantized.const_value.numpy()
    dq = bias.producer()
    if (
        len(bias.uses()) != 1
        or q.size not in (1, delta.size)
        or params.scale.size not in (1, delta.size)
    ):
        return None
    steps = np.rint(delta / params.scale.astype(np.float64).reshape(-1))
    updated = q.astype(np.float64).reshape(-1) + steps
    if np.any(np.abs(updated) > _INT32_LIMIT):
        raise PassError(
            f"bias {bias.name!r}: the corrected bias does not fit INT32 at its "
            "scale; leave this layer out of bias correction"
        )
    shape = q.shape if q.size == delta.size else delta.shape
    set_constant_input(graph, dq, 0, updated.astype(np.int32).reshape(shape), names)
    return int(np.count_nonzero(steps))


def _add_bias(graph: ir.Graph, node: ir.Node, delta: np.ndarray, names: NameSource) -> int:
    """A new bias input for a Conv or Gemm: INT32 behind a DequantizeLinear when the input and
    weight are dequantized (per-tensor input), float otherwise."""
    base = node.name or node.op_type
    act = _dq_params(node.inputs[0])
    weight = _dq_params(node.inputs[1])
    if act is not None and weight is not None and act[0].axis is None:
        scale = np.broadcast_to(
            act[0].scale.astype(np.float64) * weight[0].scale.astype(np.float64).reshape(-1),
            delta.shape,
        )
        quantized = np.rint(delta / scale)
        if np.any(np.abs(quantized) > _INT32_LIMIT):
            raise PassError(
                f"bias correction of {base!r}: the new bias does not fit INT32 at "
                "scale input x weight; leave this layer out of bias correction"
            )
        dq = ir.node(
            "DequantizeLinear",
            [
                add_initializer(
                    graph, quantized.astype(np.int32), names.fresh(f"{base}_bias_quantized")
                ),
                add_initializer(graph, scale.astype(np.float32), names.fresh(f"{base}_bias_scale")),
                add_initializer(
                    graph, np.zeros(delta.shape, np.int32), names.fresh(f"{base}_bias_zero_point")
                ),
            ],
            attributes={"axis": 0},
            name=names.fresh(f"{base}_bias_DequantizeLinear"),
        )
        dq.outputs[0].name = names.fresh(f"{base}_bias")
        dq.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        dq.outputs[0].shape = ir.Shape(delta.shape)
        graph.insert_before(node, dq)
        bias, changed = dq.outputs[0], int(np.count_nonzero(quantized))
    else:
        bias = add_initializer(graph, delta.astype(np.float32), names.fresh(f"{base}_bias"))
        changed = int(np.count_nonzero(delta))
    node.resize_inputs(3)
    node.replace_input_with(2, bias)
    return changed


def _correct_after_matmul(
    graph: ir.Graph, node: ir.Node, shift: np.ndarray, names: NameSource
) -> int:
    """Subtract ``shift`` from the float constant of the Add that alone reads the MatMul, or
    add one.

    Known shortcoming: when the MatMul's output is quantized for its user, the new Add sits
    between the MatMul and its QuantizeLinear and onnxruntime runs the MatMul as
    MatMulIntegerToFloat rather than QLinearMatMul; folding the shift into the output's
    zero point would keep the fusion.
    """
    out = node.outputs[0]
    delta = -shift
    users = list(out.uses())
    if len(users) == 1 and not out.is_graph_output() and users[0].node.op_type == "Add":
        add, index = users[0]
        other = add.inputs[1 - index]
        constant = other.const_value if other is not None else None
        if (
            constant is not None
            and constant.dtype == ir.DataType.FLOAT
            and (not constant.shape or constant.shape[-1] in (1, delta.size))
        ):
            updated = constant.numpy().astype(np.float64) + delta
            set_constant_input(graph, add, 1 - index, updated.astype(np.float32), names)
            return int(np.count_nonzero(delta))
    base = node.name or "MatMul"
    addend = add_initializer(graph, delta.astype(np.float32), names.fresh(f"{base}_bias"))
    add = ir.node("Add", [out, addend], name=names.fresh(f"{base}_bias_Add"))
    result = add.outputs[0]
    result.type, result.shape = out.type, out.shape
    for user, index in users:
        user.replace_input_with(index, result)
    if out.is_graph_output():
        # The graph output keeps its name: it moves to the corrected value.
        for position, value in enumerate(graph.outputs):
            if value is out:
                graph.outputs[position] = result
        result.name, out.name = out.name, names.fresh(f"{out.name}_uncorrected")
    else:
        result.name = names.fresh(f"{out.name or base}_corrected")
    graph.insert_after(node, add)
    return int(np.count_nonzero(delta))
