"""Private files for biometric data: the event log, snapshots and keys are created 0600 (folders 0700) and
files found readable by others are tightened, with a warning, when they are opened.

Only the owner (the ``edgeface`` service user) may read faces, embeddings and access records; the systemd unit
also sets ``UMask=0077`` so anything else the service creates is private too.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE, DIR_MODE = 0o600, 0o700


def tighten(path: str | os.PathLike, mode: int) -> bool:
    """chmod ``path`` to ``mode`` if group or others have any access; warn when it was loose. Returns True if changed.

    A file that cannot be tightened (owned by someone else) is warned about and left as it is.
    """
    st = os.stat(path)
    if not stat.S_IMODE(st.st_mode) & 0o077:
        return False
    try:
        os.chmod(path, mode)
    except OSError as exc:
        log.warning("%s is readable by others (mode %o) and cannot be tightened: %s", path, stat.S_IMODE(st.st_mode),
                    exc.strerror or exc)
        return False
    log.warning("%s was readable by others (mode %o): tightened to %o", path, stat.S_IMODE(st.st_mode), mode)
    return True


def private_dir(path: str | os.PathLike, tighten_existing: bool = True) -> Path:
    """Create folder ``path`` (and its parents) with mode 0700 for the last one, or tighten an existing one
    (unless ``tighten_existing`` is false: a folder that also holds other things, e.g. the event log's).

    Raises NotADirectoryError naming the first part of the path that is a file (``/etc/passwd/events``).
    """
    path = Path(path)
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            raise NotADirectoryError(f"{part} is a file, not a folder")
        if part.is_dir():
            break
    if path.is_dir():
        if tighten_existing:
            tighten(path, DIR_MODE)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
    return path


def private_file(path: str | os.PathLike) -> Path:
    """Create an empty file with mode 0600 if missing (before SQLite or anyone else creates it with the umask's
    mode), else tighten it. Its folder must exist."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        tighten(path, FILE_MODE)
    else:
        os.close(fd)
    return path


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a new file created 0600 (``O_EXCL``: never follows or reuses an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
