"""SQLite plumbing shared by the gallery (:mod:`edgeface.gallery`) and the device's event log.

Both keep their data in one SQLite file that must survive a killed process or a power cut, so both open it
the same way:

* ``isolation_level=None`` (autocommit): Python's sqlite3 does not open transactions behind our back; every
  write is an explicit :func:`transaction`, so schema creation is transactional too;
* ``synchronous = FULL``: a COMMIT returns only once the data is on disk;
* write-ahead logging (:func:`use_wal`): readers never block the writer. The journal mode is stored in the
  file, so it is switched on only once the file is known to be ours.

Only the standard library is used.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Iterator, Union


def connect(path: Union[str, "os.PathLike[str]"], *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (or create) the database at ``path`` in autocommit mode with ``synchronous = FULL``.

    ``timeout`` is 10 s: another process holding the write lock is waited for, not failed on.
    ``check_same_thread=False`` lets a connection be used from another thread (the caller serializes).
    """
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=check_same_thread)
    conn.execute("PRAGMA synchronous = FULL")
    return conn


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
