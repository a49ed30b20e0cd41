"""edgeface against face_recognition (dlib HOG detector + dlib ResNet 128-d) on the same LFW pairs, one run.

For every image, in alternating order, both pipelines find the faces, pick the central one (the same rule for
both) and embed it; the per-image wall time of each is recorded. Scores: cosine similarity for edgeface,
minus the Euclidean distance for dlib (its documented match rule is distance <= 0.6). Accuracy is
cross-validated on the pairs (threshold chosen on the other folds), so neither side gets a threshold fitted on
its test pairs. A missed face makes the pair an error for both.

face_recognition is an optional extra, never a core dependency: ``pip install 'edgeface[peers]'`` (it brings
face_recognition, face-recognition-models and the prebuilt ``dlib-bin`` wheel; ``face_recognition`` itself is
installed with ``--no-deps`` when only ``dlib-bin`` provides dlib, see benchmarks/README.md).
"""
from __future__ import annotations

import logging
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from . import common

log = logging.getLogger(__name__)


def _face_recognition():
    try:
        import face_recognition
    except ImportError as exc:
        return None, str(exc)
    return face_recognition, None


def cv_accuracy(scores: np.ndarray, same: np.ndarray, folds: int, seed: int = 0) -> tuple[float, float]:
    from edgeface import evaluate

    rng = np.random.default_rng(seed)
    f = np.empty(len(scores), int)
    for cls in (True, False):
        idx = np.flatnonzero(same == cls)
        f[rng.permutation(idx)] = np.arange(len(idx)) % folds
    k = evaluate.kfold_accuracy(scores, same, f)
    return k.mean, k.std


def run(models: Path, lfw: Path, settings: dict, show_progress: bool = True) -> dict:
    from edgeface import evaluate, preprocess
    from edgeface.lfw import central_face, pair_files

    lfw = Path(lfw)
    fr, err = _face_recognition()
    notes = []
    pairs = evaluate.read_pairs(lfw / settings["pairs_file"])
    if settings.get("pairs"):
        n = settings["pairs"]
        pairs = [p for p in pairs if p.same][:n] + [p for p in pairs if not p.same][:n]
    files = pair_files(pairs, lfw)
    variants, vnotes = common.model_variants(models, [settings["precision"]])
    if not variants:
        raise common.BenchmarkError(f"no {settings['precision']} models in {models}")
    rec = variants[0].recognizer(threads=1)
    if fr is None:
        notes.append(f"face_recognition not installed ({err}): peer column skipped; pip install 'edgeface[peers]'")
    ours, theirs, t_ours, t_theirs = {}, {}, [], []
    for i, f in enumerate(common.progress(files, "peers", enabled=show_progress)):
        jobs = [("edgeface", f)] + ([("face_recognition", f)] if fr else [])
        if i % 2:
            jobs.reverse()
        for who, path in jobs:
            t0 = time.perf_counter()
            if who == "edgeface":
                image = preprocess.read_image(path)
                faces = rec.detect(image)
                c = central_face(faces, image.shape)
                ours[path] = None if c is None else rec.embed_face(image, faces[c])
                t_ours.append(time.perf_counter() - t0)
            else:
                image = fr.load_image_file(str(path))
                locs = fr.face_locations(image)  # HOG, upsample 1: the library's default
                boxes = [type("F", (), {"box": np.array([l, t, r, b], float)})() for t, r, b, l in locs]
                c = central_face(boxes, image.shape)
                theirs[path] = None if c is None else fr.face_encodings(image, [locs[c]])[0]
                t_theirs.append(time.perf_counter() - t0)
    same = np.array([p.same for p in pairs])

    def scores(emb, metric):
        s = np.full(len(pairs), np.nan)
        for k, p in enumerate(pairs):
            a = emb.get(evaluate.lfw_image_path(lfw, p.name1, p.n1))
            b = emb.get(evaluate.lfw_image_path(lfw, p.name2, p.n2))
            if a is not None and b is not None:
                s[k] = float(np.dot(a, b)) if metric == "cos" else -float(np.linalg.norm(a - b))
        return s

    def summary(name, emb, s, times, extra):
        acc, std = cv_accuracy(s, same, settings["cv_folds"])
        tar, thr = evaluate.tar_at_far(s, same, 1e-3)
        return dict({"name": name, "pairs": len(pairs), "images": len(files),
                     "images_without_face": sum(e is None for e in emb.values()),
                     "failed_pairs": int(np.isnan(s).sum()), "cv_accuracy": acc, "cv_accuracy_std": std,
                     "roc_auc": evaluate.roc_auc(s, same), "tar_at_far_1e-3": tar,
                     "per_image_ms": common.stats_ms(times)}, **extra)

    label = f"edgeface {settings['precision']} ({rec.detector.name} + {rec.embedder.manifest['family']}, 1 thread)"
    rows = [summary(label, ours,
                    scores(ours, "cos"), t_ours, {"threshold_rule": "cosine >= threshold"})]
    if fr is not None:
        s_fr = scores(theirs, "l2")
        extra = {"threshold_rule": "distance <= threshold",
                 "accuracy_at_library_default_0.6": evaluate.accuracy_at(s_fr, same, -0.6),
                 "versions": {k: _version(k) for k in ("face-recognition", "face-recognition-models", "dlib-bin",
                                                      "dlib")}}
        rows.append(summary("face_recognition (dlib HOG + ResNet)", theirs, s_fr, t_theirs, extra))
    return {"benchmark": "peers", "machine": common.machine_info(), "settings": settings, "notes": notes + vnotes,
            "peers": rows, "impostor_pairs": int((~same).sum())}


def _version(name: str):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [common.header("Peer comparison on LFW", result["machine"],
                           f"Same {result['peers'][0]['pairs']} pairs of {s['pairs_file']}, same images, "
                           "interleaved per "
                           f"image in one run; accuracy {s['cv_folds']}-fold cross-validated over the pairs. TAR at "
                           f"FAR 1e-3 on {result['impostor_pairs']} impostor pairs (below 1,000 it means: no false "
                           "accept at all).")]
    lines.append(common.md_table(
        ["pipeline", "accuracy %", "ROC AUC", "TAR@FAR1e-3", "no face", "ms/image median", "p95", "min"],
        [[r["name"], f"{100 * r['cv_accuracy']:.2f} ± {100 * r['cv_accuracy_std']:.2f}", round(r["roc_auc"], 4),
          round(r["tar_at_far_1e-3"], 4), f"{r['images_without_face']}/{r['images']}", r["per_image_ms"]["median"],
          r["per_image_ms"]["p95"], r["per_image_ms"]["min"]] for r in result["peers"]]))
    for r in result["peers"]:
        if "accuracy_at_library_default_0.6" in r:
            lines.append(f"\nface_recognition at its documented tolerance 0.6: "
                         f"{100 * r['accuracy_at_library_default_0.6']:.2f}%; versions {r['versions']}.")
    if result["notes"]:
        lines.append(common.notes_markdown(result["notes"]))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for r in result["peers"]:
        ax.scatter(r["per_image_ms"]["median"], 100 * r["cv_accuracy"], s=40)
        ax.annotate(r["name"].split(" (")[0], (r["per_image_ms"]["median"], 100 * r["cv_accuracy"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("median ms per image (detect + embed)")
    ax.set_ylabel("LFW pairs accuracy %")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
