"""Post-processing for MediaPipe BlazeFace face detectors (pure numpy).

Turns the two raw outputs of ``face_detection_short_range.tflite`` (128x128
input, 896 anchors) or ``face_detection_full_range.tflite`` (192x192 input,
2304 anchors) into a list of :class:`Detection`: SSD anchors (MediaPipe
``SsdAnchorsCalculator``), box/keypoint decoding
(``TensorsToDetectionsCalculator``), clipped sigmoid scores and weighted
non-maximum suppression (``NonMaxSuppressionCalculator``, overlap type
``WEIGHTED``).

All coordinates are normalized to [0, 1] of the model input. Keypoint order
(subject's side): right eye, left eye, nose tip, mouth, right ear tragion,
left ear tragion.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

NUM_COORDS = 16
NUM_KEYPOINTS = 6
RAW_SCORE_LIMIT = 100.0  # MediaPipe's score_clipping_thresh
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth",
                  "right_ear_tragion", "left_ear_tragion")


class ModelSpec(NamedTuple):
    """Static description of one BlazeFace model and its anchor options."""
    name: str
    input_size: int                # square input, also the x/y/w/h scale
    num_anchors: int
    strides: tuple[int, ...]       # one per SSD layer (num_layers = len)
    anchor_offset: float = 0.5
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0
    min_score: float = 0.5         # MediaPipe min_score_thresh
    model_file: str = ""


SHORT_RANGE = ModelSpec("short_range", 128, 896, (8, 16, 16, 16), 0.5, (1.0,),
                        1.0, 0.5, "face_detection_short_range.tflite")
FULL_RANGE = ModelSpec("full_range", 192, 2304, (4,), 0.5, (1.0,),
                       0.0, 0.6, "face_detection_full_range.tflite")
_SPECS = (SHORT_RANGE, FULL_RANGE)


class Detection(NamedTuple):
    """One face: ``box`` [x1, y1, x2, y2], ``score`` in (0, 1], ``keypoints`` (6, 2) x, y."""
    box: np.ndarray
    score: float
    keypoints: np.ndarray


def spec_for(name_or_input_size: str | int) -> ModelSpec:
    """Return the spec for a model name ("short_range", "full", a .tflite file name) or input size."""
    key = name_or_input_size
    for spec in _SPECS:
        if isinstance(key, str):
            k = key.lower().rsplit("/", 1)[-1].replace("-", "_")
            if k in (spec.name, spec.name.split("_")[0], spec.model_file):
                return spec
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if int(key) == spec.input_size:
                return spec
    raise ValueError(f"name_or_input_size: unknown BlazeFace model {key!r}; "
                     f"expected one of {[s.name for s in _SPECS]} or {[s.input_size for s in _SPECS]}")


@lru_cache(maxsize=8)
def _anchors_cached(spec: ModelSpec) -> np.ndarray:
    blocks = []
    layer = 0
    while layer < len(spec.strides):
        # consecutive layers with the same stride share one feature map
        per_cell = 0
        last = layer
        while last < len(spec.strides) and spec.strides[last] == spec.strides[layer]:
            per_cell += len(spec.aspect_ratios) + (spec.interpolated_scale_aspect_ratio > 0)
            last += 1
        fm = int(np.ceil(spec.input_size / spec.strides[layer]))
        centers = (np.arange(fm, dtype=np.float64) + spec.anchor_offset) / fm
        cy, cx = np.meshgrid(centers, centers, indexing="ij")  # row-major: y outer, x inner
        xy = np.repeat(np.stack([cx.ravel(), cy.ravel()], axis=1), per_cell, axis=0)
        blocks.append(np.concatenate([xy, np.ones_like(xy)], axis=1))  # fixed_anchor_size
        layer = last
    anchors = np.concatenate(blocks).astype(np.float32)
    anchors.setflags(write=False)
    return anchors


def ssd_anchors(spec: ModelSpec) -> np.ndarray:
    """Return the (num_anchors, 4) float32 anchors [cx, cy, w, h] (w = h = 1, fixed size)."""
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"spec: expected a ModelSpec, got {type(spec).__name__}")
    if not spec.strides or spec.input_size <= 0 or min(spec.strides) <= 0:
        raise ValueError(f"spec: invalid input_size/strides in {spec!r}")
    anchors = _anchors_cached(spec)
    if len(anchors) != spec.num_anchors:
        raise ValueError(f"spec: options give {len(anchors)} anchors, num_anchors says {spec.num_anchors}")
    return anchors


def decode(raw_boxes: np.ndarray, anchors: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Decode regressors (N, 16) to normalized (N, 16): [x1, y1, x2, y2, kx0, ky0, ..., kx5, ky5]."""
    raw = np.asarray(raw_boxes, dtype=np.float32)
    anchors = np.asarray(anchors, dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != NUM_COORDS:
        raise ValueError(f"raw_boxes: expected shape (N, {NUM_COORDS}), got {raw.shape}")
    if anchors.shape != (raw.shape[0], 4):
        raise ValueError(f"anchors: expected shape ({raw.shape[0]}, 4), got {anchors.shape}")
    ax, ay, aw, ah = (anchors[:, i:i + 1] for i in range(4))
    scaled = raw / np.float32(spec.input_size)
    cx = scaled[:, 0:1] * aw + ax
    cy = scaled[:, 1:2] * ah + ay
    half_w = scaled[:, 2:3] * aw / 2
    half_h = scaled[:, 3:4] * ah / 2
    kx = scaled[:, 4::2] * aw + ax
    ky = scaled[:, 5::2] * ah + ay
    keypoints = np.stack([kx, ky], axis=2).reshape(len(raw), 2 * kx.shape[1])
    return np.concatenate([cx - half_w, cy - half_h, cx + half_w, cy + half_h, keypoints], axis=1)


def scores_from_logits(logits: np.ndarray) -> np.ndarray:
    """Return sigmoid(clip(logits, -100, 100)) as a flat (N,) float32 array, without overflow."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if np.isnan(x).any():
        raise ValueError("logits: contains NaN")
    x = np.clip(x, -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one [x1, y1, x2, y2] box with (M, 4) boxes; 0 where undefined."""
    box = np.asarray(box, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    if box.shape != (4,):
        raise ValueError(f"box: expected shape (4,), got {box.shape}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected shape (M, 4), got {boxes.shape}")

    def area(b: np.ndarray) -> np.ndarray:
        return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)

    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    union = area(box) + area(boxes) - inter
    valid = (union > 0) & np.isfinite(union) & np.isfinite(inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=valid)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) :func:`iou` of (M, 4) and (K, 4) float64 boxes, without :func:`iou`'s checks."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    valid = (union > 0) & np.isfinite(union) & np.isfinite(inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=valid)


#: Up to this many candidates, weighted NMS computes every pair's IoU at once (a 256 x 256 matrix is 0.5 MB).
_PAIRWISE_MAX = 256


def _check_nms_options(iou_threshold: float, max_faces: int | None) -> None:
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold: must be in [0, 1], got {iou_threshold}")
    if max_faces is not None and (not isinstance(max_faces, (int, np.integer)) or max_faces < 1):
        raise ValueError(f"max_faces: must be None or a positive int, got {max_faces!r}")


def weighted_nms(decoded: np.ndarray, scores: np.ndarray, min_score: float | None,
                 iou_threshold: float = 0.3, max_faces: int | None = None) -> list[Detection]:
    """MediaPipe weighted NMS; returns detections sorted by score, descending.

    Candidates with score < ``min_score`` or a non-finite / empty box are dropped.
    The best remaining candidate and all others with IoU > ``iou_threshold`` form
    a cluster; its output is the score-weighted mean of their boxes and keypoints,
    with the best candidate's score.
    """
    data = np.asarray(decoded, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if data.ndim != 2 or data.shape[1] < 4 or data.shape[1] % 2:
        raise ValueError(f"decoded: expected shape (N, 4 + 2K), got {data.shape}")
    if scores.shape != (len(data),):
        raise ValueError(f"scores: expected shape ({len(data)},), got {scores.shape}")
    _check_nms_options(iou_threshold, max_faces)
    return _weighted_nms(data, scores, min_score, iou_threshold, max_faces)


def _weighted_nms(data: np.ndarray, scores: np.ndarray, min_score: float | None, iou_threshold: float,
                  max_faces: int | None) -> list[Detection]:
    """:func:`weighted_nms` on checked float32 inputs."""
    if not len(data):
        return []
    keep = np.isfinite(data).all(axis=1) & np.isfinite(scores)
    keep &= (data[:, 2] > data[:, 0]) & (data[:, 3] > data[:, 1])
    if min_score is not None:
        keep &= scores >= min_score
    idx = np.flatnonzero(keep)
    order = idx[np.argsort(-scores[idx], kind="stable")]
    boxes = data[order, :4].astype(np.float64)
    pairs = _iou_matrix(boxes, boxes) if len(order) <= _PAIRWISE_MAX else None
    remaining = np.arange(len(order))
    out: list[Detection] = []
    while remaining.size and (max_faces is None or len(out) < max_faces):
        first = remaining[0]
        row = pairs[first, remaining] if pairs is not None else _iou_matrix(boxes[first:first + 1], boxes[remaining])[0]
        in_cluster = row > iou_threshold
        in_cluster[0] = True
        cluster = order[remaining[in_cluster]]
        top = cluster[0]
        weights = scores[cluster].astype(np.float64)
        total = weights.sum()
        merged = (data[cluster] * weights[:, None]).sum(axis=0) / total if total > 0 else data[top]
        merged = merged.astype(np.float32)
        out.append(Detection(merged[:4], float(scores[top]), merged[4:].reshape(-1, 2)))
        remaining = remaining[~in_cluster]
    return out


def _drop_batch(array: np.ndarray, name: str, trailing: Sequence[int]) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == len(trailing) + 2:
        if a.shape[0] != 1:
            raise ValueError(f"{name}: batch size must be 1, got shape {a.shape}")
        a = a[0]
    if a.ndim != len(trailing) + 1 or tuple(a.shape[1:]) != tuple(trailing):
        raise ValueError(f"{name}: expected shape ([1,] N, {', '.join(map(str, trailing))}), got {a.shape}")
    return a


def postprocess(raw_boxes: np.ndarray, raw_logits: np.ndarray, spec: ModelSpec,
                min_score: float | None = None, iou_threshold: float = 0.3,
                max_faces: int | None = None) -> list[Detection]:
    """Raw model outputs ([1,] N, 16) and ([1,] N, 1) -> detections (``min_score`` defaults to the spec's)."""
    boxes = _drop_batch(raw_boxes, "raw_boxes", (NUM_COORDS,))
    logits = _drop_batch(raw_logits, "raw_logits", (1,))
    if len(boxes) != spec.num_anchors or len(logits) != spec.num_anchors:
        raise ValueError(f"raw_boxes/raw_logits: {spec.name} needs {spec.num_anchors} anchors, "
                         f"got {len(boxes)} boxes and {len(logits)} logits")
    _check_nms_options(iou_threshold, max_faces)
    threshold = spec.min_score if min_score is None else min_score
    logits = logits.reshape(-1)
    if np.isnan(logits).any():
        raise ValueError("raw_logits: contains NaN")
    rows = slice(None)
    if threshold is not None and 0.0 < threshold < 1.0:
        # only anchors scoring above the threshold can come out of the NMS (a handful of 896 / 2304): the
        # sigmoid is monotonic, so pick them by logit (a hair below the threshold's), score and decode just those
        rows = np.flatnonzero(logits >= np.log(threshold / (1.0 - threshold)) - 1e-3)
    scores = scores_from_logits(logits[rows])
    decoded = decode(boxes[rows], ssd_anchors(spec)[rows], spec)
    return _weighted_nms(decoded, scores, threshold, iou_threshold, max_faces)
