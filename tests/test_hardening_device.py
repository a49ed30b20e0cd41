"""Issue 12, device side: hostile configuration, full disks, broken files and erasure never open the door, crash or
leak biometric data. Real models, real LFW photos, real SQLite, real files, real processes (a tmpfs for a full
disk). One test (or a few) per numbered class of the issue."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.device.config import DeviceConfig

pytestmark = pytest.mark.slow
gpiozero = pytest.importorskip("gpiozero")

ENROLLED = "Colin_Powell"
STRANGER = "Serena_Williams"


def _lfw(data_root, person, n):
    return data_root / "lfw" / "images_deepfunneled" / person / f"{person}_{n:04d}.jpg"


@pytest.fixture(scope="module")
def site(models_dir, data_root, tmp_path_factory):
    """A gallery with one enrolled person (5 LFW photos) and a folder "camera": 6 other photos of them, each shown
    for 3 frames, then 3 photos of a stranger. Returns (work dir, gallery path, frames folder)."""
    from edgeface import FaceRecognizer, Gallery
    from edgeface.device.enroll import enroll_photos

    work = tmp_path_factory.mktemp("site")
    rec = FaceRecognizer(models_dir, precision="int8")
    gallery = work / "gallery.db"
    with Gallery(gallery, rec.embedder_id, rec.embedder.dim) as g:
        res = enroll_photos(rec, g, ENROLLED, [str(_lfw(data_root, ENROLLED, i)) for i in range(1, 6)])
        assert res.total_embeddings >= 4
    frames = work / "frames"
    frames.mkdir()
    shots = [_lfw(data_root, ENROLLED, i) for i in range(6, 12)] + [_lfw(data_root, STRANGER, i) for i in (1, 2, 3)]
    n = 0
    for shot in shots:
        for _ in range(3):
            shutil.copy(shot, frames / f"{n:04d}.jpg")
            n += 1
    return work, gallery, frames


def _cfg(site, tmp_path, models_dir, **over):
    """Folder source, mock relay, 1-vote decisions and no liveness check (still photos), files in tmp_path."""
    work, gallery, frames = site
    sections = dict(models={"dir": str(models_dir)}, gallery={"path": str(gallery)},
                    events={"path": str(tmp_path / "events.db")},
                    source={"kind": "folder", "uri": str(frames), "fps": 10.0},
                    door={"pin_factory": "mock", "unlock_seconds": 0.1, "cooldown_seconds": 0.0},
                    recognition={"votes_needed": 1, "vote_window": 1}, liveness={"check": "none"})
    for k, v in over.items():
        sections.setdefault(k, {}).update(v)
    return DeviceConfig().replace(**sections)


def _toml(cfg: DeviceConfig, path: Path) -> Path:
    from edgeface.device.config import _toml_value, to_dict

    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgeface.device.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


# -- 2. thresholds that open the door to anyone ---------------------------------------------------------------------
def test_weak_door_thresholds_are_refused_unless_explicitly_allowed(site, models_dir, tmp_path):
    from gpiozero.pins.mock import MockFactory

    from edgeface.device.app import DoorApp, StartupError
    from edgeface.device.cli import doctor

    floor = json.loads((models_dir / "facenet_msceleb_int8.json").read_text())["embedder"]["operating_points"][
        "far_0.01"]["min_cosine_similarity"]
    # a hand-set threshold below far_0.01, and the manifest's accuracy point (0.33 < far_0.01 0.38 here)
    for rec_over in ({"min_cosine_similarity": -1.0}, {"min_cosine_similarity": floor - 0.01},
                     {"operating_point": "accuracy"}):
        cfg = _cfg(site, tmp_path, models_dir, recognition=rec_over)
        factory = MockFactory()
        with pytest.raises(StartupError, match=r"below the manifest's far_0.01 threshold.*allow_weak_threshold"):
            DoorApp(cfg, pin_factory=factory, clock="frame")
        assert factory.pin(17).state is False
        models = next(c for c in doctor(cfg) if c["check"] == "models")
        assert not models["ok"] and "allow_weak_threshold" in models["detail"]
    # an edited manifest: an operating point of -3 is refused whatever the config says
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    man = models / "facenet_msceleb_int8.json"
    m = json.loads(man.read_text())
    m["embedder"]["operating_points"]["far_0.001"]["min_cosine_similarity"] = -3
    man.write_text(json.dumps(m))
    cfg = _cfg(site, tmp_path, models_dir, models={"dir": str(models)}, recognition={"allow_weak_threshold": True})
    with pytest.raises(StartupError, match=r"far_0.001.min_cosine_similarity must be a cosine similarity in \[-1, 1\]"):
        DoorApp(cfg, pin_factory=MockFactory(), clock="frame")
    # allowed explicitly: it starts, and both run and doctor print a warning line at every start
    cfg = _cfg(site, tmp_path, models_dir, recognition={"min_cosine_similarity": -1.0, "allow_weak_threshold": True})
    toml = _toml(cfg, tmp_path / "weak.toml")
    for _ in range(2):
        run = _cli("-c", toml, "run", "--max-frames", "3")
        assert run.returncode == 0, run.stderr[-2000:]
        warnings = [ln for ln in run.stderr.splitlines() if ln.startswith("edgeface-device: warning: WEAK THRESHOLD")]
        assert len(warnings) == 1, run.stderr
    doc = _cli("-c", toml, "doctor")
    assert any(ln.startswith("WRN threshold") and "WEAK THRESHOLD" in ln for ln in doc.stdout.splitlines()), doc.stdout
    # a sane one starts without a warning
    run = _cli("-c", _toml(_cfg(site, tmp_path, models_dir), tmp_path / "ok.toml"), "run", "--max-frames", "3")
    assert run.returncode == 0 and "WEAK" not in run.stderr, run.stderr[-2000:]
