"""Open-set operating points: thresholds for a false-positive identification rate at a gallery size.

A door asks "is this anyone in my gallery?": a stranger is let in when their best match over the whole
gallery reaches the threshold, so the threshold for a given stranger rate (FPIR) rises with the gallery size.
:func:`calibrate_open_set` measures it on LFW DevTrain (never the test people), for galleries of
``GALLERY_SIZES`` people (one photo each, nested: the 10 are among the 100, the 100 among the 1000):

* gallery: the first photo of ``N`` DevTrain people chosen with a fixed seed;
* mated probes: the second photo of every gallery person who has one (FNIR = share of them whose best
  match is not their own gallery entry at or above the threshold);
* non-mated probes (distractors): the first photo of DevTrain people outside the largest gallery (FPIR = share
  whose best match reaches the threshold).

The thresholds go into the embedder manifest's ``operating_points`` as ``fpir_<rate>@<size>`` (next to the
pair points ``far_<rate>``), with the FNIR measured there. ``edgeface-device`` can name them in
``operating_point``; ``fpir_<rate>`` alone picks the size for the enrolled gallery
(:func:`edgeface.embed.open_set_point`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeface.evaluate import read_people

log = logging.getLogger(__name__)

GALLERY_SIZES = (10, 100, 1000)
FPIR_RATES = (0.01, 0.001)
DISTRACTORS = 1500
SEED = 20260110


def devtrain_people(lfw_root: Path) -> list[tuple[str, int]]:
    """``(name, number of photos)`` of every person in LFW ``peopleDevTrain.txt``, file order."""
    listing = Path(lfw_root) / "peopleDevTrain.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: not found; open-set operating points use LFW DevTrain people")
    return read_people(listing)


def protocol(people: Sequence[tuple[str, int]], sizes: Sequence[int] = GALLERY_SIZES,
             distractors: int = DISTRACTORS, seed: int = SEED) -> dict:
    """Which photos play which role: ``{"gallery": [(name, n)], "mated": [(name, n)], "distractors": [...]}``.

    The gallery order is the nesting order (the first 10 form the 10-person gallery, and so on). People with
    two or more photos are placed first so that the small galleries have mated probes.
    """
    largest = max(sizes)
    if len(people) < largest + 1:
        raise ValueError(f"{len(people)} people cannot make a {largest}-person gallery plus distractors")
    rng = np.random.default_rng(seed)
    order = [people[i] for i in rng.permutation(len(people))]
    multi = [p for p in order if p[1] >= 2]
    single = [p for p in order if p[1] < 2]
    gallery = (multi + single)[:largest]
    chosen = {name for name, _ in gallery}
    rest = [p for p in order if p[0] not in chosen][:distractors]
    return {"gallery": [(name, 1) for name, _ in gallery],
            "mated": [(name, 2) for name, count in gallery if count >= 2],
            "distractors": [(name, 1) for name, _ in rest]}


def thresholds_from_scores(gallery_best: np.ndarray, mated_own: np.ndarray, mated_best_other: np.ndarray,
                           rates: Sequence[float] = FPIR_RATES) -> dict:
    """Threshold and FNIR for each FPIR ``rate``.

    ``gallery_best``: each distractor's best similarity over the gallery. ``mated_own``: each mated probe's
    similarity to its own gallery entry; ``mated_best_other``: its best similarity to anyone else. A mated
    probe is found when its own score reaches the threshold and beats every other entry.
    The threshold is just above the ``floor(rate * n) + 1``-th largest distractor score (rounded up to 4
    decimals), so FPIR <= rate on these distractors.
    """
    d = np.sort(np.asarray(gallery_best, np.float64))[::-1]
    own = np.asarray(mated_own, np.float64)
    other = np.asarray(mated_best_other, np.float64)
    out = {}
    for rate in rates:
        allowed = int(np.floor(rate * len(d)))  # distractors allowed at or above the threshold
        if allowed < len(d):  # just above the first distractor that must be rejected (4 decimals, rounded up)
            thr = round(float(d[allowed]) + 1e-4, 4)
            thr = thr if thr > d[allowed] else thr + 1e-4
        else:
            thr = float(d[-1])
        fpir = float(np.mean(d >= thr))
        found = (own >= thr) & (own > other)
        out[rate] = {"min_cosine_similarity": round(thr, 5), "fpir": round(fpir, 5),
                     "fnir": round(float(1 - found.mean()), 4) if len(own) else None,
                     "distractors": int(len(d)), "mated_probes": int(len(own))}
    return out


def calibrate_open_set(recognizer, lfw_root: Path, sizes: Sequence[int] = GALLERY_SIZES,
                       rates: Sequence[float] = FPIR_RATES, distractors: int = DISTRACTORS,
                       progress=None) -> dict:
    """``{"fpir_<rate>@<size>": {min_cosine_similarity, fpir, fnir, ...}}`` for ``recognizer`` on LFW DevTrain.

    Photos where no face is found are dropped from their role (logged): a gallery entry without a face
    shrinks that gallery by one person.
    """
    from edgeface.evaluate import lfw_image_path
    from edgeface.lfw import embed_files

    lfw_root = Path(lfw_root)
    roles = protocol(devtrain_people(lfw_root), sizes, distractors)
    paths = {role: [lfw_image_path(lfw_root, n, i) for n, i in items] for role, items in roles.items()}
    every = [p for role in ("gallery", "mated", "distractors") for p in paths[role]]
    emb = embed_files(recognizer, every, progress or (lambda it: it))
    missing = sum(1 for p in every if emb.get(p) is None)
    if missing:
        log.warning("open-set calibration: no face in %d of %d photos (dropped)", missing, len(every))
    gallery_names = [n for n, _ in roles["gallery"]]
    g = {n: emb.get(p) for n, p in zip(gallery_names, paths["gallery"])}
    d = np.stack([e for e in (emb.get(p) for p in paths["distractors"]) if e is not None])
    mated = [(n, emb.get(p)) for (n, _), p in zip(roles["mated"], paths["mated"])]
    points = {}
    for size in sorted(sizes):
        names = [n for n in gallery_names[:size] if g[n] is not None]
        G = np.stack([g[n] for n in names])
        best = (d @ G.T).max(axis=1)
        pos = {n: i for i, n in enumerate(names)}
        own, other = [], []
        for n, e in mated:
            if n not in pos:
                continue
            if e is None:  # no face in the probe: never found
                own.append(-1.0), other.append(1.0)
                continue
            s = G @ e
            own.append(float(s[pos[n]]))
            other.append(float(np.max(np.delete(s, pos[n]))) if len(s) > 1 else -1.0)
        for rate, point in thresholds_from_scores(best, np.array(own), np.array(other), rates).items():
            points[f"fpir_{rate:g}@{size}"] = dict(point, gallery=len(names))
    log.info("open-set points: %s", {k: v["min_cosine_similarity"] for k, v in points.items()})
    return points
