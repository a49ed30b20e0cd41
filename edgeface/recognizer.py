"""The public API: find faces, embed them, compare them, name them against a gallery."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from . import preprocess
from .detect import DetectorConfig, Face, FaceDetector, add_time, resolve_detector
from .embed import FaceEmbedder
from .errors import OptionError
from .gallery import Match, best_match, check_threshold
from .manifest import resolve_models

DEFAULT_MODELS_DIR = "models"


def default_models_dir() -> Path:
    """``$EDGEFACE_MODELS`` or ``./models`` (where ``edgeface build`` writes by default)."""
    return Path(os.environ.get("EDGEFACE_MODELS", DEFAULT_MODELS_DIR))


class Verification(NamedTuple):
    """Result of :meth:`FaceRecognizer.verify`: faces found in each image, cosine similarity of the best
    faces (NaN if either image has no face), the threshold used and the decision."""
    faces: tuple[int, int]
    similarity: float
    threshold: float
    same: bool


class Identity(NamedTuple):
    """One face in an image and who it is: ``name`` is None for an unknown face."""
    face: Face
    name: Optional[str]
    similarity: float


class CropMatch(NamedTuple):
    """Result of :func:`identify_crop`: the gallery's answer, the embedding it was given and whether the
    mirror image was embedded too (test-time flip)."""
    match: Match
    embedding: np.ndarray
    mirrored: bool


def needs_mirror(top: list[Match], threshold: float, band: float) -> bool:
    """Could the mirror run change a one-run answer? Yes when the best score lies within ``band`` of
    ``threshold``, or when the two best people are within ``band`` of each other at a score that could be
    accepted (the name could change). ``top``: ``gallery.match(embedding, k=2)``; ``band`` inf: always."""
    if not top or not math.isfinite(top[0].similarity):
        return False
    best = top[0].similarity
    if abs(best - threshold) < band:
        return True
    return len(top) > 1 and best >= threshold - band and best - top[1].similarity < band


def identify_crop(embedder: FaceEmbedder, crop: np.ndarray, gallery, min_cosine_similarity: float,
                  timings: Optional[dict] = None) -> CropMatch:
    """Who is the face in ``crop`` (the embedder's aligned crop)? What ``gallery.identify`` says of it.

    With the embedder's test-time flip on, the mirror image is embedded only when :func:`needs_mirror` says
    it could change the answer (``embedder.flip_band``; the gallery holds flipped embeddings from
    enrollment): the decisions of flipping every probe, for about one model run a face. ``timings`` (a
    dict) accumulates the seconds of ``embed`` (every model run) and ``match``.
    """
    t0 = time.perf_counter()
    emb = embedder.embed_crop(crop, flip=False)
    t1 = time.perf_counter()
    top = gallery.match(emb, k=2)
    t2 = time.perf_counter()
    add_time(timings, "embed", t1 - t0)
    add_time(timings, "match", t2 - t1)
    mirrored = embedder.flip and needs_mirror(top, min_cosine_similarity, embedder.flip_band)
    if mirrored:
        emb = embedder.add_mirror(crop, emb)
        t3 = time.perf_counter()
        top = gallery.match(emb, k=1)
        add_time(timings, "embed", t3 - t2)
        add_time(timings, "match", time.perf_counter() - t3)
    return CropMatch(best_match(top, min_cosine_similarity), emb, mirrored)


class FaceRecognizer:
    """Detect -> crop -> embed -> match, with int8 (default) or float models from one models folder.

    Args:
      models_dir: folder written by ``edgeface build`` (default ``$EDGEFACE_MODELS`` or ``./models``).
      precision: ``"int8"`` (small, the Edge TPU's only format; on a Pi 4 CPU not always faster than float:
        measure with ``edgeface bench``) or ``"float32"``.
      min_cosine_similarity: two faces are the same person when the cosine similarity of their embeddings
        is at least this. Default: the embedder manifest's value, calibrated on LFW DevTrain pairs (accuracy
        optimal). Raise it to cut false accepts at a door (see the operating points in the manifest), lower
        it to recognise people across larger changes of pose, age and light.
      min_detection_score: detector score in (0, 1); lower finds smaller and turned faces, and more false ones.
      detector: a detector name from the models folder's ``models.json`` (``auto``, the default of a current
        build: every face from ``min_face`` pixels to the whole frame; ``short_range``: one fast pass for faces
        that fill a good part of the frame, a door camera or a portrait; ``full_range``), or a
        :class:`edgeface.detect.DetectorConfig`. Ignored when ``detector_path`` is given.
      min_face: smallest face to find, in image pixels (default: the detector configuration's; ``auto``: 20,
        or 1/64 of the longer side of photos over 1280 px); raise it where faces are large (a door: the
        pyramid of tiles costs ~4x per halving on large frames), 0 for the whole-frame passes only.
      tiles: 1 (default); 2 or 3 also runs a fixed grid of N x N overlapping tiles (tiles**2 + 1 runs), for
        very large photos. Tile faces never replace a face the whole-frame pass found.
      threads: CPU threads per interpreter; accelerator: ``"edgetpu"`` for Coral.
      enhance: ``"none"`` (default) or ``"equalize"`` for dark or backlit scenes (see
        :func:`edgeface.preprocess.enhance` for the measured effect); applied to every image before detection
        and cropping. Enroll and recognize with the same setting.
      landmarks_path: the five-point landmark model (MTCNN O-Net) for embedders whose crop recipe names the
        five ArcFace points; default: the one listed in the ``models.json`` beside the embedder. Without one such
        an embedder aligns on the detector's four keypoints (its recipe's fallback; ``edgeface-device doctor``
        warns): a little less accurate, ~1 ms less per face.
      flip: also embed each face crop's mirror image and average (test-time flip). ``None`` follows the embedder
        manifest (the default build calibrates its thresholds with it: LFW int8 99.32 % vs 99.15 % without);
        ``False`` never mirrors (:meth:`verify` and :meth:`embed` then run the embedder once per face instead
        of twice; :meth:`identify` mirrors only near the threshold anyway, see ``flip_band``).
      flip_band: :meth:`identify` (and the device) embed the mirror only for a face whose one-run score is
        within this of the threshold or of the runner-up (default: the manifest's ``flip_band``, 0.05 in a
        current build: 1-6 % of faces, the decisions of always flipping but in a pair or so of 6,000);
        ``float("inf")`` always mirrors, 0 never (at thresholds calibrated for flipped probes).
    """

    def __init__(self, models_dir: str | os.PathLike | None = None, precision: str = "int8",
                 min_cosine_similarity: Optional[float] = None, min_detection_score: Optional[float] = None,
                 threads: Optional[int] = None, accelerator: Optional[str] = None, tiles: int = 1,
                 detector_path: str | os.PathLike | None = None, embedder_path: str | os.PathLike | None = None,
                 enhance: str = "none", detector: "str | DetectorConfig | None" = None,
                 min_face: Optional[int] = None, landmarks_path: str | os.PathLike | None = None,
                 flip: Optional[bool] = None, flip_band: Optional[float] = None):
        if enhance not in preprocess.ENHANCEMENTS:
            raise OptionError(f"unknown enhance {enhance!r}; choose one of {', '.join(preprocess.ENHANCEMENTS)}")
        if detector_path is None and not isinstance(detector, DetectorConfig):
            detector_path = resolve_detector(models_dir or default_models_dir(), precision, detector)
        elif detector_path is None:
            detector_path = detector
        if embedder_path is None:
            embedder_path = resolve_models(models_dir or default_models_dir(), precision)[1]
        self.detector = FaceDetector(detector_path, min_score=min_detection_score, threads=threads,
                                     accelerator=accelerator, tiles=tiles, min_face=min_face)
        self.embedder = FaceEmbedder(embedder_path, threads=threads, accelerator=accelerator,
                                     landmarks_path=landmarks_path, flip=flip, flip_band=flip_band)
        if min_cosine_similarity is None:
            min_cosine_similarity = self.embedder.min_cosine_similarity
        self.min_cosine_similarity = check_threshold(min_cosine_similarity)
        self.precision = precision
        self.enhance = enhance

    @property
    def embedder_id(self) -> str:
        """Embedding-space id stored in galleries (float and int8 of one upstream model share it)."""
        return self.embedder.space_id

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The image the models see: ``image`` after the ``enhance`` option (itself when it is ``"none"``)."""
        return preprocess.enhance(image, self.enhance)

    def detect(self, image: np.ndarray, max_faces: Optional[int] = None) -> list[Face]:
        """Faces in an RGB uint8 image, best first, in image pixels."""
        return self.detector.detect(self.prepare(image), max_faces)

    def _embed_prepared(self, image: np.ndarray, face: Face) -> np.ndarray:
        return self.embedder.embed_crop(self.embedder.crop(image, face.box, face.keypoints))

    def embed_face(self, image: np.ndarray, face: Face) -> np.ndarray:
        """L2-normalized embedding of one detected face (cropped per the embedder's recipe)."""
        return self._embed_prepared(self.prepare(image), face)

    def embed(self, image: np.ndarray, max_faces: Optional[int] = None) -> list[tuple[Face, np.ndarray]]:
        """Every face (best first) with its embedding."""
        image = self.prepare(image)
        return [(f, self._embed_prepared(image, f)) for f in self.detector.detect(image, max_faces)]

    def verify(self, image1: np.ndarray, image2: np.ndarray) -> Verification:
        """Are the best faces of two images the same person? No face in either image -> ``same=False``."""
        counts, best = [], []
        for image in (image1, image2):  # detect once per image: all faces counted, the best one embedded
            image = self.prepare(image)
            faces = self.detector.detect(image)
            counts.append(len(faces))
            best.append(self._embed_prepared(image, faces[0]) if faces else None)
        counts = tuple(counts)
        if best[0] is None or best[1] is None:
            return Verification(counts, float("nan"), self.min_cosine_similarity, False)
        sim = float(np.dot(best[0], best[1]))
        return Verification(counts, sim, self.min_cosine_similarity, sim >= self.min_cosine_similarity)

    def identify(self, image: np.ndarray, gallery) -> list[Identity]:
        """Name every face in ``image`` against a :class:`edgeface.Gallery`; unknown faces get ``None``."""
        image = self.prepare(image)
        out = []
        for face in self.detector.detect(image):
            crop = self.embedder.crop(image, face.box, face.keypoints)
            match = identify_crop(self.embedder, crop, gallery, self.min_cosine_similarity).match
            out.append(Identity(face, match.name, float(match.similarity)))
        return out
