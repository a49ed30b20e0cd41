"""Training and calibration crops: LFW DevTrain faces cut with the embedder's crop recipe (cached)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgeface.evaluate import lfw_image_path, read_people

from .. import common, embedder
from .options import PruneError


def devtrain_files(lfw_root: str | os.PathLike, count: int, seed: int) -> list[Path]:
    """``count`` images (sorted, chosen with ``seed``) of the identities in LFW ``peopleDevTrain.txt``."""
    root = Path(lfw_root)
    listing = root / "peopleDevTrain.txt"
    if not listing.is_file():
        raise PruneError(f"{listing}: not found; pruning trains on LFW peopleDevTrain identities only")
    files = [lfw_image_path(root, name, i) for name, n in read_people(listing) for i in range(1, n + 1)]
    files = sorted(f for f in files if f.is_file())
    if not files:
        raise PruneError(f"{root}: no images of the peopleDevTrain.txt identities under images_deepfunneled/")
    if len(files) > count:
        rng = np.random.default_rng(seed)
        files = [files[i] for i in sorted(rng.choice(len(files), size=count, replace=False))]
    return files


def make_face_crops(files: Sequence[Path], detector_path: str | os.PathLike, recipe: dict,
                    cache_dir: Optional[str | os.PathLike] = None) -> np.ndarray:
    """uint8 (N, size, size, 3) crops: the central face of each file (float detector, ``recipe``).

    Files without a face are skipped. With ``cache_dir`` the array is cached as ``crops-<key>.npy``, keyed by
    the files, the detector's sha256 and the recipe.
    """
    from edgeface.detect import FaceDetector
    from edgeface.embed import landmarker_for
    from edgeface.lfw import crop_files
    from edgeface.manifest import sha256_file

    key = hashlib.sha256(json.dumps([[str(f) for f in files], sha256_file(detector_path),
                                     recipe], sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"crops-{key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    det = FaceDetector(detector_path)
    by_file = crop_files(det.detect, files, recipe, lambda fs: common.progress(fs, "cropping DevTrain faces"),
                         landmarker_for(recipe, Path(detector_path).parent))
    crops = [c for c in by_file.values() if c is not None]  # unreadable files are logged and skipped
    if not crops:
        raise PruneError(f"no face found in any of the {len(files)} training images")
    out = np.stack(crops).astype(np.uint8)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path.with_suffix(".part.npy"), out)
        os.replace(path.with_suffix(".part.npy"), path)
    return out


def calibration_crops(detector_path: str | os.PathLike, recipe: dict, count: int = 300,
                      seed: int = 20260101) -> list[np.ndarray]:
    """The crops ``edgeface build`` calibrates the embedder on (same set, same code as :mod:`build`)."""
    from edgeface.calibration_data import builder
    from edgeface.detect import FaceDetector
    from edgeface.embed import face_crop, landmarker_for

    from ..calibration import default_set

    cset = default_set(count, seed)
    images = builder.load_images(cset, lambda it: common.progress(it, "reading calibration images",
                                                                   len(cset.files)))
    landmarker = landmarker_for(recipe, Path(detector_path).parent)
    return builder.face_crops(images, FaceDetector(detector_path).detect,
                              lambda img, face: face_crop(img, face.box, face.keypoints, recipe, landmarker))


def normalize_crops(crops: np.ndarray, mean: float = embedder.MEAN) -> np.ndarray:
    """uint8 crops as the model's float input: ``(x - mean) / STD`` (``mean``: the model manifest's, e.g.
    :data:`embedder.EXACT_INPUT_MEAN` for the int8 MobileFaceNet; pruning's FaceNet uses ``MEAN``)."""
    return (np.asarray(crops, np.float32) - mean) / embedder.STD
