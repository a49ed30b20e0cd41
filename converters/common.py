"""Small helpers shared by the converters: atomic writes, upstream file lookup (and the core progress bar)."""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from edgeface import __version__
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
