"""Held-out real data for fidelity checks: LFW ``peopleDevTest.txt`` identities (never used for calibration,
which takes ``peopleDevTrain.txt`` people), chosen deterministically."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from edgeface import preprocess
from edgeface.evaluate import lfw_image_path, read_people

from . import common

log = logging.getLogger(__name__)
PEOPLE_FILE = "peopleDevTest.txt"


def lfw_root(path: Optional[str | os.PathLike] = None) -> Path:
    """``path``, or ``$EDGEFACE_DATA/lfw``, or ``../shared/data/lfw``; must hold images and the DevTest lists."""
    from edgeface.calibration_data.builder import default_data_root

    root = Path(path) if path else default_data_root() / "lfw"
    if not (root / PEOPLE_FILE).is_file() or not (root / "images_deepfunneled").is_dir():
        raise FileNotFoundError(f"{root}: not an LFW folder (needs {PEOPLE_FILE} and images_deepfunneled/); "
                                "pass --data or set EDGEFACE_DATA")
    return root


def devtest_images(root: str | os.PathLike, count: int) -> list[Path]:
    """``count`` images of DevTest people, evenly spread over the sorted list (deterministic)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    root = Path(root)
    files = [lfw_image_path(root, name, i) for name, n in read_people(root / PEOPLE_FILE) for i in range(1, n + 1)]
    files = [f for f in sorted(files) if f.is_file()]
    if not files:
        raise FileNotFoundError(f"{root}: no DevTest images found")
    step = max(1, len(files) // count)
    return files[::step][:count]


def detector_inputs(files, size: int, mean: float, std: float) -> list[np.ndarray]:
    """Letterboxed, normalized (1, size, size, 3) float inputs of image files."""
    from edgeface.detect import detector_input

    return [detector_input(preprocess.read_image(f), size, mean, std)[0] for f in files]


def face_crops(files, float_detector: str | os.PathLike, recipe: dict) -> list[np.ndarray]:
    """The subject's face (LFW central face) of each file, cropped with ``recipe`` by the float detector."""
    from edgeface.detect import FaceDetector
    from edgeface.embed import landmarker_for
    from edgeface.lfw import crop_files

    files = list(files)
    by_file = crop_files(FaceDetector(float_detector).detect, files, recipe,
                         lambda fs: common.progress(fs, "held-out face crops"),
                         landmarker_for(recipe, Path(float_detector).parent))
    crops = [c for c in by_file.values() if c is not None]  # unreadable files are logged and skipped
    if not crops:
        raise ValueError(f"no face found by {Path(float_detector).name} in {len(files)} held-out images")
    return crops
