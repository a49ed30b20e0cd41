"""Calibrated thresholds of an embedder manifest, from LFW DevTrain only (never the test pairs): the
accuracy-optimal ``min_cosine_similarity``, the pair false-accept operating points (``far_<rate>``) and the
open-set points (``fpir_<rate>@<gallery size>``). Used by ``edgeface build`` and by pruning."""
from __future__ import annotations

import logging
from pathlib import Path

from . import common

log = logging.getLogger(__name__)

THRESHOLD_PAIRS_FILE = "pairsDevTrain.txt"


def _detector_name(detector) -> str:
    """What a manifest records of the detector thresholds were calibrated with: a configuration's name
    (``auto``) or a model file's name."""
    return getattr(detector, "name", None) if not isinstance(detector, (str, Path)) else Path(detector).name


def calibrate_open_set_points(detector, embedder_path: Path, lfw_root: Path) -> dict:
    """Add ``fpir_<rate>@<size>`` open-set points (:mod:`.openset`) to the embedder manifest.

    ``detector``: a detector model file or a :class:`edgeface.detect.DetectorConfig` (the build passes the
    folder's default configuration, the one the device runs)."""
    from edgeface.manifest import read_manifest, write_manifest
    from edgeface.recognizer import FaceRecognizer

    from . import openset

    rec = FaceRecognizer(detector_path=detector, embedder_path=embedder_path, min_cosine_similarity=0.0)
    precision = read_manifest(embedder_path)["precision"]
    points = openset.calibrate_open_set(rec, lfw_root,
                                        progress=lambda it: common.progress(it, f"open-set points ({precision})"))
    data = read_manifest(embedder_path)
    data["embedder"].setdefault("operating_points", {}).update(points)
    data["embedder"]["open_set_source"] = (
        f"LFW peopleDevTrain: galleries of {'/'.join(str(s) for s in openset.GALLERY_SIZES)} people (one photo "
        f"each, nested), their second photos as mated probes, {openset.DISTRACTORS} other DevTrain people as "
        f"distractors; detector {_detector_name(detector)}")
    write_manifest(embedder_path, data)
    return points


def calibrate_embedding_mean(detector, embedder_paths: list[Path], lfw_root: Path, limit: int = 600) -> list[float]:
    """Write the mean one-run embedding of LFW DevTrain faces as ``embedding_mean`` into every manifest of
    ``embedder_paths`` (the first is measured: the float model, so that every precision shares one centre and
    one embedding space); :class:`edgeface.embed.FaceEmbedder` subtracts it from each run's normalized output.

    The faces are those of the first ``limit`` pairs of :data:`THRESHOLD_PAIRS_FILE`, each crop and its mirror
    (what a flipped embedding averages). Run it before the thresholds, which are then calibrated on centred
    embeddings. Fewer than 100 faces found: :class:`CalibrationError`, and no manifest is changed.
    """
    import numpy as np

    from edgeface import evaluate
    from edgeface.calibration_data.builder import CalibrationError
    from edgeface.lfw import crop_files, pair_files
    from edgeface.manifest import read_manifest, write_manifest
    from edgeface.recognizer import FaceRecognizer

    rec = FaceRecognizer(detector_path=detector, embedder_path=embedder_paths[0], min_cosine_similarity=0.0)
    emb = rec.embedder
    emb.center = None  # the model's own outputs, whatever centre its manifest may already carry
    pairs = evaluate.first_pairs(evaluate.read_pairs(lfw_root / THRESHOLD_PAIRS_FILE), limit)
    crops = [c for c in crop_files(rec.detect, pair_files(pairs, lfw_root), emb.recipe,
                                   lambda it: common.progress(it, "embedding mean"), emb.landmarker).values()
             if c is not None]
    if len(crops) < 100:
        raise CalibrationError(f"only {len(crops)} faces found in the first {len(pairs)} pairs of "
                               f"{lfw_root / THRESHOLD_PAIRS_FILE} for the embedding mean (need 100)")
    runs = [emb.embed_crop(c, flip=False) for c in crops] + [emb.embed_crop(c[:, ::-1], flip=False) for c in crops]
    mean = [round(float(v), 6) for v in np.mean(runs, axis=0)]
    source = (f"mean of the float32 model's normalized outputs on {len(crops)} LFW {THRESHOLD_PAIRS_FILE} faces "
              f"(first {len(pairs)} pairs) and their mirrors, detector {_detector_name(detector)}")
    for path in embedder_paths:
        data = read_manifest(path)
        data["embedder"].update(embedding_mean=mean, embedding_mean_source=source)
        write_manifest(path, data)
    log.info("embedding mean: length %.3f over %d faces", float(np.linalg.norm(mean)), len(crops))
    return mean


def calibrate_min_cosine_similarity(detector, embedder_path: Path, lfw_root: Path,
                                    limit: int = 600) -> dict:
    """Set the embedder manifest's ``min_cosine_similarity`` from LFW DevTrain (never the test pairs).

    ``detector``: a detector model file or a :class:`edgeface.detect.DetectorConfig` (the build passes the
    folder's default configuration, so the thresholds fit the faces the device will crop).

    The default is the accuracy-optimal threshold on ``limit`` DevTrain pairs. The false-accept operating
    points (FAR 1e-2, 1e-3, 1e-4) need far more impostor pairs than a pairs file has (300 impostors cannot
    measure 1e-3), so they come from every cross-identity pair of the images embedded (about 600,000
    impostor pairs for 600 pairs' images).
    """
    import numpy as np

    from edgeface import evaluate
    from edgeface.lfw import embed_files, pair_files, pair_scores
    from edgeface.manifest import read_manifest, write_manifest
    from edgeface.recognizer import FaceRecognizer

    rec = FaceRecognizer(detector_path=detector, embedder_path=embedder_path, min_cosine_similarity=0.0)
    precision = read_manifest(embedder_path)["precision"]
    pairs = evaluate.read_pairs(lfw_root / THRESHOLD_PAIRS_FILE)
    pairs = evaluate.first_pairs(pairs, limit)
    embeddings = embed_files(rec, pair_files(pairs, lfw_root),
                             lambda it: common.progress(it, f"threshold calibration ({precision})"))
    scores = pair_scores(pairs, embeddings, lfw_root)
    same = np.array([p.same for p in pairs])
    best = evaluate.best_threshold(scores, same)
    accuracy = evaluate.accuracy_at(scores, same, best)
    valid = [(path.parent.name, e) for path, e in embeddings.items() if e is not None]
    ids = np.array([name for name, _ in valid])
    emb = np.stack([e for _, e in valid])
    iu = np.triu_indices(len(emb), k=1)
    all_scores = (emb @ emb.T)[iu]
    all_same = ids[iu[0]] == ids[iu[1]]
    points = {}
    for far in (1e-2, 1e-3, 1e-4):
        tar, thr = evaluate.tar_at_far(all_scores, all_same, far)
        points[f"far_{far:g}"] = {"min_cosine_similarity": round(float(thr), 4), "tar": round(float(tar), 4)}
    section = {
        "min_cosine_similarity": round(float(best), 4),
        "threshold_source": f"accuracy-optimal on LFW {THRESHOLD_PAIRS_FILE}, first {len(same)} pairs "
                            f"({accuracy * 100:.2f}% there), detector {_detector_name(detector)}",
        "operating_points": points,
        "operating_points_source": f"all pairs of the {len(emb)} DevTrain images embedded: "
                                   f"{int((~all_same).sum())} impostor, {int(all_same.sum())} genuine",
    }
    data = read_manifest(embedder_path)
    data["embedder"].update(section)
    write_manifest(embedder_path, data)
    log.info("%s: min_cosine_similarity %.3f (%s); %s", embedder_path.name, best, section["threshold_source"],
             points)
    return section
