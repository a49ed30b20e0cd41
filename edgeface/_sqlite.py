"""SQLite plumbing shared by the gallery (:mod:`edgeface.gallery`) and the device's event log.

Both keep their data in one SQLite file that must survive a killed process or a power cut, so both open it
the same way:

* ``isolation_level=None`` (autocommit): Python's sqlite3 does not open transactions behind our back; every
  write is an explicit :func:`transaction`, so schema creation is transactional too;
* ``synchronous = FULL``: a COMMIT returns only once the data is on disk;
* write-ahead logging (:func:`use_wal`): readers never block the writer. The journal mode is stored in the
  file, so it is switched on only once the file is known to be ours.

Biometric data lives in these files, so a file edgeface creates is readable by its owner only
(:func:`create_private`: 0600, and 0700 for any folder it has to create) and an existing one is tightened
when opened (:func:`tighten`), both through :mod:`edgeface.private`. SQLite gives the ``-wal`` and ``-shm``
files the database file's mode.

Only the standard library is used.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Iterator, Optional, Union

from . import private


def connect(path: Union[str, "os.PathLike[str]"], *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (or create) the database at ``path`` in autocommit mode with ``synchronous = FULL``.

    ``timeout`` is 10 s: another process holding the write lock is waited for, not failed on.
    ``check_same_thread=False`` lets a connection be used from another thread (the caller serializes).
    """
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=check_same_thread)
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def connect_readonly(path: Union[str, "os.PathLike[str]"], *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open an existing database read-only (``mode=ro``): never creates the file or writes a schema into it.

    ``check_same_thread`` as in :func:`connect`.
    """
    from urllib.parse import quote

    uri = "file:" + quote(Path(path).resolve().as_posix()) + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None, check_same_thread=check_same_thread)


def use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to write-ahead logging (persistent: call it only on a file known to be ours)."""
    conn.execute("PRAGMA journal_mode = WAL")


def table_names(conn: sqlite3.Connection) -> set[str]:
    """Names of the tables in the database (empty for a new file)."""
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Execute the ``;``-separated statements of ``script`` one at a time, inside the caller's transaction.

    (``executescript()`` would COMMIT first, breaking the transaction.)
    """
    for stmt in filter(str.strip, script.split(";")):
        conn.execute(stmt)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception (re-raised).

    IMMEDIATE takes the write lock at the start, so two writers queue (up to the connection's timeout)
    instead of one failing halfway through with "database is locked".
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def create_private(path: Union[str, "os.PathLike[str]"]) -> bool:
    """Create ``path`` as an empty file of mode 0600 (and its missing parent folders as 0700).

    Returns False when the file already existed (it is left as it is: :func:`tighten` it). SQLite then opens
    the empty file as a new database and gives its ``-wal``/``-shm`` files the same mode.
    """
    return private.private_file(path)


def tighten(path: Union[str, "os.PathLike[str]"], log: Optional[logging.Logger] = None) -> None:
    """Take away group and other permissions from the database ``path`` and its ``-wal``/``-shm`` files,
    with a warning each (:func:`edgeface.private.tighten`)."""
    base = os.fspath(path)
    for name in (base, base + "-wal", base + "-shm"):
        try:
            private.tighten(name, log)
        except FileNotFoundError:
            continue


def quick_check(conn: sqlite3.Connection) -> list[str]:
    """``PRAGMA quick_check``: an empty list when the file is sound, else SQLite's description of each problem."""
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else rows
