"""Empirical bias correction of the int8 embedder (converters/bias_correction.py): the bias arithmetic on
synthetic numbers, and on the real MobileFaceNet (upstream weights, LFW crops) that it lowers the per-channel
mean error on held-out crops without changing anything else in the graph."""
from __future__ import annotations

import numpy as np
import pytest

from edgeface import preprocess

from conftest import LFW


# --------------------------------------------------------------------------- pure arithmetic
def test_bias_step_divides_the_mean_error_by_the_bias_scale_and_rounds():
    from edgeface.converters.bias_correction import apply_step, bias_step

    error = np.array([0.01, -0.0049, 0.0, 2e-4])
    scale = np.array([1e-3, 1e-3, 5e-4, 1e-4])
    np.testing.assert_array_equal(bias_step(error, scale), [10, -5, 0, 2])
    np.testing.assert_array_equal(bias_step(error, 1e-3), [10, -5, 0, 0])  # one scale for every channel
    bias = np.array([100, -7, 2**31 - 3, -2**31 + 1], np.int32)
    fixed = apply_step(bias, np.array([10, -5, -9, 4]))
    assert fixed.dtype == np.int32
    np.testing.assert_array_equal(fixed, [90, -2, 2**31 - 1, -2**31])  # saturates, never wraps


def test_bias_step_for_a_relu_output_scales_by_the_active_fraction():
    from edgeface.converters.bias_correction import BiasCorrectionError, bias_step

    error, scale = np.array([0.01, 0.01, 0.01]), np.full(3, 1e-3)
    # half the outputs positive: a bias change moves the post-ReLU mean by half of itself -> twice the step
    np.testing.assert_array_equal(bias_step(error, scale, active=np.array([0.5, 1.0, 0.01]), min_active=0.05),
                                  [20, 10, 0])  # a channel that is almost never on is left alone
    with pytest.raises(BiasCorrectionError, match="> 0"):
        bias_step(error, np.array([1e-3, 0.0, 1e-3]))


# --------------------------------------------------------------------------- the real model
def _crops(files, size=112):
    """Fixed central face crops of LFW deep-funneled images (the face sits near the middle of every one)."""
    return np.stack([preprocess.normalize(preprocess.crop_box(preprocess.read_image(f), [70, 75, 180, 185],
                                                              size, 0.15), 128.0, 128.0) for f in files])


@pytest.fixture(scope="module")
def twins(data_root):
    """(int8 tflite, float tflite, calibration samples, held-out samples): the equalized 'signed' MobileFaceNet
    as the build makes it, calibrated on DevTrain faces; held-out faces from DevTest people."""
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    from edgeface.calibration_data.builder import lfw_devtrain
    from edgeface.converters import embedder, heldout, quantize
    from edgeface.paths import cache_root

    calib = _crops(lfw_devtrain(LFW, 64, 7).files).astype(np.float32)
    held = _crops(heldout.devtest_images(LFW, 48)).astype(np.float32)
    weights = embedder.upstream_file("mobilefacenet", cache_root())
    raw = [np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8) for x in calib]
    model = embedder.keras_model("mobilefacenet", weights, crops=raw, exact_input=True)
    reference = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    quantize.configure_full_int8(converter, lambda: ([x[None]] for x in calib))
    return converter.convert(), reference, calib, held


@pytest.mark.slow
def test_bias_correction_lowers_the_held_out_mean_error_and_changes_only_biases(twins):
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    from edgeface.converters.bias_correction import correct_biases, match_ops, output_errors

    int8, reference, calib, held = twins
    report = []
    fixed = correct_biases(int8, reference, calib, report=report)
    before, after = output_errors(int8, reference, held), output_errors(fixed, reference, held)
    pairs = match_ops(flatbuffer_utils.convert_bytearray_to_object(bytearray(int8)),
                      flatbuffer_utils.convert_bytearray_to_object(bytearray(reference)))
    corrected = [k for k, p in enumerate(pairs) if not p.relu]
    assert len(report) == len(corrected) == 52  # MobileFaceNet: 85 biased ops, 33 of them the PReLUs' ReLU
    mean_before = np.mean([np.abs(before[k]).mean() for k in corrected])
    mean_after = np.mean([np.abs(after[k]).mean() for k in corrected])
    assert mean_after < 0.5 * mean_before, (mean_before, mean_after)  # measured: about a tenth on held-out
    # the embedding layer's own mean error drops too
    assert np.abs(after[-1]).mean() < np.abs(before[-1]).mean()
    # same interface, same ops, same tensors and scales: only int32 bias values differ
    a, b = Interpreter(model_content=int8), Interpreter(model_content=fixed)
    for get in ("get_input_details", "get_output_details"):
        for x, y in zip(getattr(a, get)(), getattr(b, get)()):
            assert (x["name"], tuple(x["shape"]), x["dtype"], x["quantization"]) == \
                   (y["name"], tuple(y["shape"]), y["dtype"], y["quantization"])
    ma = flatbuffer_utils.convert_bytearray_to_object(bytearray(int8))
    mb = flatbuffer_utils.convert_bytearray_to_object(bytearray(fixed))
    sa, sb = ma.subgraphs[0], mb.subgraphs[0]
    assert [op.opcodeIndex for op in sa.operators] == [op.opcodeIndex for op in sb.operators]
    changed = set()
    for opa, opb in zip(sa.operators, sb.operators):
        for ta, tb in zip(opa.inputs, opb.inputs):
            if ta < 0:
                continue
            xa, xb = sa.tensors[ta], sb.tensors[tb]
            da, db = ma.buffers[xa.buffer].data, mb.buffers[xb.buffer].data
            if da is None or not len(da) or np.array_equal(np.asarray(da), np.asarray(db)):
                continue
            assert xa.type == 2, "only int32 biases may change"
            changed.add(tb)
    assert len(changed) >= 40
    # the embedding itself: closer to the float model's on the held-out faces
    def embed(tflite, xs):
        it = Interpreter(model_content=tflite)
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        out = []
        for x in xs:
            if i["dtype"] != np.float32:
                s, z = i["quantization"]
                x = np.clip(np.round(x / s) + z, 0, 255).astype(i["dtype"])
            it.set_tensor(i["index"], x[None])
            it.invoke()
            out.append(it.get_tensor(o["index"])[0].astype(np.float64))
        e = np.array(out)
        assert e.dtype == np.float64 and e.shape == (len(xs), 192)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    ref = embed(reference, held)
    cos_before = (embed(int8, held) * ref).sum(1).mean()
    cos_after = (embed(fixed, held) * ref).sum(1).mean()
    assert cos_after > cos_before, (cos_before, cos_after)


@pytest.mark.slow
def test_bias_correction_refuses_a_float_model_that_is_not_the_int8_models_source(twins):
    from edgeface.converters import mobilefacenet
    from edgeface.converters.bias_correction import BiasCorrectionError, correct_biases
    from edgeface.errors import EdgefaceError
    from edgeface.paths import cache_root

    int8, _reference, calib, _held = twins
    upstream = mobilefacenet.upstream_file(cache_root()).read_bytes()  # PReLUs as five ops: another graph
    with pytest.raises(BiasCorrectionError, match="same ops") as err:
        correct_biases(int8, upstream, calib[:4])
    assert isinstance(err.value, EdgefaceError)
    with pytest.raises(BiasCorrectionError, match="fused ReLU|relu must be"):
        correct_biases(int8, _reference, calib[:4], relu="clip")


def test_build_refuses_bias_correction_where_it_is_not_available_before_any_work(tmp_path):
    """`edgeface build --bias-correction` with a FaceNet embedder: one line, exit 2, nothing written."""
    import subprocess
    import sys

    out = tmp_path / "models"
    r = subprocess.run([sys.executable, "-m", "edgeface.cli", "build", "--out", str(out), "--embedder",
                        "facenet-casia", "--bias-correction"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "bias correction is available" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "'facenet-casia'" in r.stderr and not out.exists()
    h = subprocess.run([sys.executable, "-m", "edgeface.cli", "build", "--help"], capture_output=True, text=True,
                       timeout=300)
    assert "--no-bias-correction" in h.stdout and "mobilefacenet" in h.stdout
