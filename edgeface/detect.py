"""Face detection of every size with int8 or float BlazeFace models described by their manifests.

A detector configuration (``models.json`` ``detector_configs``; ``auto`` is the default of a current build)
runs the short-range model (faces filling 15-100 % of the frame) and the full-range model (8-60 %) on the whole
frame, keeps one reading per face (the short-range one for faces of a quarter of the frame or more, the
full-range one, with better keypoints, below; full-range boxes are mapped onto the short-range geometry that
embedder box recipes were fitted to by the manifest's ``box_transform``), and searches frames too
large for a 20 px face to reach 8 % of a whole-frame pass on a pyramid of overlapping tiles with the
full-range model. Tile faces are only added: they never replace or move a whole-frame face.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from . import blazeface, preprocess, runtime
from .errors import OptionError
from .manifest import ManifestError, check_model, manifest_path, read_manifest

log = logging.getLogger(__name__)


class Face(NamedTuple):
    """A detected face in original-image pixels.

    ``box`` is [x1, y1, x2, y2]; ``keypoints`` is (6, 2): right eye, left eye, nose tip, mouth, right ear,
    left ear (the subject's sides).
    """
    box: np.ndarray
    score: float
    keypoints: np.ndarray

    def to_json(self) -> dict:
        return {"box": [round(float(v), 1) for v in self.box], "score": round(float(self.score), 4),
                "keypoints": [[round(float(x), 1), round(float(y), 1)] for x, y in self.keypoints]}


def detector_input(image: np.ndarray, size: int, mean: float, std: float):
    """Letterbox an RGB image to the detector's square input and normalize it: ``(tensor, Letterbox)``."""
    canvas, lb = preprocess.letterbox(image, size)
    return preprocess.normalize(canvas, mean, std)[None], lb


def faces_from_outputs(raw_boxes: np.ndarray, raw_logits: np.ndarray, spec: blazeface.ModelSpec,
                       lb: preprocess.Letterbox, min_score: float, iou_threshold: float,
                       max_faces: Optional[int] = None, box_transform: Optional["BoxTransform"] = None,
                       ) -> list[Face]:
    """Decode raw detector outputs into :class:`Face` s in original-image pixels (boxes mapped by
    ``box_transform`` when given)."""
    faces = []
    for det in blazeface.postprocess(raw_boxes, raw_logits, spec, min_score, iou_threshold, max_faces):
        box = preprocess.unletterbox(det.box.reshape(2, 2), lb).reshape(4)
        kps = preprocess.unletterbox(det.keypoints, lb)
        if box[2] - box[0] <= 1 or box[3] - box[1] <= 1:
            continue
        if box_transform is not None:
            box = box_transform.apply(box)
        faces.append(Face(box, det.score, kps))
    return faces


class BoxTransform(NamedTuple):
    """Maps one detector's boxes onto a reference detector's box geometry, so that an embedder's box crop
    recipe (fitted to the reference's boxes) fits every detector.

    The mapped box keeps the source box's centre shifted by (``shift_x`` * width, ``shift_y`` * height) and
    has ``scale_x`` * width by ``scale_y`` * height. Calibrated by ``edgeface build`` on LFW DevTrain faces that
    both detectors find, and recorded in the source detector's manifest (``detector.box_transform``).
    """
    scale_x: float = 1.0
    scale_y: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0

    @classmethod
    def from_manifest(cls, section: Optional[dict], source: str = "<manifest>") -> Optional["BoxTransform"]:
        """The transform of a manifest's ``detector.box_transform`` section (None when absent)."""
        if not section:
            return None
        try:
            t = cls(*(float(section[k]) for k in cls._fields))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{source}: detector.box_transform needs numbers {list(cls._fields)} ({exc})") from exc
        if not (0.25 <= t.scale_x <= 4 and 0.25 <= t.scale_y <= 4 and abs(t.shift_x) < 1 and abs(t.shift_y) < 1):
            raise ManifestError(f"{source}: detector.box_transform {dict(t._asdict())} is out of range")
        return t

    def apply(self, box: np.ndarray) -> np.ndarray:
        """The mapped ``[x1, y1, x2, y2]``."""
        x1, y1, x2, y2 = (float(v) for v in box)
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 + self.shift_x * w, (y1 + y2) / 2 + self.shift_y * h
        hw, hh = self.scale_x * w / 2, self.scale_y * h / 2
        return np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float32)


def add_time(timings: Optional[dict], key: str, seconds: float) -> None:
    """Add ``seconds`` to ``timings[key]`` (a per-stage timings dict; None: not timing)."""
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + seconds


class DetectorModel:
    """One BlazeFace model (short range 128 px or full range 192 px, int8 or float) on one image.

    Boxes come out in the reference box geometry when the manifest has a ``box_transform``.
    """

    def __init__(self, model_path: str | os.PathLike, min_score: Optional[float] = None,
                 iou_threshold: float = 0.3, threads: Optional[int] = None,
                 accelerator: Optional[str] = None, runtime_name: Optional[str] = None):
        self.path = Path(model_path)
        self.manifest = read_manifest(model_path)
        if self.manifest["role"] != "detector":
            raise ManifestError(f"{model_path}: is a {self.manifest['role']}, not a detector")
        section = self.manifest["detector"]
        source = str(manifest_path(model_path))
        try:
            self.spec = blazeface.spec_for(section["spec"])
        except ValueError as exc:
            raise ManifestError(f"{source}: detector.spec {section['spec']!r} is not a known detector "
                                f"({exc})") from None
        if list(self.manifest["input"]["shape"][1:3]) != [self.spec.input_size] * 2:
            raise ManifestError(f"{source}: input.shape {self.manifest['input']['shape']} does not fit detector.spec "
                                f"{self.spec.name!r} ({self.spec.input_size} px square)")
        self.min_score = float(section["min_score"] if min_score is None else min_score)
        if not 0.0 < self.min_score < 1.0:
            raise OptionError(f"min_score must be in (0, 1), got {self.min_score}")
        if not 0.0 <= iou_threshold <= 1.0:
            raise OptionError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        self.iou_threshold = iou_threshold
        self.box_transform = BoxTransform.from_manifest(section.get("box_transform"), str(model_path))
        self.interpreter = runtime.make_interpreter(model_path, threads, accelerator, runtime_name)
        check_model(self.manifest, self.interpreter, source)
        outputs = self.manifest["outputs"]
        self._boxes = runtime.output_index(self.interpreter, outputs["boxes"])
        self._scores = runtime.output_index(self.interpreter, outputs["scores"])
        details = self.interpreter.get_output_details()
        for key, index, width in (("boxes", self._boxes, blazeface.NUM_COORDS), ("scores", self._scores, 1)):
            size = int(np.prod(details[index]["shape"]))
            if size != self.spec.num_anchors * width:
                raise ManifestError(f"{source}: outputs.{key} has {size} values, but detector.spec "
                                    f"{self.spec.name!r} needs {self.spec.num_anchors} x {width}")
        self.mean, self.std = self.manifest["input"]["mean"], self.manifest["input"]["std"]

    @property
    def name(self) -> str:
        return self.spec.name

    def raw(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on a normalized input tensor (:func:`detector_input`); returns dequantized (boxes,
        logits)."""
        runtime.set_input(self.interpreter, tensor)
        return self._run()

    def _run(self) -> tuple[np.ndarray, np.ndarray]:
        self.interpreter.invoke()
        return (runtime.get_output(self.interpreter, self._boxes),
                runtime.get_output(self.interpreter, self._scores))

    def faces(self, image: np.ndarray, timings: Optional[dict] = None) -> list[Face]:
        """Faces in an RGB image (letterboxed to the model's input); ``timings`` (a dict) accumulates the
        seconds of ``detect_pre`` (letterbox + normalize), ``detect_invoke`` and ``detect_post``."""
        a = time.perf_counter()
        canvas, lb = preprocess.letterbox(image, self.spec.input_size)
        runtime.set_pixels(self.interpreter, canvas, self.mean, self.std)
        b = time.perf_counter()
        boxes, logits = self._run()
        c = time.perf_counter()
        out = faces_from_outputs(boxes, logits, self.spec, lb, self.min_score, self.iou_threshold,
                                 box_transform=self.box_transform)
        add_time(timings, "detect_pre", b - a)
        add_time(timings, "detect_invoke", c - b)
        add_time(timings, "detect_post", time.perf_counter() - c)
        return out


class DetectorConfig(NamedTuple):
    """A named detector configuration (an entry of ``models.json`` ``detector_configs``), resolved to files.

    ``whole_frame``: models run on the whole frame, in order of box preference (where two find the same face,
    the earlier one's box is kept). ``tile_model``: the model run on tiles. ``min_face``: the smallest face
    (box side, image pixels) to find without flags; frames too large for ``tile_model`` to see such a face on
    the whole frame are also searched on a pyramid of overlapping tiles (0 = never tile automatically).
    ``tile_face_fraction``: the smallest face, as a fraction of the frame's longer side, that ``tile_model``
    finds reliably on a whole frame or tile (int8 full range on LFW faces pasted on a 640x480 frame: 100 % at
    0.10, 93 % at 0.08, 63 % at 0.06, 43 % at 0.05; short range: 37 % at 0.10, 100 % at 0.15). 0.08 for
    ``auto``: 97 % of the faces >= 20 px of the face-size benchmark with 40 % fewer tiles than 0.10.
    ``min_face_fraction``: on frames so large that ``min_face`` is below this fraction of the longer side, the
    smallest face searched is this fraction instead: it caps the tiles (and the time) of a huge photo at about
    those of a 1280 px frame (1/64 for ``auto``: 20 px up to 1280 px, 62 px on a 4000 px photo).
    """
    name: str
    whole_frame: tuple[Path, ...]
    tile_model: Path
    min_face: int = 0
    tile_face_fraction: float = 0.08
    min_face_fraction: float = 0.0


#: Fraction of a pyramid tile's side by which neighbouring tiles overlap: every face up to this fraction
#: of the tile is whole in some tile, where the next (twice as large) level starts (2 x 0.08 = 0.16 of it).
PYRAMID_OVERLAP = 0.2


class FaceDetector:
    """Finds faces of every size in one call: one or several BlazeFace models on the whole frame, plus tiles.

    Args:
      model: a ``.tflite`` with its manifest beside it (one model on the whole frame), or a
        :class:`DetectorConfig` (from :func:`resolve_detector`), e.g. the default ``auto``: short-range and
        full-range on the whole frame, merged, and the full-range model on tiles for faces
        too small for the whole-frame pass.
      min_score: minimum detection score in (0, 1) for every model; lower finds more small / turned faces and
        more false detections. Defaults to each manifest's value (MediaPipe's: 0.5 short range, 0.6 full range).
      iou_threshold: boxes of one model overlapping more than this are merged (weighted NMS).
      tiles: 1 (default) adds no fixed grid. N > 1 also runs the tile model on overlapping square tiles, about
        N along the longer side (N*N+1 times the cost of one pass): for very large photos. Tile faces never
        replace a whole-frame face: a tile detection overlapping one is dropped.
      min_face: smallest face to find, in image pixels, on frames of any size (default: the configuration's,
        for ``auto`` 20 px or 1/64 of the frame's longer side, whichever is larger; 0 turns the automatic tile
        pyramid off). Each halving costs about four times the tiles on a large frame.
      threads, accelerator, runtime_name: see :func:`edgeface.runtime.make_interpreter`.

    Faces come out sorted by score, best first, with boxes in the reference (short-range) box geometry.
    """

    def __init__(self, model: "str | os.PathLike | DetectorConfig", min_score: Optional[float] = None,
                 iou_threshold: float = 0.3, threads: Optional[int] = None,
                 accelerator: Optional[str] = None, runtime_name: Optional[str] = None, tiles: int = 1,
                 min_face: Optional[int] = None):
        if tiles < 1:
            raise OptionError(f"tiles must be >= 1, got {tiles}")
        config = model if isinstance(model, DetectorConfig) else \
            DetectorConfig(Path(model).stem, (Path(model),), Path(model))
        if not config.whole_frame:
            raise ManifestError(f"detector configuration {config.name!r} runs no model on the whole frame")
        self.config = config
        self.tiles = int(tiles)
        self.min_face = int(config.min_face if min_face is None else min_face)
        self.min_face_fraction = config.min_face_fraction if min_face is None else 0.0
        if self.min_face < 0:
            raise OptionError(f"min_face must be >= 0 pixels, got {self.min_face}")
        if not 0.0 <= iou_threshold <= 1.0:
            raise OptionError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        self.iou_threshold = iou_threshold
        loaded: dict[Path, DetectorModel] = {}
        for path in (*config.whole_frame, config.tile_model):
            if Path(path) not in loaded:
                loaded[Path(path)] = DetectorModel(path, min_score, iou_threshold, threads, accelerator,
                                                   runtime_name)
        self.models = [loaded[Path(p)] for p in config.whole_frame]
        self.tile_model = loaded[Path(config.tile_model)]
        self.members = list(loaded.values())

    # the first whole-frame model, for tools that inspect one model (manifest, interpreter, raw outputs)
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def manifest(self) -> dict:
        return self.models[0].manifest

    @property
    def interpreter(self):
        return self.models[0].interpreter

    @interpreter.setter
    def interpreter(self, value) -> None:
        self.models[0].interpreter = value

    @property
    def spec(self) -> blazeface.ModelSpec:
        return self.models[0].spec

    @property
    def input_size(self) -> int:
        return self.models[0].spec.input_size

    @property
    def min_score(self) -> float:
        return self.models[0].min_score

    @property
    def mean(self) -> float:
        return self.models[0].mean

    @property
    def std(self) -> float:
        return self.models[0].std

    def raw(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first whole-frame model's dequantized (boxes, logits) for a normalized input tensor."""
        return self.models[0].raw(tensor)

    def windows(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """The tiles ``(x0, y0, side)`` searched besides the whole frame: the fixed ``tiles`` grid and the
        ``min_face`` pyramid."""
        out = tile_windows(height, width, self.tiles) if self.tiles > 1 else []
        if self.min_face:
            smallest = max(self.min_face, self.min_face_fraction * max(height, width))
            out += pyramid_windows(height, width, smallest, self.config.tile_face_fraction)
        return out

    def detect(self, image: np.ndarray, max_faces: Optional[int] = None,
               timings: Optional[dict] = None) -> list[Face]:
        """Find faces in an RGB ``uint8`` image; sorted by score, best first.

        ``timings`` (a dict) accumulates seconds per stage: ``detect_pre``, ``detect_invoke``, ``detect_post``.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        passes = [m.faces(image, timings) for m in self.models]
        a = time.perf_counter()
        faces = merge_models(passes, max(image.shape[:2]))
        add_time(timings, "detect_post", time.perf_counter() - a)
        h, w = image.shape[:2]
        windows = self.windows(h, w)
        if windows:
            found = []
            for x0, y0, side in windows:
                part = self.tile_model.faces(image[y0:y0 + side, x0:x0 + side], timings)
                a = time.perf_counter()
                found += whole_in_tile(part, (x0, y0, side), (h, w))
                add_time(timings, "detect_post", time.perf_counter() - a)
            a = time.perf_counter()
            faces = add_tile_faces(faces, merge_faces(found, self.iou_threshold))
            add_time(timings, "detect_post", time.perf_counter() - a)
        return faces[:max_faces] if max_faces else faces


def _starts(n: int, side: int, step: float) -> list[int]:
    if n <= side:
        return [0]
    count = math.ceil((n - side) / step) + 1
    return sorted({round(v) for v in np.linspace(0, n - side, count)})


def pyramid_windows(height: int, width: int, min_face: float, face_fraction: float = 0.08,
                    overlap: float = PYRAMID_OVERLAP) -> list[tuple[int, int, int]]:
    """Square tiles ``(x0, y0, side)`` on which a model that finds faces down to ``face_fraction`` of its input
    finds every face from ``min_face`` pixels up to where the whole-frame pass takes over.

    Level sides are ``min_face / face_fraction`` doubling while the whole frame's smallest findable face
    (``face_fraction`` x the longer side) is larger than what the level holds whole (``overlap`` x side).
    Empty when the whole frame is small enough.
    """
    if min_face <= 0:
        raise OptionError(f"min_face must be > 0 pixels, got {min_face}")
    if not 0 < face_fraction < 1:
        raise OptionError(f"face_fraction must be in (0, 1), got {face_fraction}")
    if not 0 < overlap < 1:
        raise OptionError(f"overlap must be in (0, 1), got {overlap}")
    longer, shorter = max(height, width), min(height, width)
    out: list[tuple[int, int, int]] = []
    side = min_face / face_fraction
    while face_fraction * longer > min_face and side < longer:
        if side >= shorter:  # tiles as tall as a panorama: they must hold every face up to 0.8 of that whole
            s = shorter
            step = max(1.0, s - min(face_fraction * longer, 0.8 * s))
        else:
            s = int(round(side))
            step = max(1.0, s * (1 - overlap))
        out += [(x, y, s) for y in _starts(height, s, step) for x in _starts(width, s, step)]
        if s == shorter or overlap * side >= face_fraction * longer:  # the whole frame finds larger faces
            break
        side *= 2
    return out


def tile_windows(height: int, width: int, grid: int, overlap: float = 0.25) -> list[tuple[int, int, int]]:
    """Square tiles ``(x0, y0, side)`` covering the image: about ``grid`` tiles along the longer side,
    overlapping by ``overlap`` so a face on a seam is whole in some tile."""
    if grid < 1:
        raise OptionError(f"grid must be >= 1, got {grid}")
    if not 0 <= overlap < 1:
        raise OptionError(f"overlap must be in [0, 1), got {overlap}")
    side = int(min(max(height, width) / grid * (1 + overlap), min(height, width)))
    side = max(side, 1)
    return [(x, y, side) for y in _starts(height, side, side * (1 - overlap))
            for x in _starts(width, side, side * (1 - overlap))]


#: A tile face whose box comes closer than this fraction of the tile to an inner tile edge may be cut off:
#: it is left to a neighbouring tile (which holds it whole) or to the whole-frame pass.
EDGE_MARGIN = 0.02


def whole_in_tile(faces: list[Face], window: tuple[int, int, int], image_shape: tuple[int, int]) -> list[Face]:
    """Faces of one tile moved to image pixels, without those cut by an inner tile edge."""
    x0, y0, side = window
    h, w = image_shape[:2]
    m = EDGE_MARGIN * side
    offset = np.array([x0, y0], np.float32)
    out = []
    for f in faces:
        x1, y1, x2, y2 = f.box
        cut = ((x1 < m and x0 > 0) or (y1 < m and y0 > 0)
               or (x2 > side - m and x0 + side < w) or (y2 > side - m and y0 + side < h))
        if not cut:
            out.append(Face(f.box + np.tile(offset, 2), f.score, f.keypoints + offset))
    return out


def overlap_of_smaller(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over the smaller box's area, of one box with (M, 4) boxes: 1 when one holds the other."""
    box = np.asarray(box, np.float64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    smaller = np.minimum(area, areas)
    return np.divide(iw * ih, smaller, out=np.zeros(len(boxes)), where=smaller > 0)


#: Two boxes of different models are one face when the smaller lies this much inside the larger.
SAME_FACE_OVERLAP = 0.5
#: Where both models find a face, the preferred (short-range) model's reading is kept when the face is at least
#: this fraction of the frame's longer side; below it the later (full-range) model's. Keypoint error against the
#: float short-range model on the image itself (LFW, mean of eyes / nose / mouth over the box width), int8:
#: short range 2.1 % / 2.6 % / 4.0 % / 6.3 % / 10.7 % at faces of 0.32 / 0.24 / 0.19 / 0.155 / 0.12 of the
#: frame, full range 2.1 % / 2.4 % / 2.8 % / 3.3 % / 3.7 %.
LARGE_FACE_FRACTION = 0.25
#: ... and the preferred model's box is kept when the two sides agree within this ratio; otherwise the two
#: are rival readings of one face and the more confident one is kept.
SAME_SIZE_RATIO = 1.5


def _side(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1]))


def merge_models(passes: list[list[Face]], frame_side: Optional[float] = None) -> list[Face]:
    """Merge whole-frame passes of several models (``passes`` in order of preference) into one face list.

    Every face of every model is kept unless it is the same face as one already taken: the smaller box lies
    mostly inside the larger (:data:`SAME_FACE_OVERLAP`). Of two such readings whose sizes agree, the preferred
    model's is kept for a large face (at least :data:`LARGE_FACE_FRACTION` of ``frame_side``, the frame's
    longer side; always when it is None), the later model's for a smaller one: each model where its boxes and
    keypoints are best. Readings whose sizes disagree are rivals: the more confident one is kept (a
    short-range box twice the size of the face is a poor reading, not a second face).
    """
    kept: list[tuple[int, Face]] = []
    for rank, faces in enumerate(passes):
        for f in faces:
            if kept:
                boxes = np.stack([k.box for _, k in kept])
                same = np.flatnonzero(overlap_of_smaller(f.box, boxes) > SAME_FACE_OVERLAP)
            else:
                same = []
            if len(same) == 0:
                kept.append((rank, f))
                continue
            i = int(same[0])
            k = kept[i][1]
            ratio = _side(f.box) / max(_side(k.box), 1e-6)
            if 1 / SAME_SIZE_RATIO <= ratio <= SAME_SIZE_RATIO:
                small = frame_side is not None and _side(k.box) < LARGE_FACE_FRACTION * frame_side
                if small and rank > kept[i][0]:
                    kept[i] = (rank, f)
                continue
            if f.score > k.score:
                kept[i] = (rank, f)
    out = [f for _, f in kept]
    out.sort(key=lambda f: -f.score)
    return out


def add_tile_faces(whole: list[Face], tile_faces: list[Face]) -> list[Face]:
    """Whole-frame faces, plus the tile faces that overlap none of them: a tile never replaces or moves a face
    the whole-frame pass found (parts of a large face seen up close in a tile are not new faces)."""
    out = list(whole)
    for f in tile_faces:
        if out and (overlap_of_smaller(f.box, np.stack([k.box for k in out])) > 0.0).any():
            continue
        out.append(f)
    out.sort(key=lambda f: -f.score)
    return out


def merge_faces(faces: list[Face], iou_threshold: float) -> list[Face]:
    """Weighted NMS over faces of one model found in several passes (tiles), in pixel coordinates."""
    if not faces:
        return []
    data = np.stack([np.concatenate([f.box, f.keypoints.reshape(-1)]) for f in faces]).astype(np.float32)
    scores = np.array([f.score for f in faces], np.float32)
    return [Face(d.box, d.score, d.keypoints)
            for d in blazeface.weighted_nms(data, scores, None, iou_threshold)]


def detector_names(index: dict) -> list[str]:
    """Detector names a models index offers: its configurations, then its single models."""
    names = list(index.get("detector_configs", {}))
    return names + [n for n in index.get("detectors", {}) if n not in names]


def resolve_detector(models_dir: str | os.PathLike, precision: str = "int8",
                     name: Optional[str] = None) -> DetectorConfig:
    """The detector configuration ``name`` of a models folder, its models resolved to files of ``precision``.

    ``name`` is an entry of ``models.json`` ``detector_configs`` (``auto``: every face size) or of
    ``detectors`` (one model on the whole frame: ``short_range``, ``full_range``). ``None`` means the index's
    ``default_detector`` (a folder built before configurations existed: its ``precision`` default model).
    Unknown names raise :class:`ManifestError` listing the names the folder offers.
    """
    from .manifest import INDEX, read_index

    if precision not in ("int8", "float32"):
        raise OptionError(f"precision must be 'int8' or 'float32', got {precision!r}")
    models_dir = Path(models_dir)
    index = read_index(models_dir)
    source = models_dir / INDEX
    singles = index.get("detectors", {})
    configs = index.get("detector_configs", {})

    def model_file(member: str) -> Path:
        try:
            return models_dir / singles[member][precision]
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{source}: detector {member!r} has no {precision} model") from exc

    if name is None:
        name = index.get("default_detector")
        if name is None:
            try:
                path = models_dir / index[precision]["detector"]
            except (KeyError, TypeError) as exc:
                raise ManifestError(f"{source}: no {precision} detector listed ({exc})") from exc
            return DetectorConfig(path.stem, (path,), path)
    if name in configs:
        c = configs[name]
        try:
            whole = tuple(model_file(m) for m in c["whole_frame"])
            tile = model_file(c.get("tile_model", c["whole_frame"][0]))
            defaults = DetectorConfig._field_defaults
            return DetectorConfig(name, whole, tile, int(c.get("min_face", 0)),
                                  float(c.get("tile_face_fraction", defaults["tile_face_fraction"])),
                                  float(c.get("min_face_fraction", defaults["min_face_fraction"])))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ManifestError(f"{source}: detector configuration {name!r} is malformed ({exc})") from exc
    if name in singles:
        path = model_file(name)
        return DetectorConfig(name, (path,), path)
    raise ManifestError(f"unknown detector {name!r}; {models_dir} offers: "
                        f"{', '.join(detector_names(index)) or 'none (rebuild with `edgeface build`)'}")
