"""Shared fixtures: real data ($EDGEFACE_DATA or ../shared/data) and models built once per session.

Models: ``$EDGEFACE_TEST_MODELS`` when set (a prebuilt folder), else built into
``<cache root>/test-models/<key>`` (cache root: ``$EDGEFACE_CACHE`` or ``~/.cache/edgeface``), where the key
hashes every .py file of the packages the build imports, so tests never run on models built by old code.
Tests that need built models are marked ``slow``; ``pytest -m "not slow"`` runs without any model (a test
using a model fixture without the mark is an error at collection).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from edgeface.paths import cache_root
from edgeface.paths import data_root as _data_root

REPO = Path(__file__).resolve().parents[1]
DATA = _data_root()
LFW = DATA / "lfw"
BBT = DATA / "bbt"


MODEL_FIXTURES = {"models_dir", "index", "recognizer", "float_recognizer"}
BUILD_PACKAGES = ("edgeface", "converters", "calibration_data")  # everything `edgeface build` imports


def _converter_key() -> str:
    """Models are rebuilt when any code the build imports changes: every .py of the build's packages."""
    h = hashlib.sha256()
    for package in BUILD_PACKAGES:
        for f in sorted((REPO / package).rglob("*.py")):
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError("tests that use built models must be marked @pytest.mark.slow: "
                                + ", ".join(unmarked))


def lfw_image(name: str, n: int) -> Path:
    return LFW / "images_deepfunneled" / name / f"{name}_{n:04d}.jpg"


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (LFW / "pairs.txt").is_file():
        pytest.skip(f"real data not found at {DATA} (set EDGEFACE_DATA)")
    return DATA


@pytest.fixture(scope="session")
def models_dir(data_root) -> Path:
    """Built models: $EDGEFACE_TEST_MODELS if set, else built once per code version under the cache root."""
    env = os.environ.get("EDGEFACE_TEST_MODELS")
    if env:
        return Path(env)
    out = cache_root() / "test-models" / _converter_key()
    if (out / "models.json").is_file():
        return out
    from edgeface.converters.build import build_models  # CI installs edgeface[convert]: no skip

    build_models(out)
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
