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
    for 2 frames and followed by an empty frame, then 3 photos of a stranger likewise. Returns (work dir, gallery path, frames folder)."""
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
    blank = np.full((250, 250, 3), 128, np.uint8)  # an empty doorway between visitors: every track ends
    n = 0
    for shot in shots:
        for _ in range(2):
            shutil.copy(shot, frames / f"{n:04d}.jpg")
            n += 1
        cv2.imwrite(str(frames / f"{n:04d}.jpg"), blank)
        n += 1
    return work, gallery, frames


def _cfg(site, tmp_path, models_dir, **over):
    """Folder source, mock relay, 1-vote decisions and no liveness check (still photos), files in tmp_path."""
    work, gallery, frames = site
    sections = dict(models={"dir": str(models_dir)}, gallery={"path": str(gallery)},
                    events={"path": str(tmp_path / "events.db")},
                    source={"kind": "folder", "uri": str(frames), "fps": 10.0},
                    door={"pin_factory": "mock", "unlock_seconds": 0.1, "cooldown_seconds": 0.0},
                    recognition={"votes_needed": 1, "vote_window": 1}, liveness={"check": "none"},
                    tracker={"max_missed_frames": 0})
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


# -- 3. grants without an audit record --------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs; the tests run as root, as CI does)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` to the last byte, then free ``leave`` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"x" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def _grant_rows(db: Path) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT track FROM events WHERE kind = 'access' AND decision = 'grant'")]
    finally:
        conn.close()


def test_full_disk_no_grant_without_its_event_and_no_snapshot_litter(site, models_dir, tmp_path, small_disk):
    from edgeface.device.events import EventLog

    db, snaps = small_disk / "events.db", small_disk / "snaps"
    cfg = _cfg(site, tmp_path, models_dir, events={"path": str(db), "snapshot_dir": str(snaps)},
               source={"loop": True}, door={"enabled": True})
    toml = _toml(cfg, tmp_path / "device.toml")
    EventLog(db, snapshot_dir=snaps).close()

    def run(frames, fill_after_first_grant=False):
        p = subprocess.Popen([sys.executable, "-m", "edgeface.device.cli", "-c", str(toml), "run", "--max-frames",
                              str(frames)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        for line in p.stdout:
            lines.append(line.split())
            if fill_after_first_grant and line.startswith("frame ") and line.split()[4] == "grant":
                _fill(small_disk)  # the disk fills up while the door is in use
                fill_after_first_grant = False
        err = p.stderr.read()
        assert p.wait(timeout=300) == 0, err[-3000:]
        lines = [ln for ln in lines if ln and ln[0] == "frame"]
        return [int(ln[3]) for ln in lines if ln[4] == "grant"], [ln for ln in lines if ln[4] == "deny"], err

    # 1. the disk fills up during the run: no grant is printed (no relay moves) without its committed event,
    # the refusals are reported once (not once per decision), and no snapshot file is left half-written
    granted, denied, err = run(150, fill_after_first_grant=True)
    assert granted and len(denied) >= 3 and all("not writable" in " ".join(d) for d in denied), (granted, denied)
    warnings = [ln for ln in err.splitlines() if "event log not writable" in ln]
    assert len(warnings) == 1, err[-3000:]  # throttled: once a minute
    doc = _cli("-c", toml, "doctor")
    line = next(ln for ln in doc.stdout.splitlines() if " events " in ln)
    assert line.startswith("BAD") and "door will not open" in line, doc.stdout
    # 2. started on the full disk: it refuses to start (exit 2) if SQLite cannot even open the log, else it runs,
    # granting only what it can still commit (WAL space SQLite reuses); a few lines say the disk is full
    p = _cli("-c", toml, "run", "--max-frames", 30)
    assert p.returncode in (0, 2), p.stderr
    granted += [int(ln.split()[3]) for ln in p.stdout.splitlines() if ln.startswith("frame ") and ln.split()[4] == "grant"]
    lines = p.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and all("disk full" in ln or "snapshot not saved" in ln for ln in lines), p.stderr
    assert p.returncode == 0 or "door stays locked" in p.stderr
    (small_disk / "filler").unlink()
    assert sorted(granted) == sorted(_grant_rows(db))
    assert not list(snaps.glob("*.tmp"))
    conn = sqlite3.connect(db)
    named = {os.path.basename(r[0]) for r in conn.execute("SELECT snapshot FROM events WHERE snapshot IS NOT NULL")}
    conn.close()
    assert {p.name for p in snaps.iterdir()} <= named
    # 3. space again: grants are recorded again and doctor is content
    before = len(_grant_rows(db))
    granted, denied, err = run(30)
    assert granted and not denied and len(_grant_rows(db)) == before + len(granted)
    doc = _cli("-c", toml, "doctor")
    assert next(ln for ln in doc.stdout.splitlines() if " events " in ln).startswith("ok")
