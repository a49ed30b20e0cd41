"""Five facial landmarks on a detected face: MTCNN's O-Net run on a square crop around the detector box.

BlazeFace gives six coarse keypoints (one mouth point, no mouth corners); ArcFace-family embedders are trained
on faces aligned by five points (both eyes, nose tip, both mouth corners). :class:`FaceLandmarker` takes the
square region a landmark manifest's ``landmarks.crop`` describes (a ``scale`` x box-width square, its centre
``shift_y`` box widths below the box centre), resizes it to the model's input with area averaging (zero
outside the image, as MTCNN pads), runs the model and returns the five points in image pixels.

Names follow :data:`edgeface.embed.KEYPOINT_NAMES`: the *subject's* sides, so ``right_eye`` is the eye on the
image's left.

>>> region = landmark_region(np.array([100., 50., 200., 150.]), scale=1.2, shift_y=-0.1)
>>> region
Region(x=90, y=30, side=120)
>>> decode_points(np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0, 1.0]), region)[[0, 4]].tolist()
[[150.0, 30.0], [150.0, 150.0]]
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

import numpy as np

from . import preprocess, runtime
from .manifest import ManifestError, check_model, manifest_path, read_manifest

#: The five points a landmark model returns, in this order (the subject's sides; MTCNN's order).
FIVE_POINT_NAMES = ("right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner")


class Region(NamedTuple):
    """A square of ``side`` pixels whose top-left pixel is (``x``, ``y``) in the image (may lie outside)."""
    x: int
    y: int
    side: int


class Landmarks(NamedTuple):
    """Five points (5, 2) in image pixels in :data:`FIVE_POINT_NAMES` order, and the model's face score."""
    points: np.ndarray
    score: float


def landmark_region(box, scale: float, shift_y: float) -> Region:
    """The square the landmark model sees for detector ``box`` [x1, y1, x2, y2]: side ``scale`` box widths,
    centred on the box centre moved down by ``shift_y`` box widths (negative: up), in whole pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w = x2 - x1
    if not (np.isfinite(w) and w > 0 and np.isfinite(y2 - y1)):
        raise ValueError(f"a face box needs x2 > x1, got {list(box)}")
    side = max(1, int(round(scale * w)))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0 + shift_y * w
    return Region(int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side)


def crop_region(image: np.ndarray, region: Region, size: int) -> np.ndarray:
    """``region`` of an RGB uint8 ``image`` resized to ``size`` x ``size`` (area averaging); pixels outside
    the image are black (MTCNN's padding)."""
    h, w = image.shape[:2]
    x, y, s = region
    if x >= 0 and y >= 0 and x + s <= w and y + s <= h:  # inside the image: resize a view, no copy
        patch = image[y:y + s, x:x + s]
    else:
        patch = np.zeros((s, s, image.shape[2]), dtype=image.dtype)
        sx0, sy0, sx1, sy1 = max(x, 0), max(y, 0), min(x + s, w), min(y + s, h)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y:sy1 - y, sx0 - x:sx1 - x] = image[sy0:sy1, sx0:sx1]
    return preprocess.resize_area(patch, size, size)


def decode_points(raw: np.ndarray, region: Region) -> np.ndarray:
    """MTCNN landmark output (10,): five x then five y, as fractions of the crop side, to (5, 2) image pixels."""
    raw = np.asarray(raw, dtype=np.float32).reshape(-1)
    if raw.size != 10:
        raise ValueError(f"a five-point landmark output has 10 values, got {raw.size}")
    x = region.x + raw[:5] * region.side
    y = region.y + raw[5:] * region.side
    return np.stack([x, y], axis=1).astype(np.float32)


class FaceLandmarker:
    """Five landmarks per face box from a landmark model and its manifest (role ``landmarks``).

    ``landmarks(image, box)`` costs one small model run per face (O-Net: ~1 ms on a desktop core). The
    embedder asks for it only when its crop recipe names points the detector does not give
    (:func:`edgeface.embed.face_crop`).
    """

    def __init__(self, model_path: str | os.PathLike, threads: Optional[int] = None,
                 accelerator: Optional[str] = None, runtime_name: Optional[str] = None):
        self.manifest = read_manifest(model_path)
        if self.manifest["role"] != "landmarks":
            raise ManifestError(f"{model_path}: is a {self.manifest['role']}, not a landmark model")
        self.section = self.manifest["landmarks"]
        crop = self.section["crop"]
        self.size, self.scale, self.shift_y = int(crop["size"]), float(crop["scale"]), float(crop["shift_y"])
        self.interpreter = runtime.make_interpreter(model_path, threads, accelerator, runtime_name)
        check_model(self.manifest, self.interpreter, str(manifest_path(model_path)))
        outputs = self.manifest["outputs"]
        self._points = runtime.output_index(self.interpreter, outputs["landmarks"])
        self._score = runtime.output_index(self.interpreter, outputs["score"]) if "score" in outputs else None
        self.mean, self.std = self.manifest["input"]["mean"], self.manifest["input"]["std"]

    def crop(self, image: np.ndarray, box) -> tuple[np.ndarray, Region]:
        """The model's input crop (RGB uint8) for ``box`` and the image region it covers."""
        region = landmark_region(box, self.scale, self.shift_y)
        return crop_region(image, region, self.size), region

    def landmarks(self, image: np.ndarray, box) -> Landmarks:
        """Five points of the face in ``box`` of RGB uint8 ``image``, in image pixels, and the face score."""
        crop, region = self.crop(image, box)
        runtime.set_pixels(self.interpreter, crop, self.mean, self.std)
        self.interpreter.invoke()
        points = decode_points(runtime.get_output(self.interpreter, self._points), region)
        score = float("nan")
        if self._score is not None:
            score = float(runtime.get_output(self.interpreter, self._score).reshape(-1)[-1])
        return Landmarks(points, score)
