"""Private files for biometric data: created readable by their owner only, tightened when found looser.

The gallery (:mod:`edgeface.gallery`), and on a device the event log, its snapshots and keys, hold faces,
embeddings and access records. Every file edgeface creates for them is 0600 and every folder it has to
create 0700, whatever the umask (:func:`private_file`, :func:`private_dir`, :func:`write_private`); a file
or folder found accessible to other users when opened is tightened with one warning line (:func:`tighten`).
SQLite gives a database's ``-wal`` and ``-shm`` files the database file's mode (see
:func:`edgeface._sqlite.create_private`).

Only the standard library is used.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

FILE_MODE, DIR_MODE = 0o600, 0o700

logger = logging.getLogger(__name__)


def tighten(path: PathLike, log: Optional[logging.Logger] = None) -> bool:
    """Take group and other permissions away from ``path`` (a file or a folder), with a warning on ``log``.

    Returns True when the mode was changed. A path that cannot be changed (owned by someone else) gets a
    warning saying so and is left as it is; nothing is raised.
    """
    log = log or logger
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & 0o077:
        return False
    try:
        os.chmod(path, mode & 0o700)
    except OSError as exc:
        log.warning("%s is accessible to other users (mode %04o) and could not be made private: %s",
                    path, mode, exc.strerror or exc)
        return False
    log.warning("%s was accessible to other users (mode %04o); now %04o (owner only)", path, mode, mode & 0o700)
    return True


def private_dir(path: PathLike, tighten_existing: bool = True, log: Optional[logging.Logger] = None) -> Path:
    """Create folder ``path`` and its missing parents with mode 0700, or tighten an existing one (unless
    ``tighten_existing`` is false: a folder that also holds other things, e.g. ``/var/lib/edgeface``).

    Raises NotADirectoryError naming the first part of the path that is a file (``/etc/passwd/events``).
    """
    path = Path(path)
    missing = []
    for part in [path, *path.parents]:
        if part.is_dir():
            break
        if part.exists():
            raise NotADirectoryError(f"{part} is a file, not a folder")
        missing.append(part)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:  # created by another process meanwhile
            continue
        os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered by the umask
    if not missing and tighten_existing:
        tighten(path, log)
    return path


def private_file(path: PathLike) -> bool:
    """Create ``path`` as an empty file of mode 0600 (its missing folders 0700) before SQLite or anyone else
    creates it with the umask's mode. Returns False when the file already existed (it is left as it is:
    :func:`tighten` it)."""
    path = Path(path)
    private_dir(path.parent, tighten_existing=False)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def write_private(path: PathLike, data: bytes) -> None:
    """Write ``data`` to a new file created 0600 (``O_EXCL``: never follows or reuses an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
