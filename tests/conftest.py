"""Shared fixtures: real data from ../shared/data and models built once per session (cached on disk)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGEFACE_DATA", REPO.parent / "shared" / "data"))
LFW = DATA / "lfw"
BBT = DATA / "bbt"


def _converter_key() -> str:
    """Models are rebuilt when the code that makes them changes."""
    h = hashlib.sha256()
    for f in ("build.py", "detector.py", "embedder.py", "tflite_rebuild.py", "facenet_keras.py", "common.py",
              "mobilefacenet.py", "qat.py", "openset.py", "prune.py"):
        h.update((REPO / "converters" / f).read_bytes())
    for f in sorted((REPO / "calibration_data").glob("*.py")):
        h.update(f.read_bytes())
    for f in ("preprocess.py", "detect.py", "embed.py", "blazeface.py", "manifest.py"):
        h.update((REPO / "edgeface" / f).read_bytes())
    return h.hexdigest()[:16]


def lfw_image(name: str, n: int) -> Path:
    return LFW / "images_deepfunneled" / name / f"{name}_{n:04d}.jpg"


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (LFW / "pairs.txt").is_file():
        pytest.skip(f"real data not found at {DATA} (set EDGEFACE_DATA)")
    return DATA


@pytest.fixture(scope="session")
def models_dir(data_root) -> Path:
    """Built models: $EDGEFACE_TEST_MODELS if set, else built once into .cache/test-models."""
    env = os.environ.get("EDGEFACE_TEST_MODELS")
    if env:
        return Path(env)
    out = REPO / ".cache" / "test-models"
    stamp = out / "build-key.txt"
    key = _converter_key()
    if (out / "models.json").is_file() and stamp.is_file() and stamp.read_text() == key:
        return out
    pytest.importorskip("tensorflow")
    from edgeface.converters.build import build_models

    build_models(out, cache_dir=str(REPO / ".cache" / "downloads"))
    stamp.write_text(key)
    return out


@pytest.fixture(scope="session")
def index(models_dir) -> dict:
    return json.loads((models_dir / "models.json").read_text())


@pytest.fixture(scope="session")
def recognizer(models_dir):
    from edgeface import FaceRecognizer

    return FaceRecognizer(models_dir, precision="int8")


@pytest.fixture(scope="session")
def float_recognizer(models_dir):
    from edgeface import FaceRecognizer

    return FaceRecognizer(models_dir, precision="float32")
