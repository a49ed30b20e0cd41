"""The door demo without a camera: a door-camera video built from real LFW photos, run through the loop.

Enrolled people are enrolled from some of their photos; the video then shows visits: one person's *other*
photos, pasted on a door scene, walking in (moving, growing) under changing light, and strangers (people
never enrolled) doing the same. Optionally, photo attacks: one photo of an enrolled person moved rigidly in
front of the camera, which the liveness check must refuse. The score: unlocks per visit.
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgeface.errors import EdgefaceError, OptionError
from edgeface.preprocess import read_image

log = logging.getLogger(__name__)


class DemoError(EdgefaceError, RuntimeError):
    """The demo cannot run here (e.g. no video writer)."""


@dataclass
class Visit:
    person: str
    kind: str               #: "enrolled", "stranger" or "photo_attack"
    photos: list
    first_frame: int = 0
    last_frame: int = 0


@dataclass
class DemoPlan:
    enrolled: dict = field(default_factory=dict)  #: person -> enrollment photo paths
    visits: list = field(default_factory=list)


def _people_with_counts(lfw_images: Path) -> list[tuple[str, int]]:
    out = []
    for entry in sorted(os.scandir(lfw_images), key=lambda e: e.name):
        if entry.is_dir():
            out.append((entry.name, sum(1 for f in os.scandir(entry.path) if f.name.endswith(".jpg"))))
    return out


def plan_demo(lfw_images: str | Path, n_enrolled: int = 6, n_strangers: int = 6, visits_per_person: int = 2,
              enroll_photos: int = 6, photos_per_visit: int = 3, photo_attacks: int = 0, seed: int = 4) -> DemoPlan:
    """Pick people (seeded): enrolled ones need enough photos for enrollment and disjoint visit photos."""
    lfw_images = Path(lfw_images)
    for name, value, least in (("enrolled", n_enrolled, 1), ("strangers", n_strangers, 0),
                               ("visits", visits_per_person, 1), ("photo-attacks", photo_attacks, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise OptionError(f"--{name} must be a whole number >= {least}, got {value!r}")
    if not lfw_images.is_dir():
        raise OptionError(f"{lfw_images}: not a folder (the LFW images_deepfunneled folder, one folder per person)")
    rng = random.Random(seed)
    people = _people_with_counts(lfw_images)
    need = enroll_photos + visits_per_person * photos_per_visit
    # cap the count to avoid the few hugely over-represented people dominating
    rich = [p for p, n in people if need <= n <= 60]
    if len(rich) < n_enrolled:
        raise OptionError(f"only {len(rich)} LFW people have {need} photos")
    enrolled = rng.sample(rich, n_enrolled)
    strangers_pool = [p for p, n in people if n >= photos_per_visit and p not in enrolled]
    if len(strangers_pool) < n_strangers:
        raise OptionError(f"only {len(strangers_pool)} other LFW people have {photos_per_visit} photos for "
                          f"{n_strangers} strangers")
    strangers = rng.sample(strangers_pool, n_strangers)
    plan = DemoPlan()
    visits = []

    def files(person):
        return sorted(str(p) for p in (lfw_images / person).glob("*.jpg"))

    for person in enrolled:
        f = files(person)
        rng.shuffle(f)
        plan.enrolled[person] = sorted(f[:enroll_photos])
        rest = f[enroll_photos:]
        for v in range(visits_per_person):
            visits.append(Visit(person, "enrolled", rest[v * photos_per_visit:(v + 1) * photos_per_visit]))
    for person in strangers:
        f = files(person)
        rng.shuffle(f)
        visits.append(Visit(person, "stranger", f[:photos_per_visit]))
    for i in range(photo_attacks):  # a print of a photo the camera saw in a real visit
        person = enrolled[i % len(enrolled)]
        source = next(v for v in visits if v.person == person)
        visits.append(Visit(person, "photo_attack", [source.photos[0]]))
    rng.shuffle(visits)
    plan.visits = visits
    return plan


def door_scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A plain door-and-wall background (RGB) with a little texture."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None]
    wall = (150 + 40 * y + np.zeros((1, width))).astype(np.float32)
    img = np.stack([wall * 0.95, wall * 0.9, wall * 0.8], axis=2)
    x0, x1 = int(width * 0.6), int(width * 0.9)
    img[int(height * 0.1):, x0:x1] = (110, 80, 60)  # the door
    img[int(height * 0.55):int(height * 0.6), x0 + 5:x0 + 15] = (200, 190, 120)  # its handle
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _paste(canvas: np.ndarray, photo: np.ndarray, cx: float, cy: float, scale: float) -> None:
    """Paste ``photo`` (RGB) scaled, centred at (cx, cy), with a feathered elliptical edge."""
    ph = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    h, w = ph.shape[:2]
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (w // 2, h // 2), (int(w * 0.46), int(h * 0.49)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, w * 0.04))[:, :, None]
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    H, W = canvas.shape[:2]
    sx0, sy0, sx1, sy1 = max(0, -x0), max(0, -y0), min(w, W - x0), min(h, H - y0)
    if sx1 <= sx0 or sy1 <= sy0:
        return
    region = canvas[y0 + sy0:y0 + sy1, x0 + sx0:x0 + sx1].astype(np.float32)
    m = mask[sy0:sy1, sx0:sx1]
    canvas[y0 + sy0:y0 + sy1, x0 + sx0:x0 + sx1] = np.clip(
        region * (1 - m) + ph[sy0:sy1, sx0:sx1].astype(np.float32) * m, 0, 255).astype(np.uint8)


def render_visit(photos: list[np.ndarray], background: np.ndarray, frames_per_photo: int,
                 rng: np.random.Generator, rigid: bool = False) -> list[np.ndarray]:
    """Frames of one visit: the person walks in (left/right to centre, growing), light changes.

    ``rigid`` (a photo attack): one photo only, moved and scaled rigidly (a held-up print).
    """
    H, W = background.shape[:2]
    n = frames_per_photo * len(photos)
    side = rng.choice([-1, 1])
    s0, s1 = rng.uniform(0.55, 0.65), rng.uniform(0.85, 1.0)
    gain0, gain1 = rng.uniform(0.65, 1.0), rng.uniform(0.9, 1.3)
    frames = []
    for j in range(n):
        a = j / max(1, n - 1)
        photo = photos[min(j // frames_per_photo, len(photos) - 1)]
        crop = photo[25:225, 25:225] if photo.shape[:2] == (250, 250) else photo
        scale = (s0 + (s1 - s0) * a) * (H / 240.0)
        cx = W / 2 + side * (1 - a) * W * 0.22 + rng.normal(0, 1.0)
        cy = H * 0.47 + 3 * np.sin(j * 0.9)
        canvas = background.copy()
        _paste(canvas, crop, cx, cy, scale)
        gain = gain0 + (gain1 - gain0) * a
        frame = np.clip(canvas.astype(np.float32) * gain + rng.normal(0, 2.0, canvas.shape), 0, 255)
        frames.append(frame.astype(np.uint8))
    return frames


def build_demo_video(plan: DemoPlan, out_dir: str | Path, width: int = 320, height: int = 240, fps: float = 10.0,
                     frames_per_photo: int = 9, gap_frames: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """Write ``door_demo.avi`` (MJPG) and ``door_demo.json`` (visits with frame ranges) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video, truth = out_dir / "door_demo.avi", out_dir / "door_demo.json"
    rng = np.random.default_rng(seed)
    bg = door_scene(width, height, seed)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise DemoError(f"cannot write {video} (OpenCV has no MJPG writer)")
    index = 0

    def write(frame_rgb):
        nonlocal index
        writer.write(np.ascontiguousarray(frame_rgb[:, :, ::-1]))
        index += 1

    try:
        for _ in range(gap_frames):
            write(bg)
        for v in plan.visits:
            photos = [read_image(p) for p in v.photos]
            rigid = v.kind == "photo_attack"
            frames = render_visit(photos, bg, frames_per_photo * (3 if rigid else 1), rng, rigid)
            v.first_frame = index
            for f in frames:
                write(f)
            v.last_frame = index - 1
            for _ in range(gap_frames):
                write(bg)
    finally:
        writer.release()
    truth.write_text(json.dumps({"fps": fps, "frames": index, "width": width, "height": height,
                                 "enrolled": plan.enrolled,
                                 "visits": [vars(v) for v in plan.visits]}, indent=1))
    return video, truth


def score_demo(visits: list[dict], decisions: list, tail_frames: int = 8) -> dict:
    """Match decisions to visits by frame; count unlocks per kind of visit."""
    rows = []
    for v in visits:
        ds = [d for d in decisions if v["first_frame"] <= d.frame <= v["last_frame"] + tail_frames]
        grants = [d for d in ds if d.decision == "grant"]
        rows.append({"person": v["person"], "kind": v["kind"], "frames": [v["first_frame"], v["last_frame"]],
                     "decisions": [f"{d.decision}:{d.identity or 'unknown'}:{d.score:.3f}" for d in ds],
                     "unlocked": bool(grants), "granted_as": sorted({d.identity for d in grants})})
    enrolled = [r for r in rows if r["kind"] == "enrolled"]
    strangers = [r for r in rows if r["kind"] == "stranger"]
    attacks = [r for r in rows if r["kind"] == "photo_attack"]
    correct = [r for r in enrolled if r["unlocked"] and r["granted_as"] == [r["person"]]]
    wrong = [r for r in enrolled if any(g != r["person"] for g in r["granted_as"])]
    summary = {
        "visits": len(rows), "enrolled_visits": len(enrolled), "stranger_visits": len(strangers),
        "photo_attacks": len(attacks),
        "enrolled_unlocked": len(correct),
        "enrolled_unlock_rate": round(len(correct) / len(enrolled), 4) if enrolled else None,
        "stranger_unlocks": sum(r["unlocked"] for r in strangers),
        "wrong_person_unlocks": len(wrong),
        "photo_attack_unlocks": sum(r["unlocked"] for r in attacks),
    }
    summary["done"] = bool(summary["stranger_unlocks"] == 0 and summary["wrong_person_unlocks"] == 0
                           and (summary["enrolled_unlock_rate"] or 0) >= 0.95)
    return {"summary": summary, "visits": rows}


def demo_config(base, work: Path):
    """The device config for the demo: video source, mock relay, files in ``work``, short door times."""
    return base.replace(source={"kind": "video", "uri": str(work / "door_demo.avi"), "realtime": False},
                        door={"pin_factory": "mock", "unlock_seconds": 1.0, "cooldown_seconds": 0.5},
                        gallery={"path": str(work / "demo_gallery.db")},
                        events={"path": str(work / "demo_events.db")})


def run_demo(models_dir: str, lfw_images: str, work: str | Path, base_cfg=None, n_enrolled: int = 6,
             n_strangers: int = 6, visits_per_person: int = 2, photo_attacks: int = 0, seed: int = 4,
             width: int = 320, height: int = 240, rebuild: bool = False, recognizer=None) -> dict:
    """Build (or reuse) the demo video and gallery, run the door loop on it, return the scored results."""
    from edgeface.gallery import Gallery

    from .app import DoorApp
    from .config import DeviceConfig
    from .enroll import enroll_photos

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    base_cfg = base_cfg or DeviceConfig()
    base_cfg = base_cfg.replace(models={"dir": str(models_dir)})
    cfg = demo_config(base_cfg, work)
    truth_path = work / "door_demo.json"
    if rebuild or not truth_path.is_file() or not (work / "door_demo.avi").is_file():
        plan = plan_demo(lfw_images, n_enrolled, n_strangers, visits_per_person, photo_attacks=photo_attacks,
                         seed=seed)
        build_demo_video(plan, work, width, height, seed=seed)
    truth = json.loads(truth_path.read_text())
    gallery_path = Path(cfg.gallery.path)
    enrollment = []
    if rebuild or not gallery_path.is_file():
        for suffix in ("", "-wal", "-shm"):
            Path(str(gallery_path) + suffix).unlink(missing_ok=True)
        if recognizer is None:
            from .app import load_recognizer
            recognizer = load_recognizer(cfg)
        with Gallery(gallery_path, recognizer.embedder_id, recognizer.embedder.dim) as g:
            for person, photos in truth["enrolled"].items():
                enrollment.append(enroll_photos(recognizer, g, person, photos).to_json())
    for suffix in ("", "-wal", "-shm"):
        Path(cfg.events.path + suffix).unlink(missing_ok=True)
    with DoorApp(cfg, clock="frame") as app:
        loop = app.run(threaded=False)
        result = score_demo(truth["visits"], loop.decisions)
        result["enrollment"] = enrollment
        result["latency"] = loop.timer.summary()
        result["latency_table"] = loop.timer.table()
        result["stats"] = dict(loop.stats)
        result["frames"] = truth["frames"]
        result["threshold"] = loop.threshold
        result["door_unlocks"] = app.door.unlock_count if app.door else None
        result["events_logged"] = app.events.count()
    result["decisions"] = [d.to_json() for d in loop.decisions]
    return result
