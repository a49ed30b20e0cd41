"""The JSON manifest beside every built model: the model's contract, so the device never guesses.

``models/facenet_int8.tflite`` is described by ``models/facenet_int8.json``. The manifest records the
family and role, the input size, colour order and normalization, the output names, the crop recipe an
embedder was trained with, the recognition threshold and where it was calibrated, and where the model came
from (upstream file and sha256, calibration set id, converter version).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from .errors import EdgefaceError

FORMAT = "edgeface-manifest/1"
ROLES = ("detector", "embedder")
_REQUIRED = {"format", "role", "family", "model_file", "sha256", "precision", "input", "outputs"}
_OPTIONAL = {"detector", "embedder", "upstream", "calibration", "converter_version", "quantized_ranges",
             "created", "description", "license"}
_INPUT_KEYS = {"shape", "dtype", "color", "mean", "std"}


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
    return data


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
    except (OSError, json.JSONDecodeError) as exc:
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
    if not path.is_file():
        raise ManifestError(f"{path} not found: build the models first with `edgeface build --out {models_dir}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable index ({exc})") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the index must be a JSON object")
    return data


def resolve_models(models_dir: str | os.PathLike, precision: str = "int8") -> tuple[Path, Path]:
    """(detector, embedder) paths of ``precision`` from a models folder's ``models.json`` index.

    The detector is the default configuration's first whole-frame model; use
    :func:`edgeface.detect.resolve_detector` for the whole configuration.
    """
    models_dir = Path(models_dir)
    if precision not in ("int8", "float32"):
        raise ValueError(f"precision must be 'int8' or 'float32', got {precision!r}")
    index = read_index(models_dir)
    try:
        entry = index[precision]
        return models_dir / entry["detector"], models_dir / entry["embedder"]
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{models_dir / INDEX}: no {precision} detector and embedder listed ({exc})") from exc
