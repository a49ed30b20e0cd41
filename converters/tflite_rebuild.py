"""Rebuild a small float TFLite model (such as MediaPipe BlazeFace) as a tf_keras functional model.

The TFLite converter cannot re-quantize a ``.tflite`` file, and pruning / QAT need Keras layers, so the
graph is translated op by op into standard Keras layers with the same weights. fp16 weights (stored behind
``DEQUANTIZE`` ops) are widened to fp32. Only the ops BlazeFace and MobileFaceNet use are supported; any other
op raises a ``ValueError`` that names it. The batch is always 1 (a fixed batch-2 model is rebuilt for batch 1).

PReLU. MobileFaceNet's TFLite spells each PReLU as five ops on one tensor ``x``:
``RELU(x) + m * (x - ABS(x))`` with a per-channel constant ``m`` (= slope / 2). The rebuilder recognises the
pattern and emits it as one of (``prelu=``):

* ``"relu_split"``: ``relu(dw(x, 1)) + dw(relu(dw(x, -1)), -a)``: three 1x1 depthwise convolutions
  (two with a fused ReLU, the third carries the slopes ``a``) and an Add. Every op has an int8 kernel in XNNPACK
  and on the Edge TPU, and tfmot can wrap every layer for quantization-aware training. (A ``PRELU`` op has no int8
  XNNPACK kernel: the int8 graph falls back to the reference kernels in 34 pieces and is slower than float.)
* ``"signed"`` (the int8 default of :mod:`.embedder`): ``x + relu(dw(x, a - 1))``, one 1x1 depthwise
  convolution with a fused ReLU and an Add. That is ``prelu(x)`` for a channel whose slope is <= 1; a channel
  with a slope > 1 has its sign flipped in the producer convolution (weights and bias) and back in the consumer
  (``-g(-x)`` is that channel's PReLU when ``g`` is the block's function there). Two passes over memory instead
  of four: the int8 MobileFaceNet runs 1.4x faster than with ``"relu_split"`` and keeps more of the float
  embedding (cosine 0.986 vs 0.984 on held-out crops). Needs every PReLU between two plain convolutions.
* ``"negative_part"``: ``x + dw(relu(dw(x, -1)), 1 - a)``, or ``x + relu(dw(x, -(1 - a)))`` where every slope of
  the PReLU is <= 1: one or two 1x1 depthwise convolutions and an Add instead of three and an Add. The same
  int8 kernels as ``"relu_split"`` and 1.3x faster in int8 (fewer full-size passes over memory).
* ``"prelu"``: a ``keras.layers.PReLU`` (one ``PRELU`` op), the float graph's natural form.

Channel equalization (``channel_scales=``, from :func:`prelu_channel_scales`). An int8 tensor has one scale for
all its channels; in MobileFaceNet the channels that feed a PReLU differ in range by up to 200x, so most of
them get a handful of int8 levels (a signal-to-quantization-noise of 4-7 levels per standard deviation).
A PReLU commutes with a positive per-channel scale (``prelu(x / s) = prelu(x) / s``), so the producer
convolution's output channel ``i`` can be divided by ``s_i`` and the consumer's input channel multiplied by it
without changing the float function (cross-layer equalization, Nagel et al. 2019, here driven by measured
activation ranges). Producer and depthwise consumers keep per-channel weight scales, so only a dense consumer's
weights see the spread.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16,
          schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64}
SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RELU", "PAD", "MAX_POOL_2D", "RESHAPE",
                 "CONCATENATION", "RESIZE_BILINEAR", "DEQUANTIZE", "ABS", "SUB", "MUL")
PRELU_STYLES = ("signed", "relu_split", "negative_part", "prelu")


@keras.utils.register_keras_serializable(package="edgeface")
class ChannelPad(keras.layers.Layer):
    """Zero-pad the channel axis (BlazeFace's residual channel expansion)."""

    def __init__(self, pad: int, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, x):
        return tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, self.pad]])

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


def op_names(model) -> list[str]:
    """Builtin op names of every operator of subgraph 0 of a flatbuffer ``ModelT``."""
    out = []
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        out.append(_OP_NAMES[max(code.builtinCode, code.deprecatedBuiltinCode)])
    return out


def _const(model, tensor) -> np.ndarray | None:
    buf = model.buffers[tensor.buffer].data
    if buf is None or len(buf) == 0:
        return None
    dtype = _TYPES.get(tensor.type)
    if dtype is None:
        raise ValueError(f"constant tensor {tensor.name.decode()} has unsupported type {tensor.type}")
    return np.frombuffer(np.asarray(buf, dtype=np.uint8).tobytes(), dtype=dtype).reshape(tensor.shape)


def _activation(layer_out, fused: int, name: str):
    if fused == schema.ActivationFunctionType.NONE:
        return layer_out
    if fused == schema.ActivationFunctionType.RELU:
        return keras.layers.ReLU(name=name + "_relu")(layer_out)
    if fused == schema.ActivationFunctionType.RELU6:
        return keras.layers.ReLU(6.0, name=name + "_relu6")(layer_out)
    raise ValueError(f"{name}: unsupported fused activation {fused}")


def prelu_block(x, slopes: np.ndarray, name: str, style: str = "relu_split", signs_flipped: bool = False):
    """``PReLU(x)`` with per-channel ``slopes`` (negative side ``slopes * x``) as Keras layers (see module doc).

    ``signs_flipped`` (``"signed"`` only): the channels with a slope > 1 arrive negated and leave negated (the
    producer and consumer carry the sign; :func:`keras_from_tflite` arranges it)."""
    slopes = np.asarray(slopes, np.float32).reshape(-1)
    if style == "prelu":
        layer = keras.layers.PReLU(shared_axes=[1, 2], name=name + "_prelu")
        y = layer(x)
        layer.set_weights([slopes.reshape(1, 1, -1)])
        return y
    if style not in PRELU_STYLES:
        raise ValueError(f"unknown PReLU style {style!r}; choose one of {PRELU_STYLES}")
    channels = int(x.shape[-1])
    if slopes.size != channels:
        raise ValueError(f"{name}: {slopes.size} slopes for {channels} channels")
    if style == "signed":
        if np.any(slopes > 1) and not signs_flipped:
            raise ValueError(f"{name}: the 'signed' PReLU needs the producer's sign flipped where a slope is > 1 "
                             f"({int(np.sum(slopes > 1))} channels): rebuild with keras_from_tflite")
        part = _depthwise_1x1(x, slopes - 1.0, name + "_negpart", activation="relu")
        return keras.layers.Add(name=name + "_add")([x, part])
    if style == "negative_part":
        return _negative_part(x, slopes, name)
    # relu(x) as a 1x1 depthwise with weight 1 and a fused ReLU: XNNPACK has no int8 kernel for a standalone
    # RELU op (33 of them cut the int8 graph into 34 delegate pieces: 3x slower than float)
    pos_layer = keras.layers.DepthwiseConv2D(1, use_bias=False, activation="relu", name=name + "_pos")
    pos = pos_layer(x)
    pos_layer.set_weights([np.ones((1, 1, channels, 1), np.float32)])
    neg_layer = keras.layers.DepthwiseConv2D(1, use_bias=False, activation="relu", name=name + "_negrelu")
    neg = neg_layer(x)
    neg_layer.set_weights([-np.ones((1, 1, channels, 1), np.float32)])
    scale_layer = keras.layers.DepthwiseConv2D(1, use_bias=False, name=name + "_slope")
    scaled = scale_layer(neg)
    scale_layer.set_weights([-slopes.reshape(1, 1, channels, 1)])
    return keras.layers.Add(name=name + "_add")([pos, scaled])


def _depthwise_1x1(x, weights: np.ndarray, name: str, activation=None):
    layer = keras.layers.DepthwiseConv2D(1, use_bias=False, activation=activation, name=name)
    y = layer(x)
    layer.set_weights([np.asarray(weights, np.float32).reshape(1, 1, -1, 1)])
    return y


def _negative_part(x, slopes: np.ndarray, name: str):
    """``prelu(x) = x + (1 - a) * relu(-x)``; with every ``1 - a >= 0`` the scale moves inside the ReLU."""
    c = 1.0 - slopes
    if np.all(c >= 0):
        part = _depthwise_1x1(x, -c, name + "_negpart", activation="relu")
    else:
        neg = _depthwise_1x1(x, -np.ones_like(c), name + "_negrelu", activation="relu")
        part = _depthwise_1x1(neg, c, name + "_negpart")
    return keras.layers.Add(name=name + "_add")([x, part])


def _prelu_patterns(sg, names: list[str], consts: dict) -> dict[int, tuple[int, np.ndarray, int]]:
    """``{index of the RELU op: (input tensor, slopes, output tensor)}`` for every five-op PReLU pattern
    ``RELU(x), ABS(x), SUB(x, abs), MUL(m, sub), ADD(relu, mul)``."""
    found = {}
    ops = sg.operators
    for i in range(len(names) - 4):
        if names[i:i + 5] != ["RELU", "ABS", "SUB", "MUL", "ADD"]:
            continue
        relu, ab, sub, mul, add = ops[i:i + 5]
        x = int(relu.inputs[0])
        m_in = [int(t) for t in mul.inputs]
        const = [t for t in m_in if t in consts]
        if (int(ab.inputs[0]) != x or [int(t) for t in sub.inputs] != [x, int(ab.outputs[0])]
                or len(const) != 1 or int(sub.outputs[0]) not in m_in
                or sorted(int(t) for t in add.inputs) != sorted([int(relu.outputs[0]), int(mul.outputs[0])])):
            continue
        found[i] = (x, 2.0 * consts[const[0]].astype(np.float32), int(add.outputs[0]))
    return found


def _prelu_neighbours(sg, names: list[str], x: int, out: int) -> tuple[int, int] | None:
    """(producer op, consumer op) of a PReLU pattern when both are plain convolutions that equalization can
    rescale: the producer a CONV_2D / DEPTHWISE_CONV_2D without a fused activation whose output feeds only the
    pattern, the one consumer a CONV_2D / DEPTHWISE_CONV_2D (multiplier 1) reading the PReLU output first."""
    convs = ("CONV_2D", "DEPTHWISE_CONV_2D")
    producers = [k for k, op in enumerate(sg.operators) if x in [int(t) for t in op.outputs]]
    consumers = [k for k, op in enumerate(sg.operators) if out in [int(t) for t in op.inputs]]
    if len(producers) != 1 or len(consumers) != 1:
        return None
    p, c = producers[0], consumers[0]
    popt, copt = sg.operators[p].builtinOptions, sg.operators[c].builtinOptions
    if names[p] not in convs or names[c] not in convs or int(sg.operators[c].inputs[0]) != out:
        return None
    if popt.fusedActivationFunction != schema.ActivationFunctionType.NONE:
        return None
    if any(names[c] == "DEPTHWISE_CONV_2D" and o.depthMultiplier != 1 for o in (copt,)):
        return None
    if names[p] == "DEPTHWISE_CONV_2D" and popt.depthMultiplier != 1:
        return None
    return p, c


def _scale_channels(sg, names: list[str], consts: dict, pair: tuple[int, int], divisor: np.ndarray) -> None:
    """Divide the producer convolution's output channels (weights and bias) by ``divisor`` and multiply the
    consumer's input channels by it, in ``consts`` in place. A PReLU between them commutes with a positive
    divisor (equalization); a divisor of -1 is undone by the consumer, which is how the ``"signed"`` style
    flips a channel."""
    p, c = (sg.operators[k] for k in pair)
    pw, cw = int(p.inputs[1]), int(c.inputs[1])
    # producer weights: CONV_2D [out, kh, kw, in], DEPTHWISE_CONV_2D [1, kh, kw, C]
    consts[pw] = consts[pw] / (divisor[:, None, None, None] if names[pair[0]] == "CONV_2D" else divisor)
    if len(p.inputs) > 2 and int(p.inputs[2]) >= 0:
        consts[int(p.inputs[2])] = consts[int(p.inputs[2])] / divisor
    consts[cw] = consts[cw] * divisor  # the channel axis is last for both kinds of consumer


def _equalize(sg, names: list[str], consts: dict, patterns: dict, channel_scales: dict) -> None:
    """Divide each PReLU's producer output channels by ``channel_scales[name of its input tensor]`` and multiply
    the consumer's input channels by it (in ``consts``, in place; the float function is unchanged)."""
    for x, _slopes, out in patterns.values():
        scale = channel_scales.get(sg.tensors[x].name.decode())
        if scale is None:
            continue
        pair = _prelu_neighbours(sg, names, x, out)
        if pair is None:
            raise ValueError(f"PReLU on {sg.tensors[x].name.decode()}: its producer/consumer cannot be rescaled")
        scale = np.asarray(scale, np.float32).reshape(-1)
        if scale.size != int(sg.tensors[x].shape[-1]) or not np.all(scale > 0):
            raise ValueError(f"{sg.tensors[x].name.decode()}: need {int(sg.tensors[x].shape[-1])} positive scales")
        _scale_channels(sg, names, consts, pair, scale)


def _flip_signs(sg, names: list[str], consts: dict, patterns: dict) -> None:
    """For the ``"signed"`` style: negate each PReLU's producer output channels (and the consumer's input
    channels) where the slope is > 1, in ``consts`` in place (the float function is unchanged)."""
    for x, slopes, out in patterns.values():
        flip = slopes > 1
        if not np.any(flip):
            continue
        pair = _prelu_neighbours(sg, names, x, out)
        if pair is None:
            raise ValueError(f"PReLU on {sg.tensors[x].name.decode()}: slopes > 1 need a producer and consumer "
                             f"convolution to flip signs in; use prelu='relu_split'")
        _scale_channels(sg, names, consts, pair, np.where(flip, -1.0, 1.0).astype(np.float32))


def prelu_channel_scales(path: str | os.PathLike, inputs: np.ndarray, alpha: float = 1.0,
                         floor: float = 0.01) -> dict[str, np.ndarray]:
    """Per-channel equalization scales for every rescalable PReLU of the float TFLite model at ``path``.

    ``inputs``: normalized float samples (N, H, W, C), e.g. the calibration crops. Channel ``i`` of a PReLU
    input with largest magnitude ``m_i`` gets ``s_i = (m_i / g) ** alpha`` (``g``: the geometric mean over the
    channels; ``m_i`` floored at ``floor`` x the median, so a dead channel is not blown up): ``alpha = 1``
    gives every channel the same range, ``0`` changes nothing.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    from ai_edge_litert.interpreter import Interpreter

    path = Path(path)
    model = flatbuffer_utils.read_model(str(path))
    sg = model.subgraphs[0]
    names = op_names(model)
    consts = {i: v for i, t in enumerate(sg.tensors) if (v := _const(model, t)) is not None}
    patterns = _prelu_patterns(sg, names, consts)
    wanted = {x: sg.tensors[x].name.decode() for x, _s, out in patterns.values()
              if _prelu_neighbours(sg, names, x, out) is not None}
    import warnings

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": reading them is the point here
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(str(path), num_threads=2, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    batch = int(detail["shape"][0])
    samples = np.asarray(inputs, np.float32)
    peak = {x: np.zeros(int(sg.tensors[x].shape[-1]), np.float32) for x in wanted}
    for start in range(0, len(samples) - batch + 1, batch):
        interpreter.set_tensor(detail["index"], samples[start:start + batch])
        interpreter.invoke()
        for x in wanted:
            value = interpreter.get_tensor(x)
            peak[x] = np.maximum(peak[x], np.abs(value).reshape(-1, value.shape[-1]).max(axis=0))
    out = {}
    for x, name in wanted.items():
        m = np.maximum(peak[x], floor * float(np.median(peak[x])) + 1e-12)
        out[name] = (m / np.exp(np.mean(np.log(m)))) ** alpha
    return out


def keras_from_tflite(path: str | os.PathLike, name: str | None = None, prelu: str = "relu_split",
                      channel_scales: dict | None = None) -> keras.Model:
    """Translate the float TFLite model at ``path`` into an equivalent tf_keras model (batch 1).

    Output names and order follow the TFLite model's outputs. ``prelu`` chooses how a PReLU pattern is
    rebuilt (see the module doc); ``ABS``/``SUB``/``MUL`` are supported only inside that pattern.
    ``channel_scales`` (from :func:`prelu_channel_scales`) equalizes the channels around each PReLU.
    """
    if prelu not in PRELU_STYLES:
        raise ValueError(f"unknown PReLU style {prelu!r}; choose one of {PRELU_STYLES}")
    path = Path(path)
    model = flatbuffer_utils.read_model(str(path))
    if len(model.subgraphs) != 1:
        raise ValueError(f"{path}: expected one subgraph, found {len(model.subgraphs)}")
    sg = model.subgraphs[0]
    tensors = sg.tensors
    names = op_names(model)
    unsupported = sorted(set(names) - set(SUPPORTED_OPS))
    if unsupported:
        raise ValueError(f"{path}: cannot rebuild ops {unsupported} (supported: {', '.join(SUPPORTED_OPS)})")
    consts: dict[int, np.ndarray] = {}
    for i, t in enumerate(tensors):
        value = _const(model, t)
        if value is not None:
            consts[i] = value.astype(np.float32) if value.dtype == np.float16 else value
    (in_idx,) = sg.inputs
    in_shape = [int(d) for d in tensors[in_idx].shape]
    inp = keras.Input(shape=in_shape[1:], batch_size=1, name=tensors[in_idx].name.decode())
    values = {in_idx: inp}
    used_names: set[str] = set()
    for op, kind in zip(sg.operators, names):  # fp16 weights behind DEQUANTIZE, widened once up front
        if kind == "DEQUANTIZE":
            consts[int(op.outputs[0])] = consts[int(op.inputs[0])].astype(np.float32)
    patterns = _prelu_patterns(sg, names, consts)
    if channel_scales:
        _equalize(sg, names, consts, patterns, channel_scales)
    if prelu == "signed":
        _flip_signs(sg, names, consts, patterns)
    skip: set[int] = set()

    def uniq(raw: bytes) -> str:
        n = raw.decode().replace("/", "_").replace(":", "_").replace(";", "_")
        base, k = n, 1
        while n in used_names:
            n, k = f"{base}_{k}", k + 1
        used_names.add(n)
        return n

    for k, (op, kind) in enumerate(zip(sg.operators, names)):
        if k in skip:
            continue
        if k in patterns:
            x_idx, slopes, out_idx = patterns[k]
            values[out_idx] = prelu_block(values[x_idx], slopes, uniq(tensors[out_idx].name), prelu,
                                          signs_flipped=prelu == "signed")
            skip.update(range(k + 1, k + 5))
            continue
        ins = [int(i) for i in op.inputs]
        out = int(op.outputs[0])
        opt = op.builtinOptions
        lname = uniq(tensors[out].name)
        if kind == "DEQUANTIZE":
            continue
        x = values.get(ins[0])
        if kind == "CONV_2D":
            w = consts[ins[1]]  # [out, kh, kw, in]
            b = consts[ins[2]] if len(ins) > 2 and ins[2] >= 0 else None
            layer = keras.layers.Conv2D(w.shape[0], w.shape[1:3], strides=(opt.strideH, opt.strideW),
                                        padding="same" if opt.padding == schema.Padding.SAME else "valid",
                                        use_bias=b is not None, name=lname)
            y = layer(x)
            layer.set_weights([w.transpose(1, 2, 3, 0)] + ([b] if b is not None else []))
            y = _activation(y, opt.fusedActivationFunction, lname)
        elif kind == "DEPTHWISE_CONV_2D":
            w = consts[ins[1]]  # [1, kh, kw, C*mult]
            b = consts[ins[2]] if len(ins) > 2 and ins[2] >= 0 else None
            layer = keras.layers.DepthwiseConv2D(w.shape[1:3], strides=(opt.strideH, opt.strideW),
                                                 depth_multiplier=opt.depthMultiplier,
                                                 padding="same" if opt.padding == schema.Padding.SAME else "valid",
                                                 use_bias=b is not None, name=lname)
            y = layer(x)
            cin = x.shape[-1]
            layer.set_weights([w.reshape(w.shape[1], w.shape[2], cin, opt.depthMultiplier)]
                              + ([b] if b is not None else []))
            y = _activation(y, opt.fusedActivationFunction, lname)
        elif kind == "ADD":
            y = keras.layers.Add(name=lname)([values[ins[0]], values[ins[1]]])
            y = _activation(y, opt.fusedActivationFunction, lname)
        elif kind == "RELU":
            y = keras.layers.ReLU(name=lname)(x)
        elif kind == "PAD":
            pads = consts[ins[1]].reshape(-1, 2)
            if np.any(pads[:3]) or pads[3, 0] != 0:
                raise ValueError(f"{path}: PAD {lname} pads more than the channel tail: {pads.tolist()}")
            y = ChannelPad(int(pads[3, 1]), name=lname)(x)
        elif kind == "MAX_POOL_2D":
            y = keras.layers.MaxPool2D((opt.filterHeight, opt.filterWidth), (opt.strideH, opt.strideW),
                                       padding="same" if opt.padding == schema.Padding.SAME else "valid",
                                       name=lname)(x)
        elif kind == "RESHAPE":
            target = [int(d) for d in tensors[out].shape]
            y = keras.layers.Reshape(target[1:], name=lname)(x)
        elif kind == "CONCATENATION":
            axis = opt.axis
            y = keras.layers.Concatenate(axis=axis, name=lname)([values[i] for i in ins])
        elif kind in ("ABS", "SUB", "MUL"):
            raise ValueError(f"{path}: {kind} {lname} outside a PReLU pattern is not supported")
        elif kind == "RESIZE_BILINEAR":
            if opt.alignCorners or not opt.halfPixelCenters:
                raise ValueError(f"{path}: RESIZE_BILINEAR {lname} needs half_pixel_centers=True")
            size = consts[ins[1]]
            factor = int(size[0]) // int(x.shape[1])
            y = keras.layers.UpSampling2D(factor, interpolation="bilinear", name=lname)(x)
        else:  # pragma: no cover - guarded above
            raise ValueError(kind)
        values[out] = y
    outputs = [values[int(i)] for i in sg.outputs]
    return keras.Model(inp, outputs, name=name or path.stem)
