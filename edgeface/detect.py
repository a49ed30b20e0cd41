"""Face detection with an int8 or float BlazeFace model described by its manifest."""
from __future__ import annotations

import logging
import math
import os
from typing import NamedTuple, Optional

import numpy as np

from . import blazeface, preprocess, runtime
from .manifest import ManifestError, read_manifest

log = logging.getLogger(__name__)


class Face(NamedTuple):
    """A detected face in original-image pixels.

    ``box`` is [x1, y1, x2, y2]; ``keypoints`` is (6, 2): right eye, left eye, nose tip, mouth, right ear,
    left ear (the subject's sides).
    """
    box: np.ndarray
    score: float
    keypoints: np.ndarray

    def to_json(self) -> dict:
        return {"box": [round(float(v), 1) for v in self.box], "score": round(float(self.score), 4),
                "keypoints": [[round(float(x), 1), round(float(y), 1)] for x, y in self.keypoints]}


def detector_input(image: np.ndarray, size: int, mean: float, std: float):
    """Letterbox an RGB image to the detector's square input and normalize it: ``(tensor, Letterbox)``."""
    canvas, lb = preprocess.letterbox(image, size)
    return preprocess.normalize(canvas, mean, std)[None], lb


def tile_windows(height: int, width: int, grid: int, overlap: float = 0.25) -> list[tuple[int, int, int]]:
    """Square tiles ``(x0, y0, side)`` covering the image: about ``grid`` tiles along the longer side,
    overlapping by ``overlap`` so a face on a seam is whole in some tile."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    side = int(min(max(height, width) / grid * (1 + overlap), min(height, width)))
    side = max(side, 1)

    def starts(n: int) -> list[int]:
        if n <= side:
            return [0]
        count = math.ceil((n - side) / (side * (1 - overlap))) + 1
        return sorted({round(v) for v in np.linspace(0, n - side, count)})

    return [(x, y, side) for y in starts(height) for x in starts(width)]


def faces_from_outputs(raw_boxes: np.ndarray, raw_logits: np.ndarray, spec: blazeface.ModelSpec,
                       lb: preprocess.Letterbox, min_score: float, iou_threshold: float,
                       max_faces: Optional[int] = None) -> list[Face]:
    """Decode raw detector outputs into :class:`Face` s in original-image pixels."""
    faces = []
    for det in blazeface.postprocess(raw_boxes, raw_logits, spec, min_score, iou_threshold, max_faces):
        box = preprocess.unletterbox(det.box.reshape(2, 2), lb).reshape(4)
        kps = preprocess.unletterbox(det.keypoints, lb)
        if box[2] - box[0] <= 1 or box[3] - box[1] <= 1:
            continue
        faces.append(Face(box, det.score, kps))
    return faces


class FaceDetector:
    """BlazeFace detector (short range 128 px or full range 192 px, int8 or float).

    Args:
      model_path: a ``.tflite`` with its manifest beside it (built by ``edgeface build``).
      min_score: minimum detection score in (0, 1); lower finds more small / turned faces and more false
        detections. Defaults to the manifest's value (MediaPipe's: 0.5 short range, 0.6 full range).
      iou_threshold: boxes overlapping more than this are merged (weighted NMS).
      tiles: 1 runs the model once on the letterboxed frame. N > 1 also runs it on overlapping square tiles,
        about N along the longer side, and merges everything: small faces in large frames (a group photo,
        a wide door camera) become large enough for the short-range model, at N*N+1 times the cost.
      threads, accelerator, runtime: see :func:`edgeface.runtime.make_interpreter`.
    """

    def __init__(self, model_path: str | os.PathLike, min_score: Optional[float] = None,
                 iou_threshold: float = 0.3, threads: Optional[int] = None,
                 accelerator: Optional[str] = None, runtime_name: Optional[str] = None, tiles: int = 1):
        if tiles < 1:
            raise ValueError(f"tiles must be >= 1, got {tiles}")
        self.tiles = int(tiles)
        self.manifest = read_manifest(model_path)
        if self.manifest["role"] != "detector":
            raise ManifestError(f"{model_path}: is a {self.manifest['role']}, not a detector")
        section = self.manifest["detector"]
        self.spec = blazeface.spec_for(section["spec"])
        self.min_score = float(section["min_score"] if min_score is None else min_score)
        if not 0.0 < self.min_score < 1.0:
            raise ValueError(f"min_score must be in (0, 1), got {self.min_score}")
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        self.iou_threshold = iou_threshold
        self.interpreter = runtime.make_interpreter(model_path, threads, accelerator, runtime_name)
        runtime.check_input(self.interpreter, self.manifest, model_path)
        outputs = self.manifest["outputs"]
        self._boxes = runtime.output_index(self.interpreter, outputs["boxes"])
        self._scores = runtime.output_index(self.interpreter, outputs["scores"])
        self.mean, self.std = self.manifest["input"]["mean"], self.manifest["input"]["std"]

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def raw(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on a normalized input tensor; returns dequantized (boxes, logits)."""
        runtime.set_input(self.interpreter, tensor)
        self.interpreter.invoke()
        return (runtime.get_output(self.interpreter, self._boxes),
                runtime.get_output(self.interpreter, self._scores))

    def detect(self, image: np.ndarray, max_faces: Optional[int] = None) -> list[Face]:
        """Find faces in an RGB ``uint8`` image; sorted by score, best first."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        faces = self._detect_once(image)
        if self.tiles > 1:
            h, w = image.shape[:2]
            for x0, y0, side in tile_windows(h, w, self.tiles):
                offset = np.array([x0, y0], np.float32)
                for f in self._detect_once(image[y0:y0 + side, x0:x0 + side]):
                    faces.append(Face(f.box + np.tile(offset, 2), f.score, f.keypoints + offset))
            faces = merge_faces(faces, self.iou_threshold)
        return faces[:max_faces] if max_faces else faces

    def _detect_once(self, image: np.ndarray) -> list[Face]:
        tensor, lb = detector_input(image, self.spec.input_size, self.mean, self.std)
        boxes, logits = self.raw(tensor)
        return faces_from_outputs(boxes, logits, self.spec, lb, self.min_score, self.iou_threshold)


def merge_faces(faces: list[Face], iou_threshold: float) -> list[Face]:
    """Weighted NMS over faces found in several passes (tiles), in pixel coordinates."""
    if not faces:
        return []
    data = np.stack([np.concatenate([f.box, f.keypoints.reshape(-1)]) for f in faces]).astype(np.float32)
    scores = np.array([f.score for f in faces], np.float32)
    return [Face(d.box, d.score, d.keypoints)
            for d in blazeface.weighted_nms(data, scores, None, iou_threshold)]
