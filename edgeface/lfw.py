"""LFW verification with the real pipeline: every image detected, cropped and embedded; no pair dropped."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from . import blazeface, evaluate, preprocess

if TYPE_CHECKING:
    from .detect import Face

log = logging.getLogger(__name__)


def central_face(faces: Sequence, image_shape: tuple) -> Optional[int]:
    """Index of the subject's face in a LFW-style photo: large and near the centre (FaceNet's rule:
    box area minus twice the squared offset from the image centre). None if there is no face."""
    if not faces:
        return None
    h, w = image_shape[:2]
    best, best_score = None, -np.inf
    for i, f in enumerate(faces):
        x1, y1, x2, y2 = f.box
        size = (x2 - x1) * (y2 - y1)
        offset = ((x1 + x2) / 2 - w / 2) ** 2 + ((y1 + y2) / 2 - h / 2) ** 2
        score = size - 2.0 * offset
        if score > best_score:
            best, best_score = i, score
    return best


def central_faces(detect: Callable[[np.ndarray], Sequence["Face"]], paths: Iterable[Path],
                  transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                  ) -> Iterator[tuple[Path, Optional[np.ndarray], Optional["Face"]]]:
    """``(path, image, face)`` for each file: its RGB image and the :func:`central_face` that ``detect`` finds.

    ``transform`` is applied to the decoded image before detection (a degradation, an enhancement) and the
    transformed image is the one yielded. ``face`` is ``None`` when no face is found; ``image`` too when the
    file cannot be read (logged as a warning, never raised: a bad file counts as a face not found).
    """
    for path in paths:
        try:
            image = preprocess.read_image(path)
        except preprocess.ImageError as exc:
            log.warning("%s", exc)
            yield path, None, None
            continue
        if transform is not None:
            image = transform(image)
        faces = detect(image)
        i = central_face(faces, image.shape)
        yield path, image, None if i is None else faces[i]


def embed_files(recognizer, paths: Iterable[Path],
                progress: Callable[[Iterable], Iterable] = lambda it: it,
                transform: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> dict[Path, Optional[np.ndarray]]:
    """Embedding of the central face of each file; ``None`` when no face is found or the file is bad.

    ``transform`` as in :func:`central_faces`.
    """
    return {path: None if face is None else recognizer.embed_face(image, face)
            for path, image, face in central_faces(recognizer.detect, progress(list(paths)), transform)}


def crop_files(detect: Callable[[np.ndarray], Sequence["Face"]], paths: Iterable[Path], recipe: dict,
               progress: Callable[[Iterable], Iterable] = lambda it: it,
               landmarker=None) -> dict[Path, Optional[np.ndarray]]:
    """Embedder input crop (``recipe`` from an embedder manifest) of the central face of each file found by
    ``detect``; ``None`` when no face is found or the file is bad. Lets several embedders see the same crops.
    ``landmarker``: the landmark model a five-point recipe needs (:func:`edgeface.embed.landmarker_for`)."""
    from .embed import face_crop

    return {path: None if face is None else face_crop(image, face.box, face.keypoints, recipe, landmarker)
            for path, image, face in central_faces(detect, progress(list(paths)))}


def pair_scores(pairs: Sequence[evaluate.Pair], embeddings: dict, lfw_root: str | os.PathLike,
                second: Optional[dict] = None) -> np.ndarray:
    """Cosine similarity per pair; NaN where a face is missing (counted as an error by the metrics).

    ``second``: embeddings for each pair's second image when they differ from the first's (a degraded probe
    against a clean enrollment photo); default ``embeddings`` for both.
    """
    second = embeddings if second is None else second
    scores = np.full(len(pairs), np.nan)
    for k, p in enumerate(pairs):
        a = embeddings.get(evaluate.lfw_image_path(lfw_root, p.name1, p.n1))
        b = second.get(evaluate.lfw_image_path(lfw_root, p.name2, p.n2))
        if a is not None and b is not None:
            scores[k] = float(np.dot(a, b))
    return scores


def pair_files(pairs: Sequence[evaluate.Pair], lfw_root: str | os.PathLike) -> list[Path]:
    files = {evaluate.lfw_image_path(lfw_root, p.name1, p.n1) for p in pairs}
    files |= {evaluate.lfw_image_path(lfw_root, p.name2, p.n2) for p in pairs}
    return sorted(files)


def evaluate_lfw(recognizer, lfw_root: str | os.PathLike, pairs_file: str | os.PathLike,
                 limit: Optional[int] = None, progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict:
    """Run the pairs protocol in ``pairs_file`` and return :func:`edgeface.evaluate.summarize` plus counts.

    ``limit`` keeps the first ``limit // 2`` same and different pairs (a quick check, not the protocol).
    """
    pairs = evaluate.read_pairs(pairs_file)
    pairs = evaluate.first_pairs(pairs, limit)
    files = pair_files(pairs, lfw_root)
    embeddings = embed_files(recognizer, files, progress)
    scores = pair_scores(pairs, embeddings, lfw_root)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    result = evaluate.summarize(scores, same, folds if len(set(folds.tolist())) > 1 else None)
    threshold = float(recognizer.min_cosine_similarity)
    result.update({
        "model_threshold": threshold,
        "accuracy_at_model_threshold": evaluate.accuracy_at(scores, same, threshold),
        "pairs_file": Path(pairs_file).name,
        "images": len(files),
        "images_without_face": sum(e is None for e in embeddings.values()),
        "precision": recognizer.precision,
        "detector": recognizer.detector.name,
        "detector_models": [m.path.name for m in recognizer.detector.members],
        "embedder": recognizer.embedder.manifest["model_file"],
    })
    result["_scores"] = scores
    result["_same"] = same
    return result


def detector_fidelity(float_model: Path, variant_model: Path, files: Sequence[Path], threads: Optional[int] = None,
                      progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict:
    """A detector variant (e.g. int8) against its float32 model on ``files`` (``edgeface report``, and
    ``benchmarks/detector_fidelity.py``): recall against float (the central float face found again with IoU
    > 0.3), median and 5th-percentile IoU, keypoint error relative to the box width, extra detections."""
    from .detect import FaceDetector

    fdet, vdet = FaceDetector(float_model, threads=threads), FaceDetector(variant_model, threads=threads)
    found_f = found_both = extra = 0
    ious, kp_err = [], []
    for f in progress(files):
        image = preprocess.read_image(f)
        a, b = fdet.detect(image), vdet.detect(image)
        extra += max(0, len(b) - len(a))
        if not a:
            continue
        found_f += 1
        i = central_face(a, image.shape)
        if not b:
            continue
        ov = blazeface.iou(a[i].box, np.stack([x.box for x in b]))
        j = int(np.argmax(ov))
        if ov[j] > 0.3:
            found_both += 1
            ious.append(float(ov[j]))
            size = float(a[i].box[2] - a[i].box[0])
            kp_err.append(float(np.linalg.norm(a[i].keypoints[:4] - b[j].keypoints[:4], axis=1).mean()) / size)
    return {"images": len(files), "float_found": found_f, "variant_found_where_float_did": found_both,
            "recall_vs_float": round(found_both / max(found_f, 1), 4), "extra_detections": extra,
            "median_iou": round(float(np.median(ious)), 4) if ious else None,
            "p05_iou": round(float(np.percentile(ious, 5)), 4) if ious else None,
            "median_keypoint_error_rel_box": round(float(np.median(kp_err)), 5) if kp_err else None}
