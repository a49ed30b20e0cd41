"""The JSON manifest beside every built model: the model's contract, so the device never guesses.

``models/facenet_int8.tflite`` is described by ``models/facenet_int8.json``. The manifest records the
family and role, the input size, colour order and normalization, the output names, the crop recipe an
embedder was trained with, the recognition threshold and where it was calibrated, and where the model came
from (upstream file and sha256, calibration set id, converter version).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import EdgefaceError, OptionError

FORMAT = "edgeface-manifest/1"
ROLES = ("detector", "embedder", "landmarks")
_REQUIRED = {"format", "role", "family", "model_file", "sha256", "precision", "input", "outputs"}
_OPTIONAL = {"detector", "embedder", "landmarks", "upstream", "calibration", "converter_version", "quantized_ranges",
             "created", "description", "license"}
_INPUT_KEYS = {"shape", "dtype", "color", "mean", "std"}
DTYPES = ("float32", "float16", "int8", "uint8")
#: How an embedder's face crop is cut (see :func:`edgeface.embed.face_crop`).
CROP_METHODS = ("box_rect", "box_margin", "similarity", "landmarks")
_CROP_KEYS = {"box_rect": ("width", "height", "shift_y"), "box_margin": ("margin",), "similarity": (),
              "landmarks": ()}
_MAX_SIDE = 2048


class ManifestError(EdgefaceError, ValueError):
    """A missing, malformed or mismatched model manifest; the message names the file."""


def manifest_path(model_path: str | os.PathLike) -> Path:
    """Where the manifest of ``model_path`` lives: same folder and stem, ``.json`` suffix."""
    return Path(model_path).with_suffix(".json")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def validate(data: dict[str, Any], source: str = "<manifest>") -> dict[str, Any]:
    """Check a manifest dict; unknown keys and missing fields raise :class:`ManifestError`."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: manifest must be a JSON object")
    missing = _REQUIRED - data.keys()
    if missing:
        raise ManifestError(f"{source}: missing keys {sorted(missing)}")
    unknown = data.keys() - _REQUIRED - _OPTIONAL
    if unknown:
        raise ManifestError(f"{source}: unknown keys {sorted(unknown)}")
    if data["format"] != FORMAT:
        raise ManifestError(f"{source}: format {data['format']!r} is not {FORMAT!r}")
    if data["role"] not in ROLES:
        raise ManifestError(f"{source}: role must be one of {ROLES}, got {data['role']!r}")
    inp = data["input"]
    if not isinstance(inp, dict) or set(inp) != _INPUT_KEYS:
        raise ManifestError(f"{source}: input needs exactly the keys {sorted(_INPUT_KEYS)}")
    if inp["color"] != "RGB":
        raise ManifestError(f"{source}: only RGB input is supported, got {inp['color']!r}")
    if data["role"] not in data:
        raise ManifestError(f"{source}: a {data['role']} manifest needs a {data['role']!r} section")
    _check_fields(data, source)
    return data


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _check_fields(data: dict[str, Any], source: str) -> None:
    """Types and sane ranges of every field the code reads (the contract the device relies on)."""
    def bad(key: str, what: str) -> ManifestError:
        return ManifestError(f"{source}: {key} {what}")

    inp = data["input"]
    shape = inp["shape"]
    if not (isinstance(shape, list) and len(shape) == 4 and shape[0] == 1 and shape[3] == 3
            and all(_count(d, 1, _MAX_SIDE) for d in shape) and min(shape[1:3]) >= 16):
        raise bad("input.shape", f"must be [1, height, width, 3] with sides 16..{_MAX_SIDE}, got {shape!r}")
    if inp["dtype"] not in DTYPES:
        raise bad("input.dtype", f"must be one of {DTYPES}, got {inp['dtype']!r}")
    for key in ("mean", "std"):
        values = inp[key] if isinstance(inp[key], list) else [inp[key]]
        if len(values) not in (1, 3) or not all(_finite(v) for v in values):
            raise bad(f"input.{key}", f"must be a finite number or three of them, got {inp[key]!r}")
        if key == "std" and any(abs(v) < 1e-6 for v in values):
            raise bad("input.std", f"must be non-zero (the input is divided by it), got {inp[key]!r}")
    outputs = data["outputs"]
    if not isinstance(outputs, dict) or not outputs or not all(isinstance(v, str) for v in outputs.values()):
        raise bad("outputs", f"must map output roles to tensor names, got {outputs!r}")
    role = data["role"]
    section = data[role]
    if not isinstance(section, dict):
        raise bad(role, f"must be an object, got {type(section).__name__}")
    if role == "landmarks":
        _check_landmarks(section, outputs, shape, bad)
        return
    need_outputs = ("boxes", "scores") if role == "detector" else ("embedding",)
    for key in need_outputs:
        if key not in outputs:
            raise bad(f"outputs.{key}", f"is missing (a {role} manifest names its {', '.join(need_outputs)} "
                                        "output tensors)")
    required = ("spec", "min_score") if role == "detector" else ("crop", "embedding_size", "min_cosine_similarity")
    for key in required:
        if key not in section:
            raise bad(f"{role}.{key}", "is missing" + (" (the crop recipe the embedder was trained with)"
                                                       if key == "crop" else "")
                      + "; rebuild the model with `edgeface build`")
    if role == "detector":
        if not isinstance(section["spec"], str):
            raise bad("detector.spec", f"must be a model name, got {section['spec']!r}")
        if not (_finite(section["min_score"]) and 0 < section["min_score"] < 1):
            raise bad("detector.min_score", f"must be in (0, 1), got {section['min_score']!r}")
        iou = section.get("iou_threshold", 0.3)
        if not (_finite(iou) and 0 <= iou <= 1):
            raise bad("detector.iou_threshold", f"must be in [0, 1], got {iou!r}")
        return
    if not _count(section["embedding_size"], 1, 65536):
        raise bad("embedder.embedding_size", f"must be a positive integer, got {section['embedding_size']!r}")
    if not (_finite(section["min_cosine_similarity"]) and -1 <= section["min_cosine_similarity"] <= 1):
        raise bad("embedder.min_cosine_similarity", f"must be in [-1, 1], got {section['min_cosine_similarity']!r}")
    if not isinstance(section.get("flip", False), bool):
        raise bad("embedder.flip", f"must be true or false, got {section['flip']!r}")
    band = section.get("flip_band", 0.0)
    if isinstance(band, bool) or not (_finite(band) and 0 <= band <= 2):
        raise bad("embedder.flip_band", f"must be a number in [0, 2], got {band!r}")
    center = section.get("embedding_mean")
    if center is not None:  # its length is checked against the model's output by check_model
        if not (isinstance(center, list) and center and all(_finite(v) for v in center)
                and 0 < sum(v * v for v in center) < 1):
            raise bad("embedder.embedding_mean", "must be a list of numbers forming a vector of length in (0, 1)")
    points = section.get("operating_points", {})
    if not isinstance(points, dict):
        raise bad("embedder.operating_points", f"must be an object, got {points!r}")
    for name, point in points.items():
        t = point.get("min_cosine_similarity") if isinstance(point, dict) else None
        if not (_finite(t) and -1 <= t <= 1):
            raise bad(f"embedder.operating_points.{name}.min_cosine_similarity", f"must be in [-1, 1], got {t!r}")
        tar = point.get("tar")
        if tar is not None and not (_finite(tar) and 0 <= tar <= 1):
            raise bad(f"embedder.operating_points.{name}.tar", f"must be in [0, 1], got {tar!r}")
    crop = section["crop"]
    if not isinstance(crop, dict):
        raise bad("embedder.crop", f"must be an object, got {crop!r}")
    if crop.get("method") not in CROP_METHODS:
        raise bad("embedder.crop.method", f"must be one of {CROP_METHODS}, got {crop.get('method')!r}")
    if not _count(crop.get("size"), 16, _MAX_SIDE):
        raise bad("embedder.crop.size", f"must be an integer in 16..{_MAX_SIDE}, got {crop.get('size')!r}")
    if [crop["size"], crop["size"]] != shape[1:3]:
        raise bad("embedder.crop.size", f"is {crop['size']} but input.shape is {shape}: the crop must fill the "
                                        "model's square input")
    if crop["method"] == "landmarks":
        pts, tpl = crop.get("points"), crop.get("template")
        ok = (isinstance(pts, list) and isinstance(tpl, list) and len(pts) == len(tpl) >= 2
              and all(isinstance(n, str) for n in pts)
              and all(isinstance(t, list) and len(t) == 2 and all(_finite(v) and 0 <= v <= crop["size"] for v in t)
                      for t in tpl))
        if not ok:
            raise bad("embedder.crop.template", "a landmarks recipe needs as many keypoint names (points) as "
                                                "template points [x, y] inside the crop (at least 2)")
    for key in _CROP_KEYS[crop["method"]]:
        v = crop.get(key)
        ok = _finite(v) and (abs(v) <= 2 if key == "shift_y" else 0 <= v <= 5 if key == "margin" else 0 < v <= 10)
        if not ok:
            raise bad(f"embedder.crop.{key}", f"is missing or out of range for method {crop['method']!r}: {v!r}")


#: How a landmark model's input is cut from a face box (see :mod:`edgeface.landmarks`).
LANDMARK_CROP_METHODS = ("box_square",)


def _check_landmarks(section: dict, outputs: dict, shape: list, bad) -> None:
    """A landmark manifest: its point names, its crop from the face box, and a ``landmarks`` output."""
    if "landmarks" not in outputs:
        raise bad("outputs.landmarks", "is missing (a landmarks manifest names its points output tensor)")
    pts = section.get("points")
    if not (isinstance(pts, list) and len(pts) >= 2 and all(isinstance(n, str) for n in pts)):
        raise bad("landmarks.points", f"must list the point names in output order, got {pts!r}")
    crop = section.get("crop")
    if not isinstance(crop, dict) or crop.get("method") not in LANDMARK_CROP_METHODS:
        raise bad("landmarks.crop.method", f"must be one of {LANDMARK_CROP_METHODS}, got "
                                           f"{crop.get('method') if isinstance(crop, dict) else crop!r}")
    if [crop.get("size"), crop.get("size")] != shape[1:3]:
        raise bad("landmarks.crop.size", f"is {crop.get('size')!r} but input.shape is {shape}")
    if not (_finite(crop.get("scale")) and 0.2 <= crop["scale"] <= 5):
        raise bad("landmarks.crop.scale", f"must be in [0.2, 5] box widths, got {crop.get('scale')!r}")
    if not (_finite(crop.get("shift_y")) and abs(crop["shift_y"]) <= 2):
        raise bad("landmarks.crop.shift_y", f"must be in [-2, 2] box widths, got {crop.get('shift_y')!r}")


def check_model(data: dict[str, Any], interpreter, source: str = "<manifest>") -> None:
    """Check a validated manifest against the model's real tensors (``interpreter`` allocated).

    The input tensor's shape and dtype must be the manifest's, every named output must exist, and an
    embedder's output must have ``embedding_size`` values. A mismatch is a :class:`ManifestError` at load,
    not a failure on every frame.
    """
    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        raise ManifestError(f"{source}: the model has {len(inputs)} inputs; edgeface models have one")
    real = [int(d) for d in inputs[0]["shape"]]
    if real != list(data["input"]["shape"]):
        raise ManifestError(f"{source}: input.shape is {data['input']['shape']} but the model's input tensor is "
                            f"{real}")
    dtype = getattr(inputs[0]["dtype"], "__name__", str(inputs[0]["dtype"]))
    if dtype != data["input"]["dtype"]:
        raise ManifestError(f"{source}: input.dtype is {data['input']['dtype']!r} but the model's input tensor is "
                            f"{dtype!r}")
    details = {d["name"]: d for d in interpreter.get_output_details()}
    for role, name in data["outputs"].items():
        if name not in details:
            raise ManifestError(f"{source}: outputs.{role} names tensor {name!r}, but the model's outputs are "
                                f"{sorted(details)}")
    if data["role"] == "landmarks":
        size = int(math.prod(int(d) for d in details[data["outputs"]["landmarks"]]["shape"][1:]))
        if size != 2 * len(data["landmarks"]["points"]):
            raise ManifestError(f"{source}: landmarks.points names {len(data['landmarks']['points'])} points but "
                                f"the model's landmarks output has {size} values")
    if data["role"] == "embedder":
        size = int(math.prod(int(d) for d in details[data["outputs"]["embedding"]]["shape"][1:]))
        if size != data["embedder"]["embedding_size"]:
            raise ManifestError(f"{source}: embedder.embedding_size is {data['embedder']['embedding_size']} but the "
                                f"model's embedding output has {size} values")
        center = data["embedder"].get("embedding_mean")
        if center is not None and len(center) != size:
            raise ManifestError(f"{source}: embedder.embedding_mean has {len(center)} values but the model's "
                                f"embedding output has {size}")


def read_manifest(model_path: str | os.PathLike, verify_hash: bool = True) -> dict[str, Any]:
    """Read and validate the manifest of ``model_path``.

    With ``verify_hash`` the model file's sha256 must match the manifest (catches a truncated or swapped
    model before it is ever loaded).
    """
    model_path = Path(model_path)
    path = manifest_path(model_path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found for model {model_path.name}; "
                            "models are built with `edgeface build`")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from exc
    validate(data, str(path))
    if data["model_file"] != model_path.name:
        raise ManifestError(f"{path}: describes {data['model_file']!r}, not {model_path.name!r}")
    if verify_hash:
        if not model_path.is_file():
            raise ManifestError(f"{model_path}: model file missing")
        digest = sha256_file(model_path)
        if digest != data["sha256"]:
            raise ManifestError(f"{model_path}: sha256 {digest[:12]}… does not match its manifest "
                                f"({data['sha256'][:12]}…); the file is truncated, corrupt or replaced")
    return data


def write_manifest(model_path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Validate ``data``, fill in ``model_file`` and ``sha256`` from the model, write it atomically."""
    model_path = Path(model_path)
    data = dict(data, model_file=model_path.name, sha256=sha256_file(model_path), format=FORMAT)
    path = manifest_path(model_path)
    validate(data, str(path))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


INDEX = "models.json"


def read_index(models_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``models.json`` index of a models folder (a :class:`ManifestError` when missing or unreadable)."""
    models_dir = Path(models_dir)
    path = models_dir / INDEX
    if models_dir.is_file():
        raise ManifestError(f"{models_dir} is a file; --models / EDGEFACE_MODELS names the folder written by "
                            "`edgeface build` (holding models.json)")
    if not path.is_file():
        raise ManifestError(f"{path} not found: build the models first with `edgeface build --out {models_dir}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable index ({exc})") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the index must be a JSON object")
    return data


def resolve_landmarks(models_dir: str | os.PathLike, precision: str = "int8") -> Path | None:
    """The landmark model of ``precision`` listed in a models folder's index (``landmarks`` section), or None
    when the folder has none (an older build: embedders then align on the detector's keypoints)."""
    models_dir = Path(models_dir)
    entry = read_index(models_dir).get("landmarks")
    if entry is None:
        return None
    try:
        return models_dir / entry[entry["default"]][precision]
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{models_dir / INDEX}: the landmarks section lists no {precision} model ({exc})") from exc


def resolve_models(models_dir: str | os.PathLike, precision: str = "int8") -> tuple[Path, Path]:
    """(detector, embedder) paths of ``precision`` from a models folder's ``models.json`` index.

    The detector is the default configuration's first whole-frame model; use
    :func:`edgeface.detect.resolve_detector` for the whole configuration.
    """
    models_dir = Path(models_dir)
    if precision not in ("int8", "float32"):
        raise OptionError(f"precision must be 'int8' or 'float32', got {precision!r}")
    index = read_index(models_dir)
    try:
        entry = index[precision]
        return models_dir / entry["detector"], models_dir / entry["embedder"]
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{models_dir / INDEX}: no {precision} detector and embedder listed ({exc})") from exc
