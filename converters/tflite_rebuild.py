"""Rebuild a small float TFLite model (such as MediaPipe BlazeFace) as a tf_keras functional model.

The TFLite converter cannot re-quantize a ``.tflite`` file, and pruning / QAT need Keras layers, so the
graph is translated op by op into standard Keras layers with the same weights. fp16 weights (stored behind
``DEQUANTIZE`` ops) are widened to fp32. Only the ops BlazeFace uses are supported; any other op raises a
``ValueError`` that names it.
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
                 "CONCATENATION", "RESIZE_BILINEAR", "DEQUANTIZE")


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


def keras_from_tflite(path: str | os.PathLike, name: str | None = None) -> keras.Model:
    """Translate the float TFLite model at ``path`` into an equivalent tf_keras model.

    Output names and order follow the TFLite model's outputs.
    """
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

    def uniq(raw: bytes) -> str:
        n = raw.decode().replace("/", "_").replace(":", "_").replace(";", "_")
        base, k = n, 1
        while n in used_names:
            n, k = f"{base}_{k}", k + 1
        used_names.add(n)
        return n

    for op, kind in zip(sg.operators, names):
        ins = [int(i) for i in op.inputs]
        out = int(op.outputs[0])
        opt = op.builtinOptions
        lname = uniq(tensors[out].name)
        if kind == "DEQUANTIZE":
            consts[out] = consts[ins[0]].astype(np.float32)
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
