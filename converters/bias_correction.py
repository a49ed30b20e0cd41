"""Empirical bias correction of a full-int8 TFLite model against its float twin.

Post-training int8 rounds every weight and activation. The rounding errors of one layer's weights do not
average out over its input: for output channel ``c`` the error ``(W_q - W) x`` has a mean ``(W_q - W) E[x]``
that is not zero, and the next layer sees that mean as a shifted input. Nagel et al. 2019 ("Data-Free
Quantization through Weight Equalization and Bias Correction", section 4.2) show that this bias is largest
after cross-layer equalization (the equalized weights of the small channels are scaled up, their rounding
errors with them) and that subtracting it from the layer's bias recovers most of the lost accuracy; their
*empirical* variant measures it on data, as Finkelstein et al. 2019 ("Fighting Quantization Bias With Bias")
do for MobileNets. :func:`correct_biases` does that on a converted model:

1. run the float reference model (the same Keras model converted without quantization: the same ops in the
   same order, minus the int8 model's ``QUANTIZE`` / ``DEQUANTIZE`` boundary, checked op by op and by output
   shape in :func:`match_ops`) on the calibration samples once, and keep per op and per output channel the mean
   of its output and the fraction of positive outputs;
2. for each ``CONV_2D``, ``DEPTHWISE_CONV_2D`` and ``FULLY_CONNECTED`` op of the int8 graph in graph order: run
   the int8 graph up to that op (corrections of the ops before it already applied), dequantize its output,
   take the per-channel mean error ``e_c = E[int8] - E[float]`` and subtract ``e_c / bias_scale_c`` from the
   op's int32 bias (``bias_scale_c = input_scale * weight_scale_c``, the bias tensor's own quantization).

The error measured after an op includes the error of its input (earlier layers, activation rounding), so each
correction also absorbs the mean shift the op inherits: it matches the mean of every corrected op's output to
the float model's on the calibration data. An op with a fused ReLU shows its error after the ReLU, where a mean
error is no longer a bias error; by default (``relu="skip"``) such ops keep their bias and the next
convolution, which is corrected, absorbs the mean shift they pass on. ``"raw"`` treats the post-ReLU mean error
as a bias error; ``"scaled"`` divides it by the float output's positive fraction (a bias change ``b`` moves the
post-ReLU mean by about ``b * P(output > 0)``; channels positive on fewer than ``min_active`` of the outputs
are left alone). On MobileFaceNet ``"skip"`` keeps the most of the float embedding (converters/README.md).

Batched and cheap: each step runs a copy of the int8 graph cut after the op being corrected (its output made
the graph output, the batch resized to ``batch``), with the default XNNPACK delegate; MobileFaceNet (52 of its
85 biased ops corrected, the others carry a fused ReLU) takes about 45 s on 300 crops. Numbers: converters/README.md.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.runtime import quantize

log = logging.getLogger(__name__)

#: The ops whose int32 bias is corrected.
BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_BOUNDARY = ("QUANTIZE", "DEQUANTIZE")
_INT32, _INT8 = 2, 9  # TFLite TensorType
_RELU = 1  # ActivationFunctionType.RELU


class BiasCorrectionError(EdgefaceError, ValueError):
    """The int8 and float models do not match op for op, or the int8 model is not full-integer."""


class OpPair(NamedTuple):
    """One biased op of the int8 graph and the op of the float graph that computes the same output."""
    int8_op: int
    float_op: int
    kind: str
    channels: int
    relu: bool


def bias_step(error_mean: np.ndarray, bias_scale: np.ndarray, active: np.ndarray | None = None,
              min_active: float = 0.05) -> np.ndarray:
    """The int32 amounts to subtract from a bias (rounded), for a per-channel mean output error.

    ``error_mean``: mean of (dequantized int8 output - float output) per output channel; ``bias_scale``: the
    bias tensor's scale per channel (or one for all), ``input_scale * weight_scale``. ``active``: for an op
    with a fused ReLU, the float output's positive fraction per channel: the error is divided by it (a bias
    change moves the post-ReLU mean by that fraction of itself) and channels below ``min_active`` get 0.
    """
    error_mean = np.asarray(error_mean, np.float64)
    scale = np.broadcast_to(np.asarray(bias_scale, np.float64), error_mean.shape)
    if np.any(scale <= 0):
        raise BiasCorrectionError("bias scales must be > 0")
    pre = error_mean
    if active is not None:
        active = np.asarray(active, np.float64)
        pre = np.where(active >= min_active, error_mean / np.maximum(active, min_active), 0.0)
    return np.round(pre / scale).astype(np.int64)


def apply_step(bias: np.ndarray, step: np.ndarray) -> np.ndarray:
    """``bias - step`` as int32, saturated (a corrected bias never wraps around)."""
    info = np.iinfo(np.int32)
    return np.clip(np.asarray(bias, np.int64) - step, info.min, info.max).astype(np.int32)


def _ops(model) -> list[str]:
    from .tflite_rebuild import op_names

    return op_names(model)


def _shape(sg, tensor: int) -> tuple:
    return tuple(int(d) for d in sg.tensors[tensor].shape)


def match_ops(int8_model, float_model) -> list[OpPair]:
    """Pair every biased op of the int8 graph (a flatbuffer ``ModelT``) with its op in the float graph.

    The two graphs must list the same ops in the same order once the int8 model's ``QUANTIZE`` /
    ``DEQUANTIZE`` ops are left out, with the same output shapes; anything else raises
    :class:`BiasCorrectionError` (the float model is then not the int8 model's source).
    """
    names8, namesf = _ops(int8_model), _ops(float_model)
    sg8, sgf = int8_model.subgraphs[0], float_model.subgraphs[0]
    core8 = [k for k, n in enumerate(names8) if n not in _BOUNDARY]
    coref = [k for k, n in enumerate(namesf) if n not in _BOUNDARY]
    if [names8[k] for k in core8] != [namesf[k] for k in coref]:
        raise BiasCorrectionError(f"the int8 graph ({len(core8)} ops) and the float graph ({len(coref)} ops) do "
                                  "not list the same ops in the same order")
    pairs = []
    for k8, kf in zip(core8, coref):
        op8, opf = sg8.operators[k8], sgf.operators[kf]
        out8, outf = int(op8.outputs[0]), int(opf.outputs[0])
        if _shape(sg8, out8) != _shape(sgf, outf):
            raise BiasCorrectionError(f"op {k8} ({names8[k8]}): int8 output shape {_shape(sg8, out8)} differs "
                                      f"from the float op {kf}'s {_shape(sgf, outf)}")
        if names8[k8] not in BIASED_OPS:
            continue
        if len(op8.inputs) < 3 or int(op8.inputs[2]) < 0:
            continue  # no bias to correct
        if sg8.tensors[out8].type != _INT8 or sg8.tensors[int(op8.inputs[2])].type != _INT32:
            raise BiasCorrectionError(f"op {k8} ({names8[k8]}) is not int8 with an int32 bias")
        fused = getattr(op8.builtinOptions, "fusedActivationFunction", 0)
        if fused not in (0, _RELU):
            raise BiasCorrectionError(f"op {k8} ({names8[k8]}): fused activation {fused} is not supported "
                                      "(NONE or RELU)")
        pairs.append(OpPair(k8, kf, names8[k8], _shape(sg8, out8)[-1], fused == _RELU))
    if not pairs:
        raise BiasCorrectionError("the int8 graph has no biased CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op")
    return pairs


def _cut(model, last_op: int, outputs: Sequence[int]) -> bytes:
    """The graph's ops up to ``last_op`` with ``outputs`` as its outputs (no signatures), serialized."""
    from tensorflow.lite.tools import flatbuffer_utils

    sg = model.subgraphs[0]
    ops, outs, sigs = sg.operators, sg.outputs, model.signatureDefs
    try:
        sg.operators, sg.outputs, model.signatureDefs = ops[:last_op + 1], list(outputs), []
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    finally:
        sg.operators, sg.outputs, model.signatureDefs = ops, outs, sigs


def _runner(tflite: bytes, batch: int):
    """A LiteRT interpreter resized to ``batch`` and a function ``samples -> list of outputs``."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]], strict=False)
    it.allocate_tensors()
    outs = it.get_output_details()
    scale, zero_point = inp["quantization"]

    def run(x: np.ndarray) -> list[np.ndarray]:
        if inp["dtype"] != np.float32:
            x = quantize(x, scale, zero_point, inp["dtype"])
        it.set_tensor(inp["index"], np.ascontiguousarray(x, inp["dtype"]))
        it.invoke()
        return [it.get_tensor(o["index"]) for o in outs]

    return run


def _batches(samples: np.ndarray, batch: int) -> Iterable[tuple[np.ndarray, int]]:
    """``samples`` in chunks of exactly ``batch`` (the last one padded by repeating its first sample) and the
    count of real samples in each."""
    for i in range(0, len(samples), batch):
        x = samples[i:i + batch]
        n = len(x)
        if n < batch:
            x = np.concatenate([x, np.repeat(x[:1], batch - n, axis=0)])
        yield x, n


def _channel_means(tflite: bytes, channels: Sequence[int], samples: np.ndarray, batch: int
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per output of ``tflite``: the mean per channel (raw values: int8 codes or floats) over samples and
    positions, and the fraction of values > 0."""
    run = _runner(tflite, batch)
    sums = [np.zeros(c) for c in channels]
    pos = [np.zeros(c) for c in channels]
    rows = np.zeros(len(channels))
    for x, n in _batches(np.asarray(samples, np.float32), batch):
        for k, y in enumerate(run(x)):
            y = y[:n].reshape(-1, channels[k])
            sums[k] += y.sum(axis=0, dtype=np.float64)
            pos[k] += (y > 0).sum(axis=0)
            rows[k] += len(y)
    return [s / r for s, r in zip(sums, rows)], [p / r for p, r in zip(pos, rows)]


class FloatStats(NamedTuple):
    mean: list[np.ndarray]  # per pair, per channel
    active: list[np.ndarray]  # per pair, per channel: fraction of outputs > 0


def float_stats(float_model, pairs: Sequence[OpPair], samples: np.ndarray, batch: int = 16) -> FloatStats:
    """Per-channel mean and positive fraction of every paired op's output in the float model."""
    sg = float_model.subgraphs[0]
    outputs = [int(sg.operators[p.float_op].outputs[0]) for p in pairs]
    cut = _cut(float_model, max(p.float_op for p in pairs), outputs)
    return FloatStats(*_channel_means(cut, [p.channels for p in pairs], samples, batch))


def _int8_means(model, pairs: Sequence[OpPair], samples: np.ndarray, batch: int) -> list[np.ndarray]:
    """The dequantized mean output per channel of ``pairs`` (int8 ops), run in one graph cut after the last."""
    sg = model.subgraphs[0]
    outputs = [int(sg.operators[p.int8_op].outputs[0]) for p in pairs]
    cut = _cut(model, max(p.int8_op for p in pairs), outputs)
    means, _active = _channel_means(cut, [p.channels for p in pairs], samples, batch)
    out = []
    for mean, t in zip(means, outputs):
        q = sg.tensors[t].quantization
        out.append(float(q.scale[0]) * (mean - int(q.zeroPoint[0])))
    return out


def _bias(model, pair: OpPair) -> tuple[np.ndarray, np.ndarray, object]:
    """(int32 bias, its per-channel scale, its buffer) of a paired op."""
    sg = model.subgraphs[0]
    tensor = sg.tensors[int(sg.operators[pair.int8_op].inputs[2])]
    buffer = model.buffers[tensor.buffer]
    bias = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.int32)
    scale = np.asarray(tensor.quantization.scale, np.float64)
    if len(bias) != pair.channels or len(scale) not in (1, pair.channels):
        raise BiasCorrectionError(f"op {pair.int8_op}: bias of {len(bias)} values and {len(scale)} scales for "
                                  f"{pair.channels} channels")
    return bias.copy(), scale, buffer


def _own_biases(model, pairs: Sequence[OpPair]) -> None:
    """Give every paired op a bias tensor and buffer of its own (the converter shares equal constants, e.g.
    two all-zero biases, between ops; a correction must change one op only)."""
    import copy

    sg = model.subgraphs[0]
    tensors, buffers = set(), set()
    for p in pairs:
        op = sg.operators[p.int8_op]
        t = int(op.inputs[2])
        if t in tensors:
            sg.tensors.append(copy.deepcopy(sg.tensors[t]))
            t = len(sg.tensors) - 1
            op.inputs[2] = t
        tensors.add(t)
        tensor = sg.tensors[t]
        if tensor.buffer in buffers:
            model.buffers.append(copy.deepcopy(model.buffers[tensor.buffer]))
            tensor.buffer = len(model.buffers) - 1
        buffers.add(tensor.buffer)


class OpCorrection(NamedTuple):
    """What :func:`correct_biases` did to one op: its mean |error| (float output units) before, and the
    largest bias change in bias steps."""
    int8_op: int
    kind: str
    relu: bool
    mean_abs_error: float
    max_step: int


#: How ops with a fused ReLU are corrected (:func:`correct_biases` ``relu=``).
RELU_MODES = ("skip", "raw", "scaled")


def correct_biases(int8_tflite: bytes, float_tflite: bytes, samples: np.ndarray, batch: int = 16,
                   relu: str = "skip", min_active: float = 0.05,
                   progress: Callable[[Iterable], Iterable] | None = None, report: list | None = None) -> bytes:
    """``int8_tflite`` with the int32 biases of its conv / depthwise / fully-connected ops corrected so that
    each op's mean output per channel matches ``float_tflite``'s on ``samples`` (see the module docstring).

    ``float_tflite``: the float model the int8 one was converted from (same Keras model, no quantization).
    ``samples``: normalized float inputs ``(N, H, W, C)`` of the float model (the calibration data; the int8
    model gets them quantized with its input tensor's own scale and zero point). ``batch``: samples per
    invoke (memory, not results). ``relu``: how ops with a fused ReLU are treated, one of
    :data:`RELU_MODES` (module docstring); ``min_active``: see :func:`bias_step`. ``progress``: wraps the
    loop over ops (a progress bar). ``report``: a list that receives one :class:`OpCorrection` per corrected
    op. Nothing else changes: same ops, tensors, scales and interface.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    if relu not in RELU_MODES:
        raise BiasCorrectionError(f"relu must be one of {RELU_MODES}, got {relu!r}")
    samples = np.asarray(samples, np.float32)
    if samples.ndim != 4 or not len(samples):
        raise BiasCorrectionError(f"samples must be a non-empty (N, H, W, C) array, got shape {samples.shape}")
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(int8_tflite))
    reference = flatbuffer_utils.convert_bytearray_to_object(bytearray(float_tflite))
    pairs = match_ops(model, reference)
    _own_biases(model, pairs)
    ref = float_stats(reference, pairs, samples, batch)
    steps = progress(range(len(pairs))) if progress else range(len(pairs))
    for k in steps:
        pair = pairs[k]
        if pair.relu and relu == "skip":
            continue
        (mean,) = _int8_means(model, [pair], samples, batch)
        error = mean - ref.mean[k]
        bias, scale, buffer = _bias(model, pair)
        step = bias_step(error, scale, ref.active[k] if pair.relu and relu == "scaled" else None, min_active)
        buffer.data = np.frombuffer(apply_step(bias, step).tobytes(), np.uint8).copy()
        if report is not None:
            report.append(OpCorrection(pair.int8_op, pair.kind, pair.relu, float(np.abs(error).mean()),
                                       int(np.abs(step).max())))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def output_errors(int8_tflite: bytes, float_tflite: bytes, samples: np.ndarray, batch: int = 16
                  ) -> list[np.ndarray]:
    """Per biased op (graph order), the per-channel mean of (dequantized int8 output - float output) on
    ``samples``: what :func:`correct_biases` drives towards zero (use held-out samples to check it)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(int8_tflite))
    reference = flatbuffer_utils.convert_bytearray_to_object(bytearray(float_tflite))
    pairs = match_ops(model, reference)
    ref = float_stats(reference, pairs, samples, batch)
    return [m - f for m, f in zip(_int8_means(model, pairs, samples, batch), ref.mean)]
