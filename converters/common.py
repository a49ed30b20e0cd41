"""Small helpers shared by the converters: atomic writes, progress bars, upstream file lookup, the models index
(``models.json``) and the TFLite flatbuffer schema.

Every other converter module may import this one; it imports none of them (no cycles).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Optional

from edgeface import __version__
from edgeface.errors import EdgefaceError
from edgeface.manifest import INDEX
from edgeface.progress import progress  # noqa: F401  (re-exported: the converters call common.progress)

log = logging.getLogger(__name__)
CONVERTER_VERSION = f"edgeface-converters {__version__}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and a rename: never a half-written model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; install edgeface[convert]")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected inside the installed {package!r} package")
    return path


def package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- the models index
class UpstreamError(EdgefaceError, RuntimeError):
    """Upstream weights could not be fetched, or are not the pinned file."""


def verify_sha256(path: Path, expected: str, remedy: str) -> Path:
    """``path`` if its SHA-256 is ``expected``, else :class:`UpstreamError` naming both digests and ``remedy``."""
    from edgeface.manifest import sha256_file

    digest = sha256_file(path)
    if digest != expected:
        raise UpstreamError(f"{path}: sha256 {digest} != expected {expected}; {remedy}")
    return path


class ModelsIndexError(EdgefaceError, ValueError):
    """A models folder without a readable ``models.json``; the message names the file."""


def read_index(models_dir: str | os.PathLike) -> dict:
    path = Path(models_dir) / INDEX
    if not path.is_file():
        raise ModelsIndexError(f"{path} not found: build the models first with `edgeface build --out {models_dir}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelsIndexError(f"{path}: unreadable models index ({exc})") from exc


def write_index(models_dir: str | os.PathLike, index: dict) -> Path:
    path = Path(models_dir) / INDEX
    atomic_write_bytes(path, (json.dumps(index, indent=2) + "\n").encode())
    return path


def variant_table(index: dict) -> dict:
    """``{"embedder": {variant: file}, "detectors": {spec: {variant: file}}, "landmarks": {name: {variant:
    file}}}`` including float32 / int8."""
    table = {"embedder": {}, "detectors": {}, "landmarks": {}}
    for precision in ("float32", "int8"):
        if "embedder" in index.get(precision, {}):
            table["embedder"][precision] = index[precision]["embedder"]
    for spec, entry in index.get("detectors", {}).items():
        table["detectors"][spec] = {p: entry[p] for p in ("float32", "int8") if p in entry}
    for name, entry in index.get("landmarks", {}).items():
        if isinstance(entry, dict):  # "default" names one of them
            table["landmarks"][name] = {p: entry[p] for p in ("float32", "int8") if p in entry}
    saved = index.get("variants", {})
    for v, f in saved.get("embedder", {}).items():
        table["embedder"].setdefault(v, f)
    for spec, entries in saved.get("detectors", {}).items():
        for v, f in entries.items():
            table["detectors"].setdefault(spec, {}).setdefault(v, f)
    return table


def index_models(models_dir: str | os.PathLike, variants: Optional[Iterable[str]] = None,
                 index: Optional[dict] = None) -> list[Path]:
    """Every model file listed in a models folder's index (``variants``: only those names), no duplicates.

    ``index``: the index dict to read instead of ``models_dir/models.json`` (a build before it writes it).
    """
    models_dir = Path(models_dir)
    table = variant_table(read_index(models_dir) if index is None else index)
    keep = None if variants is None else set(variants)
    files = []
    for entries in [table["embedder"], *table["detectors"].values(), *table["landmarks"].values()]:
        files += [f for v, f in entries.items() if keep is None or v in keep]
    return [models_dir / f for f in dict.fromkeys(files)]


def tflite_schema():
    """The TFLite flatbuffer schema module: LiteRT's copy (no TensorFlow import), else TensorFlow's."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
    return schema
