"""Face embedder adapter: crop per the manifest's recipe, normalize, invoke, dequantize, L2-normalize."""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from . import preprocess, runtime
from .errors import OptionError
from .landmarks import FIVE_POINT_NAMES, FaceLandmarker
from .manifest import CROP_METHODS, INDEX, ManifestError, check_model, manifest_path, read_manifest, resolve_landmarks

#: The detector's keypoints by name, in the order :class:`edgeface.detect.Face` carries them (BlazeFace; the
#: subject's sides: "right_eye" is on the image's left).
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")
#: The ArcFace 112x112 five-point template (insightface ``arcface_dst``) with the two mouth corners averaged
#: into one mouth centre (BlazeFace has a single mouth point): right eye, left eye, nose tip, mouth centre.
ARCFACE_TEMPLATE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (56.1396, 92.2848))
ARCFACE_POINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center")
#: The full ArcFace 112x112 five-point template (insightface ``arcface_dst``) in :data:`FIVE_POINT_NAMES` order:
#: right eye, left eye, nose tip, right mouth corner, left mouth corner (subject's sides). Its points come from
#: a landmark model (:mod:`edgeface.landmarks`): the detector has no mouth corners.
ARCFACE_FIVE_TEMPLATE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655),
                             (70.7299, 92.2041))
ARCFACE_FIVE_POINTS = FIVE_POINT_NAMES
#: Names only a landmark model gives: a recipe naming any of them takes all its points from the landmark model.
LANDMARK_ONLY_NAMES = tuple(n for n in FIVE_POINT_NAMES if n not in KEYPOINT_NAMES)
#: Kept for the legacy ``similarity`` recipe (same points, rounded).
ALIGN_TEMPLATE_112 = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [56.14, 92.28]], np.float32)


def landmark_recipe(size: int = 112, template=ARCFACE_TEMPLATE_112, points=ARCFACE_POINTS,
                    fallback: Optional[dict] = None, source: str = "") -> dict:
    """A ``landmarks`` crop recipe for a manifest: ``points`` (keypoint names) warped onto ``template``
    (pixel coordinates in a ``size`` x ``size`` crop) by a least-squares similarity transform.

    ``fallback`` (a box recipe) is what a detector without these keypoints gets instead, with a warning.
    """
    if len(template) != len(points) or len(points) < 2:
        raise ValueError(f"need as many template points as keypoint names (>= 2), got {len(template)} and "
                         f"{len(points)}")
    if needs_landmark_model({"points": list(points)}):
        unknown = [p for p in points if p not in FIVE_POINT_NAMES]
        known = FIVE_POINT_NAMES
    else:
        unknown = [p for p in points if p not in KEYPOINT_NAMES]
        known = KEYPOINT_NAMES
    if unknown:
        raise ValueError(f"unknown keypoints {unknown}; known: {', '.join(known)}")
    recipe = {"method": "landmarks", "size": int(size), "points": list(points),
              "template": [[round(float(x), 4), round(float(y), 4)] for x, y in template]}
    if fallback is not None:
        recipe["fallback"] = dict(fallback)
    if source:
        recipe["source"] = source
    return recipe


def needs_landmark_model(recipe: dict) -> bool:
    """True when a ``landmarks`` recipe names points only a landmark model gives (the mouth corners)."""
    return any(p in LANDMARK_ONLY_NAMES for p in recipe.get("points", ()))


def landmarker_for(recipe: dict, models_dir: str | os.PathLike, precision: str = "float32",
                   threads: Optional[int] = None) -> Optional[FaceLandmarker]:
    """The landmark model of a models folder that ``recipe`` needs, or None when it needs none.

    For converters (calibration, training and held-out crops): a recipe that names the five points in a folder
    without a landmark model is a :class:`ManifestError`, never a silent four-point fallback.
    """
    if not needs_landmark_model(recipe):
        return None
    path = resolve_landmarks(models_dir, precision)
    if path is None:
        raise ManifestError(f"{Path(models_dir) / INDEX}: the crop recipe names the five ArcFace points but the "
                            "folder lists no landmark model; rebuild with `edgeface build`")
    return FaceLandmarker(path, threads=threads)


def _landmark_crop(image: np.ndarray, box, keypoints, recipe: dict, landmarker) -> np.ndarray:
    size = int(recipe["size"])
    if needs_landmark_model(recipe):
        if landmarker is None:
            fallback = recipe.get("fallback")
            if fallback is None:
                raise ValueError("this crop recipe needs a landmark model (it names the mouth corners) and has no "
                                 "fallback recipe")
            return face_crop(image, box, keypoints, fallback)
        if box is None:
            raise ValueError("landmark-model alignment needs the face box")
        points = landmarker.landmarks(image, box).points
        idx = [FIVE_POINT_NAMES.index(p) for p in recipe["points"]]
        return preprocess.align_face(image, points[idx], np.asarray(recipe["template"], np.float32), size)
    if keypoints is None:
        fallback = recipe.get("fallback")
        if fallback is None:
            raise ValueError("landmark alignment needs keypoints and the recipe has no box fallback")
        return face_crop(image, box, None, fallback)
    kps = np.asarray(keypoints, dtype=np.float32)
    idx = [KEYPOINT_NAMES.index(p) for p in recipe["points"]]
    if kps.ndim != 2 or kps.shape[1] != 2 or len(kps) <= max(idx):
        raise ValueError(f"landmark alignment needs keypoints {recipe['points']}, got an array of shape {kps.shape}")
    return preprocess.align_face(image, kps[idx], np.asarray(recipe["template"], np.float32), size)


def face_crop(image: np.ndarray, box: np.ndarray, keypoints: Optional[np.ndarray], recipe: dict,
              landmarker: Optional[FaceLandmarker] = None) -> np.ndarray:
    """Cut the face out of ``image`` the way the embedder was trained (``recipe`` from the manifest).

    ``box_rect``: a ``width`` x ``height`` rectangle (in detector-box widths) shifted down by ``shift_y``
    box widths, stretched to ``size`` x ``size``: how FaceNet crops (MTCNN box plus margin).
    ``box_margin``: the square around the detector box enlarged by ``margin`` (a fraction of the box side),
    resized to ``size``. ``landmarks``: the detector keypoints named in ``points`` warped onto ``template`` by a
    similarity transform (Umeyama), how ArcFace-family models are trained; without keypoints it uses the
    recipe's ``fallback`` box recipe. A ``landmarks`` recipe that names the mouth corners (the five ArcFace
    points) takes all its points from ``landmarker`` (:class:`edgeface.landmarks.FaceLandmarker`, one small
    model run on the box); without one it uses its ``fallback`` (the detector-keypoint recipe; ``doctor`` warns).
    ``similarity``: the older fixed-template form of ``landmarks``.
    """
    method, size = recipe["method"], int(recipe["size"])
    if method == "landmarks":
        return _landmark_crop(image, box, keypoints, recipe, landmarker)
    if method == "box_rect":
        return preprocess.crop_rect(image, box, float(recipe["width"]), float(recipe["height"]),
                                    float(recipe["shift_y"]), size)
    if method == "box_margin":
        return preprocess.crop_box(image, box, size, float(recipe["margin"]))
    if method == "similarity":
        if keypoints is None:
            raise ValueError("similarity alignment needs keypoints")
        return preprocess.align_face(image, np.asarray(keypoints)[:4], ALIGN_TEMPLATE_112 * (size / 112.0), size)
    raise OptionError(f"unknown crop method {method!r}; expected one of {CROP_METHODS}")


class OpenSetPoint(NamedTuple):
    """An operating point resolved for a gallery: the manifest key, its threshold, and why it was chosen."""
    name: str
    min_cosine_similarity: float
    reason: str


def open_set_point(points: dict, name: str, gallery_size: int) -> OpenSetPoint:
    """Resolve an open-set operating point of an embedder manifest for a gallery of ``gallery_size`` people.

    ``name`` is ``fpir_<rate>@<size>`` (used as is) or ``fpir_<rate>`` (a stranger is let in at most at
    ``rate``, per probe). For ``fpir_<rate>`` the threshold calibrated for the smallest gallery size at or above
    ``gallery_size`` is chosen: thresholds rise with the gallery size, so this keeps the stranger rate at or
    below ``rate``. A gallery larger than every calibrated size gets the largest one, and the reason says that
    the real rate is then higher. Raises ``KeyError`` (naming what exists) if nothing matches.

    >>> pts = {"fpir_0.01@10": {"min_cosine_similarity": 0.40}, "fpir_0.01@100": {"min_cosine_similarity": 0.45}}
    >>> open_set_point(pts, "fpir_0.01", 8).name
    'fpir_0.01@10'
    >>> open_set_point(pts, "fpir_0.01", 11).min_cosine_similarity
    0.45
    """
    if "@" in name:
        if name not in points:
            raise KeyError(f"the embedder manifest has no operating point {name!r}; it has {sorted(points)}")
        return OpenSetPoint(name, float(points[name]["min_cosine_similarity"]), "named in the configuration")
    sizes = sorted(int(k.split("@", 1)[1]) for k in points if k.startswith(name + "@"))
    if not sizes:
        raise KeyError(f"the embedder manifest has no {name}@<gallery size> points; it has {sorted(points)}")
    fits = [s for s in sizes if s >= gallery_size]
    size = fits[0] if fits else sizes[-1]
    key = f"{name}@{size}"
    reason = (f"calibrated for galleries of up to {size} people; {gallery_size} enrolled" if fits else
              f"{gallery_size} enrolled is more than the largest calibrated gallery ({size}): the stranger rate "
              f"is higher than {name[5:]}")
    return OpenSetPoint(key, float(points[key]["min_cosine_similarity"]), reason)


def l2_normalize(x: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def _folder_landmarks(model_path, precision: str) -> Optional[Path]:
    """The landmark model listed in the ``models.json`` beside an embedder (same precision; int8 for int8
    variants), or None without an index or a landmarks section."""
    folder = Path(model_path).parent
    if not (folder / INDEX).is_file():
        return None
    return resolve_landmarks(folder, "float32" if precision == "float32" else "int8")


class FaceEmbedder:
    """Turns face crops into L2-normalized embeddings; compare two with a dot product (cosine similarity).

    The manifest fixes the crop recipe, the input normalization and the recommended
    ``min_cosine_similarity`` (with the data it was calibrated on). A recipe that names the five ArcFace points
    gets them from ``landmarks_path`` (default: the landmark model listed in the ``models.json`` beside the
    embedder); without one it aligns on the detector's keypoints (the recipe's fallback; see :attr:`alignment`).

    ``flip``: also embed the mirrored crop and average the two (test-time flip). The manifest's ``flip`` says
    whether its thresholds were calibrated that way (the default build: yes); ``None`` follows it. Flipping
    costs a second model run per face and averages out part of the alignment and int8 rounding noise (LFW
    10-fold int8: 99.15 % without, 99.32 % with; TAR at FAR 1e-3 0.975 / 0.980); ``False`` is the fast
    setting, at thresholds calibrated for flipped embeddings (slightly stricter for unflipped ones).

    ``flip_band`` (default: the manifest's ``flip_band``; none there: always mirror): decisions against a
    gallery (:func:`edgeface.recognizer.identify_crop`: the device loop and :meth:`FaceRecognizer.identify`)
    run the mirror only when the one-run score lies within ``flip_band`` of the threshold or of
    the runner-up, where it could change the answer; elsewhere the flipped score lands on the same side.
    Measured on LFW ``pairs.txt`` (int8, gallery side flipped, ``bench accuracy``): with 0.05 the mirror runs
    for 1-6 % of probes (12.5 % at the strictest open-set point) and the decisions equal full flip's in all
    6,000 pairs at 7 of the 10 manifest thresholds, in all but one at the other three.
    Embeddings for enrollment (:meth:`embed_crop`) are always flipped when ``flip`` is on.

    ``embedding_mean`` in the manifest (the default build: the float model's mean one-run embedding of LFW
    DevTrain faces, shared by both precisions): every model run's L2-normalized output has it subtracted and is
    normalized again, before the mirror average. Taking out the direction all faces share spreads different
    people apart a little (same int8 model, LFW 10-fold with flip: TAR at FAR 1e-3 0.9797 -> 0.9807, at 1e-4
    0.9500 -> 0.9510, accuracy 99.32 % both; without flip 99.15 -> 99.23 %). The manifest's thresholds are
    calibrated on centred embeddings. An app that runs the model itself (e.g.
    MediaPipe Tasks' ImageEmbedder) must do the same: ``normalize(normalize(output) - embedding_mean)``.
    """

    def __init__(self, model_path: str | os.PathLike, threads: Optional[int] = None,
                 accelerator: Optional[str] = None, runtime_name: Optional[str] = None,
                 landmarks_path: str | os.PathLike | None = None, flip: Optional[bool] = None,
                 flip_band: Optional[float] = None):
        self.manifest = read_manifest(model_path)
        if self.manifest["role"] != "embedder":
            raise ManifestError(f"{model_path}: is a {self.manifest['role']}, not an embedder")
        self.section = self.manifest["embedder"]
        self.recipe = self.section["crop"]
        self.interpreter = runtime.make_interpreter(model_path, threads, accelerator, runtime_name)
        check_model(self.manifest, self.interpreter, str(manifest_path(model_path)))
        self._out = runtime.output_index(self.interpreter, self.manifest["outputs"]["embedding"])
        self.mean, self.std = self.manifest["input"]["mean"], self.manifest["input"]["std"]
        self.size = int(self.recipe["size"])
        center = self.section.get("embedding_mean")
        #: subtracted from each run's normalized output (None: no centring; see the class doc)
        self.center = None if center is None else np.asarray(center, np.float32)
        #: embed the mirrored crop too and average (see the class doc)
        self.flip = bool(self.section.get("flip", False)) if flip is None else bool(flip)
        if flip_band is None:
            flip_band = self.section.get("flip_band", math.inf)
        if isinstance(flip_band, bool) or not isinstance(flip_band, (int, float)) or not flip_band >= 0:
            raise OptionError(f"flip_band must be a number >= 0 (inf: always mirror), got {flip_band!r}")
        #: when deciding against a gallery (:func:`edgeface.recognizer.identify_crop`), the mirror run is made
        #: only for a one-run score within this distance of the threshold (or of the runner-up); inf: always
        self.flip_band = float(flip_band)
        #: the landmark model the crop recipe asks for (None: not needed, or absent and the fallback is used)
        self.landmarker: Optional[FaceLandmarker] = None
        if needs_landmark_model(self.recipe):
            if landmarks_path is None:
                landmarks_path = _folder_landmarks(model_path, self.manifest["precision"])
            if landmarks_path is not None:
                self.landmarker = FaceLandmarker(landmarks_path, threads=threads, runtime_name=runtime_name)

    @property
    def alignment(self) -> str:
        """How crops are aligned: ``"five-point landmark model"``, ``"detector keypoints"``, ``"box"``, or
        ``"detector keypoints (fallback: no landmark model)"`` when the recipe wants a landmark model that is
        missing (what ``doctor`` warns about)."""
        method = self.recipe["method"]
        if method not in ("landmarks", "similarity"):
            return "box"
        if not needs_landmark_model(self.recipe):
            return "detector keypoints"
        if self.landmarker is not None:
            return "five-point landmark model"
        return "detector keypoints (fallback: no landmark model)"

    @property
    def model_id(self) -> str:
        """Identifies the embedding space: galleries refuse embeddings from another model."""
        return f"{self.manifest['family']}:{self.manifest['precision']}:{self.manifest['sha256'][:16]}"

    @property
    def space_id(self) -> str:
        """The embedding space shared by every precision of one upstream model (float and int8 agree).

        Without an ``upstream.sha256`` in the manifest, the model file's own hash (a space of its own).
        """
        upstream = self.manifest.get("upstream")
        digest = upstream.get("sha256") if isinstance(upstream, dict) else None
        space = f"{self.manifest['family']}:{(digest or self.manifest['sha256'])[:16]}"
        if self.center is not None:  # centred embeddings are another space: galleries must not mix them
            space += ":c" + hashlib.sha256(self.center.astype("<f4").tobytes()).hexdigest()[:8]
        return space

    @property
    def dim(self) -> int:
        return int(self.section["embedding_size"])

    @property
    def min_cosine_similarity(self) -> float:
        return float(self.section["min_cosine_similarity"])

    def crop(self, image: np.ndarray, box: np.ndarray, keypoints: Optional[np.ndarray] = None) -> np.ndarray:
        return face_crop(image, box, keypoints, self.recipe, self.landmarker)

    def embed_crop(self, crop: np.ndarray, flip: Optional[bool] = None) -> np.ndarray:
        """Embedding (dim,) of one RGB ``uint8`` crop of the recipe's size; ``flip`` overrides :attr:`flip`
        for this call (``False``: one model run)."""
        if crop.shape != (self.size, self.size, 3):
            raise ValueError(f"crop must be ({self.size}, {self.size}, 3), got {crop.shape}")
        single = self._one(crop)
        return self.add_mirror(crop, single) if (self.flip if flip is None else flip) else single

    def add_mirror(self, crop: np.ndarray, single: np.ndarray) -> np.ndarray:
        """The flipped embedding of ``crop`` from its one-run embedding ``single`` (``embed_crop(crop,
        flip=False)``): one more model run, on the mirror image; equal to ``embed_crop(crop, flip=True)``."""
        return l2_normalize(np.asarray(single, np.float32) + self._one(crop[:, ::-1]))

    def _one(self, crop: np.ndarray) -> np.ndarray:
        """One model run: the normalized output, centred on the manifest's ``embedding_mean`` when it has one."""
        v = l2_normalize(self._run(crop))
        return v if self.center is None else l2_normalize(v - self.center)

    def _run(self, crop: np.ndarray) -> np.ndarray:
        runtime.set_pixels(self.interpreter, crop, self.mean, self.std)
        self.interpreter.invoke()
        return runtime.get_output(self.interpreter, self._out).reshape(-1)
