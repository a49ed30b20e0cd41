"""Face detection by face size: recall from 20 px to the whole frame, false detections, latency.

The labelled set (``face_size_labels.json`` beside this file; no image is committed, every scene is built
from ``../shared/data`` at run time):

* ``bbt_*``: the five group photos of ``bbt/group`` with every visible face boxed by hand (50-130 px faces);
* ``far_2x2`` / ``far_3x3`` / ``far_4x4``: the same photos shrunk into 1280x720 collages, as if taken from a
  few metres away (faces 15-85 px; mirrored where a photo repeats);
* ``lfw_small``: 48 single-face LFW photos pasted at 20-56 px on a 1280x720 canvas;
* ``lfw_mixed``: one 400 px face beside a dozen 24-64 px faces on 1280x720;
* ``lfw_native``: one LFW photo as it is (250x250, the portrait / door case);
* ``lfw_press`` / ``lfw_closeup``: one face filling a 900 px / 800 px frame (the press photo that the old
  ``--tiles 3`` turned into four false small faces).

A label is found when a detection overlaps it with IoU >= 0.3 (one detection per label); a detection that
matches no label and lies in no ``ignore`` region (a face turned away) is false. Faces under 20 px are in the
scenes but not in the recall target (finding them is neither credited nor counted as false).

    edgeface bench face_sizes --models models --data ../shared/data/lfw
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple, Optional

import cv2
import numpy as np

from . import common

LABELS = Path(__file__).resolve().with_name("face_size_labels.json")
MIN_FACE = 20
#: Size buckets (label box side, px) for the recall table.
BUCKETS = (20, 32, 48, 64, 128, 256, 100000)
#: A face at least this large (px) must never be lost.
LARGE_FACE = 64
MATCH_IOU = 0.3
CANVAS = (720, 1280)
LFW_CROP = (40, 210)  # the part of a 250x250 LFW photo pasted into mosaics (holds the face, no border faces)


class Scene(NamedTuple):
    """One labelled image: ``faces`` (N, 4) and ``ignore`` (M, 4) boxes [x1, y1, x2, y2] in its pixels."""
    name: str
    image: np.ndarray
    faces: np.ndarray
    ignore: np.ndarray


def read_labels(path: Path = LABELS) -> dict:
    return json.loads(Path(path).read_text())


def _boxes(rows) -> np.ndarray:
    return np.asarray(rows, np.float32).reshape(-1, 4)


def _canvas(seed: int, shape=CANVAS) -> np.ndarray:
    """A plain grey canvas with faint smooth texture (deterministic)."""
    rng = np.random.default_rng(seed)
    noise = cv2.resize(rng.normal(0, 12, (shape[0] // 40, shape[1] // 40, 3)).astype(np.float32),
                       (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(120 + noise, 0, 255).astype(np.uint8)


def _paste_lfw(canvas: np.ndarray, lfw_image: np.ndarray, box: np.ndarray, face: float, x: int, y: int):
    """Paste the LFW crop scaled so its face box is ``face`` px wide, top-left at (x, y); the pasted face box."""
    a, b = LFW_CROP
    crop = lfw_image[a:b, a:b]
    s = face / float(box[2] - box[0])
    side = max(1, round((b - a) * s))
    s = side / (b - a)
    small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    h, w = canvas.shape[:2]
    side_y, side_x = min(side, h - y), min(side, w - x)
    canvas[y:y + side_y, x:x + side_x] = small[:side_y, :side_x]
    return (box - a) * s + np.array([x, y, x, y], np.float32)


def _collage(photos: list, cells: tuple[int, int], flip_from: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``photos`` [(image, faces, ignore)] shrunk into a rows x cols grid on a 1280x720 canvas."""
    rows, cols = cells
    canvas = _canvas(rows * 10 + cols)
    ch, cw = CANVAS[0] // rows, CANVAS[1] // cols
    faces, ignore = [], []
    for i, (img, f, ig) in enumerate(photos[:rows * cols]):
        if i >= flip_from:  # repeats are mirrored
            img = img[:, ::-1].copy()
            w = img.shape[1]
            f, ig = (np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1) if len(b) else b for b in (f, ig))
        s = min(ch / img.shape[0], cw / img.shape[1])
        nh, nw = int(img.shape[0] * s), int(img.shape[1] * s)
        r, c = divmod(i, cols)
        y0, x0 = r * ch + (ch - nh) // 2, c * cw + (cw - nw) // 2
        canvas[y0:y0 + nh, x0:x0 + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        off = np.array([x0, y0, x0, y0], np.float32)
        faces.append(f * s + off)
        ignore.append(ig * s + off)
    return canvas, np.concatenate(faces), np.concatenate(ignore)


def scenes(data_root: Path, labels: Optional[dict] = None) -> list[Scene]:
    """Every labelled scene, built from ``data_root`` (holding ``bbt/`` and ``lfw/``)."""
    from edgeface.preprocess import read_image

    labels = labels or read_labels()
    data_root = Path(data_root)
    out = []
    bbt = []
    for name, entry in sorted(labels["bbt"].items()):
        img = read_image(data_root / "bbt" / "group" / name)
        f, ig = _boxes(entry["faces"]), _boxes(entry["ignore"])
        bbt.append((img, f, ig))
        out.append(Scene(f"bbt_{Path(name).stem}", img, f, ig))
    out.append(Scene("far_2x2", *_collage(bbt[:4], (2, 2), 4)))
    out.append(Scene("far_3x3", *_collage(bbt + bbt[:4], (3, 3), 5)))
    out.append(Scene("far_4x4", *_collage(bbt * 4, (4, 4), 5)))

    lfw = [(read_image(data_root / "lfw" / "images_deepfunneled" / p["file"]), _boxes(p["box"])[0])
           for p in labels["lfw"]]
    # 48 faces of 20-56 px on a jittered 8 x 6 grid
    rng = np.random.default_rng(7)
    canvas, faces = _canvas(1), []
    sizes = (20, 22, 24, 26, 28, 30, 32, 36, 40, 44, 48, 56)
    for i, (img, box) in enumerate(lfw[:48]):
        r, c = divmod(i, 8)
        x = c * 160 + int(rng.integers(0, 60))
        y = r * 120 + int(rng.integers(0, 25))
        faces.append(_paste_lfw(canvas, img, box, sizes[i % len(sizes)], x, y))
    out.append(Scene("lfw_small", canvas, np.stack(faces), _boxes([])))
    # one large face beside small ones
    canvas = _canvas(2)
    faces = [_paste_lfw(canvas, lfw[0][0], lfw[0][1], 400, 20, 60)]
    for i, (img, box) in enumerate(lfw[1:13]):
        r, c = divmod(i, 4)
        faces.append(_paste_lfw(canvas, img, box, (24, 32, 48, 64)[r % 4 if r < 3 else 0] + 4 * c,
                                700 + c * 140, 60 + r * 200))
    out.append(Scene("lfw_mixed", canvas, np.stack(faces), _boxes([])))
    # one LFW photo as it is (a portrait, a door camera close up)
    img, box = lfw[1]
    out.append(Scene("lfw_native", img, box[None], _boxes([])))
    # a face filling the frame: the whole LFW photo at 900 px, and its centre at 800 px
    big = cv2.resize(img, (900, 900), interpolation=cv2.INTER_CUBIC)
    out.append(Scene("lfw_press", big, (box * 900 / img.shape[1])[None], _boxes([])))
    a, b = 60, 190
    close = cv2.resize(img[a:b, a:b], (800, 800), interpolation=cv2.INTER_CUBIC)
    out.append(Scene("lfw_closeup", close, ((box - a) * 800 / (b - a))[None], _boxes([])))
    return out


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from edgeface.blazeface import iou

    return np.stack([iou(x, b) for x in a]) if len(a) and len(b) else np.zeros((len(a), len(b)))


def score(boxes: np.ndarray, scene: Scene, min_face: int = MIN_FACE) -> dict:
    """Which labels the detections ``boxes`` (K, 4) found (greedy by IoU >= 0.3) and how many are false."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    m = _iou_matrix(scene.faces, boxes)
    found = np.zeros(len(scene.faces), bool)
    used = np.zeros(len(boxes), bool)
    for flat in np.argsort(-m, axis=None):
        i, j = np.unravel_index(flat, m.shape)
        if m[i, j] < MATCH_IOU:
            break
        if not found[i] and not used[j]:
            found[i] = used[j] = True
    false = 0
    for j in np.flatnonzero(~used):
        in_ignore = len(scene.ignore) and (_iou_matrix(boxes[j:j + 1], scene.ignore) > 0.1).any()
        if not in_ignore:
            false += 1
    sides = np.maximum(scene.faces[:, 2] - scene.faces[:, 0], scene.faces[:, 3] - scene.faces[:, 1])
    return {"sides": sides, "found": found, "false": false, "target": sides >= min_face}


def summarize(per_scene: dict[str, dict]) -> dict:
    """Recall of faces >= 20 px, recall per size bucket, large faces lost, false detections."""
    sides = np.concatenate([r["sides"] for r in per_scene.values()])
    found = np.concatenate([r["found"] for r in per_scene.values()])
    target = sides >= MIN_FACE
    buckets = {}
    for lo, hi in zip(BUCKETS[:-1], BUCKETS[1:]):
        sel = (sides >= lo) & (sides < hi)
        buckets[f"{lo}-{hi if hi < 100000 else ''}"] = {"faces": int(sel.sum()), "found": int(found[sel].sum())}
    large = sides >= LARGE_FACE
    return {"faces": int(target.sum()), "found": int(found[target].sum()),
            "recall": float(found[target].mean()) if target.any() else float("nan"),
            "large_faces": int(large.sum()), "large_lost": int((large & ~found).sum()),
            "false_detections": int(sum(r["false"] for r in per_scene.values())),
            "by_size": buckets,
            "lost": {name: [int(s) for s in r["sides"][~r["found"] & r["target"]]]
                     for name, r in per_scene.items() if (~r["found"] & r["target"]).any()}}


DEFAULT_CONFIGS = (
    {"name": "default", "detector": None},
    {"name": "short_range", "detector": "short_range"},
    {"name": "short_range tiles 3", "detector": "short_range", "tiles": 3},
    {"name": "full_range", "detector": "full_range"},
)


def run(models: Path, data: Path, settings: dict, show_progress: bool = True) -> dict:
    """Recall, false detections and median detection time per scene of every configuration, interleaved."""
    from edgeface.detect import FaceDetector, resolve_detector

    data_root = Path(data).parent if (Path(data) / "pairs.txt").is_file() else Path(data)
    info = common.machine_info()
    all_scenes = scenes(data_root)
    runs = int(settings.get("runs", 5))
    threads = settings.get("threads", 1)
    out = {"machine": info, "runs": runs, "threads": threads, "min_face": MIN_FACE, "large_face": LARGE_FACE,
           "labels": str(LABELS.name), "precisions": {}}
    for precision in settings.get("precisions", ["int8"]):
        dets = []
        for c in settings.get("configs", DEFAULT_CONFIGS):
            config = resolve_detector(models, precision, c.get("detector"))
            dets.append((c, FaceDetector(config, threads=threads, tiles=c.get("tiles", 1),
                                         min_face=c.get("min_face"))))
        results = {c["name"]: {} for c, _ in dets}
        times = {c["name"]: {s.name: [] for s in all_scenes} for c, _ in dets}
        for s in common.progress(all_scenes, f"face sizes ({precision})", enabled=show_progress):
            for c, d in dets:
                faces = d.detect(s.image)  # warm-up, and the faces scored
                results[c["name"]][s.name] = score(np.array([f.box for f in faces]), s)
            rng = np.random.default_rng(0)
            for _ in range(runs):  # interleaved: load bursts hurt every configuration alike
                for k in rng.permutation(len(dets)):
                    c, d = dets[k]
                    t0 = time.perf_counter()
                    d.detect(s.image)
                    times[c["name"]][s.name].append(time.perf_counter() - t0)
        rows = []
        for c, d in dets:
            name = c["name"]
            summ = summarize(results[name])
            summ["config"] = {"detector": d.name, "tiles": d.tiles, "min_face": d.min_face,
                              "models": [m.path.name for m in d.models], "tile_model": d.tile_model.path.name}
            summ["median_ms"] = {sc: 1000 * float(np.median(t)) for sc, t in times[name].items()}
            summ["scenes"] = {sc: {"faces": int(r["target"].sum()), "found": int(r["found"][r["target"]].sum()),
                                   "false": int(r["false"]), "shape": list(s.image.shape[:2])}
                              for (sc, r), s in zip(results[name].items(), all_scenes)}
            rows.append((name, summ))
        base = dict(rows).get("short_range")
        for _name, summ in rows:
            if base:
                summ["time_ratio_vs_short_range"] = {
                    sc: summ["median_ms"][sc] / max(base["median_ms"][sc], 1e-9) for sc in summ["median_ms"]}
        out["precisions"][precision] = dict(rows)
    return out


def markdown(r: dict) -> str:
    lines = [common.header("Face sizes: recall, false detections, latency", r["machine"],
                           f"Labelled scenes from {r['labels']} (bbt group photos, shrunk collages, LFW mosaics); a "
                           f"face counts from {r['min_face']} px; found = IoU >= {MATCH_IOU}; {r['runs']} interleaved "
                           f"timed runs per scene, {r['threads']} thread(s), medians.")]
    for precision, rows in r["precisions"].items():
        first = next(iter(rows.values()))
        buckets = list(first["by_size"])
        lines.append(f"\n### {precision}\n")
        lines.append(common.md_table(
            ["configuration", f"found (>= {r['min_face']} px)", "recall"] + [f"{b} px" for b in buckets]
            + [f"large (>= {r['large_face']} px) lost", "false detections"],
            [[name, f"{s['found']}/{s['faces']}", f"{100 * s['recall']:.1f}%"]
             + [f"{v['found']}/{v['faces']}" for v in s["by_size"].values()]
             + [s["large_lost"], s["false_detections"]] for name, s in rows.items()]))
        scenes_ = list(first["median_ms"])
        lines.append("\nMedian detection time per image (ms), and the ratio to short_range alone:\n")
        lines.append(common.md_table(
            ["configuration"] + [f"{sc} {first['scenes'][sc]['shape'][1]}x{first['scenes'][sc]['shape'][0]}"
                                 for sc in scenes_],
            [[name] + [f"{s['median_ms'][sc]:.1f}"
                       + (f" ({s['time_ratio_vs_short_range'][sc]:.1f}x)" if "time_ratio_vs_short_range" in s else "")
                       for sc in scenes_] for name, s in rows.items()]))
        name, s = next(iter(rows.items()))
        if s["lost"]:
            lines.append(f"\nFaces >= {r['min_face']} px that {name} missed (scene: sides in px): "
                         + "; ".join(f"{n}: {v}" for n, v in s["lost"].items()))
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> Path:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for precision, rows in r["precisions"].items():
        for name, s in rows.items():
            labels_ = list(s["by_size"])
            rec = [v["found"] / v["faces"] if v["faces"] else np.nan for v in s["by_size"].values()]
            axes[0].plot(range(len(labels_)), rec, marker="o", label=f"{name} ({precision})")
            ms = list(s["median_ms"].values())
            axes[1].plot(range(len(ms)), ms, marker="o", label=f"{name} ({precision})")
        axes[0].set_xticks(range(len(labels_)), [f"{b}" for b in labels_], rotation=30)
        axes[1].set_xticks(range(len(ms)), list(next(iter(rows.values()))["median_ms"]), rotation=60, fontsize=7)
    axes[0].set_xlabel("face side (px)")
    axes[0].set_ylabel("recall")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=7)
    axes[1].set_ylabel("median detection ms per image")
    axes[1].set_yscale("log")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
