"""The access-event log in SQLite: WAL mode, one transaction per event, retention.

Each row: time (unix seconds and ISO UTC), kind (``access`` for a door decision, or ``camera_lost``,
``camera_restored``, ``start``, ``stop``, ``error``, ``enroll``), track id, identity (NULL = unknown), score
(cosine similarity), decision (``grant``, ``deny``, ``unknown``, ``spoof``, ``cooldown``), optional snapshot
path and a free-text detail. A process killed mid-write (or a power cut) loses at most the event being
written; every committed event survives.

An event is committed before anything else happens: the loop opens the door only after the grant's event is
on disk, and a snapshot file is written after its event (a failed snapshot leaves no file and a NULL path).
Retention (``retention_days``, ``max_events``) is enforced in the same transaction as every insert; snapshot
files that no event names (a SIGKILL between the two) are swept at open. The database, its WAL files and the
snapshots are created 0600 in 0700 folders and tightened (with a warning) when found readable by others.
:meth:`EventLog.forget` erases a person (every event naming them and their snapshots).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, Optional

import cv2
import numpy as np

from edgeface import _sqlite, private
from edgeface.errors import EdgefaceError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY,
    ts        REAL NOT NULL,
    time      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    track     INTEGER,
    identity  TEXT,
    score     REAL,
    decision  TEXT,
    snapshot  TEXT,
    detail    TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
"""
COLUMNS = ("id", "ts", "time", "kind", "track", "identity", "score", "decision", "snapshot", "detail")
#: a failing snapshot folder (full disk) is reported at most this often
SNAPSHOT_WARNING_SECONDS = 60.0
#: file names the snapshot folder may hold (anything else there is left alone)
SNAPSHOT_SUFFIXES = (".jpg", ".tmp", ".aesgcm")


class EventLogError(EdgefaceError, RuntimeError):
    """The event log cannot be opened or written."""


class Event(NamedTuple):
    id: int
    ts: float
    time: str
    kind: str
    track: Optional[int]
    identity: Optional[str]
    score: Optional[float]
    decision: Optional[str]
    snapshot: Optional[str]
    detail: Optional[str]

    def to_json(self) -> dict:
        return self._asdict()


class EventLog:
    """Append-only access log with retention (``retention_days``, ``max_events``) and optional snapshots.

    ``readonly=True`` opens an existing log for reading only (``edgeface-device events``): nothing is created,
    no schema is written, an empty or foreign file is an :class:`EventLogError`.

    ``on_insert``: callables ``hook(conn, event)`` run inside each event's transaction (the site outbox
    adds its row there, so an event is logged and queued for the hub together or not at all).
    """

    on_insert: tuple = ()

    def __init__(self, path: str | os.PathLike, retention_days: float = 90.0, max_events: int = 1_000_000,
                 snapshot_dir: Optional[str | os.PathLike] = None, readonly: bool = False, cipher=None):
        self.path = os.fspath(path)
        self.retention_days, self.max_events = float(retention_days), int(max_events)
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        self.readonly = readonly
        self.cipher = cipher  #: an edgeface.device.crypto.Cipher: snapshots are sealed (*.jpg.aesgcm)
        self._conn = None
        self._snapshot_failures, self._snapshot_warned = 0, -1e9
        try:
            if readonly:
                self._conn = self._open_readonly()
            else:
                if self.path != ":memory:" and not _sqlite.create_private(self.path):
                    _sqlite.tighten(self.path, log)  # with its -wal/-shm files: older ones may be loose
                self._conn = _sqlite.connect(self.path, check_same_thread=False)
                tables = _sqlite.table_names(self._conn)
                if tables and "events" not in tables:
                    raise EventLogError(f"{self.path} is not an edgeface event log (tables: {sorted(tables)})")
                _sqlite.use_wal(self._conn)
                with _sqlite.transaction(self._conn):
                    _sqlite.run_script(self._conn, SCHEMA)
        except sqlite3.Error as exc:
            self.close()
            raise EventLogError(f"cannot open event log {self.path}: {exc}{_disk_note(self.path)}") from exc
        except OSError as exc:
            self.close()
            raise EventLogError(f"cannot create event log {self.path}: {exc.strerror or exc}") from exc
        except EventLogError:
            self.close()
            raise
        if readonly:
            return
        if self.snapshot_dir is not None:
            try:
                private.private_dir(self.snapshot_dir, log=log)
            except OSError as exc:
                self.close()
                raise EventLogError(f"cannot create snapshot folder {self.snapshot_dir}: "
                                    f"{exc.strerror or exc}") from exc
            self.sweep_snapshots()
        self.prune()

    def _open_readonly(self) -> sqlite3.Connection:
        p = Path(self.path)
        if not p.is_file():
            raise EventLogError(f"no event log at {self.path}" + (" (it is a folder)" if p.is_dir() else ""))
        if p.stat().st_size == 0:
            raise EventLogError(f"{self.path} is an empty file, not an edgeface event log")
        conn = _sqlite.connect_readonly(p, check_same_thread=False)
        try:
            tables = _sqlite.table_names(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise EventLogError(f"{self.path} is not an edgeface event log: {exc}") from exc
        if "events" not in tables:
            conn.close()
            raise EventLogError(f"{self.path} is not an edgeface event log (tables: {sorted(tables)})")
        return conn

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise EventLogError(f"event log {self.path} is closed")
        return self._conn

    def log(self, kind: str, track: Optional[int] = None, identity: Optional[str] = None,
            score: Optional[float] = None, decision: Optional[str] = None, detail: Optional[str] = None,
            snapshot: Optional[np.ndarray] = None, ts: Optional[float] = None) -> int:
        """Write one event (one transaction, with the retention bounds applied in it); returns its id.

        ``snapshot`` is an RGB image, saved as JPEG only after the event is committed. Raises
        :class:`EventLogError` when the event cannot be committed (disk full, read-only, corrupt): the caller
        must then not act on the decision (the loop keeps the door locked).
        """
        ts = time.time() if ts is None else float(ts)
        iso = datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")
        snap_path = None
        if snapshot is not None and self.snapshot_dir is not None and snapshot.size:
            snap_path = self._snapshot_path(ts, track)
        if score is not None and not np.isfinite(score):
            score = None
        try:
            with _sqlite.transaction(self._db) as conn:
                cur = conn.execute(
                    "INSERT INTO events (ts, time, kind, track, identity, score, decision, snapshot, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ts, iso, kind, track, identity, None if score is None else float(score), decision,
                     None if snap_path is None else str(snap_path), detail))
                event_id = int(cur.lastrowid)
                for hook in self.on_insert:  # e.g. the site outbox: written in this same transaction
                    hook(conn, Event(event_id, ts, iso, kind, track, identity, score, decision,
                                     None if snap_path is None else str(snap_path), detail))
                old_snapshots = self._prune_in(conn, time.time())
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot write to event log {self.path}: {exc}{_disk_note(self.path)}") from exc
        if snap_path is not None and str(snap_path) in old_snapshots:  # an event already beyond the retention
            old_snapshots.remove(str(snap_path))
            snap_path = None
        _unlink_all(old_snapshots)
        if snap_path is not None and not self._save_snapshot(snapshot, snap_path):
            try:
                with _sqlite.transaction(self._db) as conn:
                    conn.execute("UPDATE events SET snapshot = NULL WHERE id = ?", (event_id,))
            except sqlite3.Error:  # the path names no file; the next open's sweep is not needed for that
                log.debug("snapshot path of event %d not cleared", event_id, exc_info=True)
        return event_id

    def _snapshot_path(self, ts: float, track: Optional[int]) -> Path:
        name = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y%m%dT%H%M%S_%f") + f"_t{track or 0}"
        ext = ".jpg" if self.cipher is None else ".jpg.aesgcm"
        path = self.snapshot_dir / f"{name}{ext}"
        i = 1
        while path.exists():  # two decisions in the same microsecond
            path, i = self.snapshot_dir / f"{name}_{i}{ext}", i + 1
        return path

    def _encode_snapshot(self, image: np.ndarray, name: str) -> bytes:
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]))
        if not ok:
            raise OSError("JPEG encoding failed")
        if self.cipher is not None:  # the file name is the associated data: a renamed file does not decrypt
            return self.cipher.seal(data.tobytes(), name.encode())
        return data.tobytes()

    def _save_snapshot(self, image: np.ndarray, path: Path) -> bool:
        """Write the snapshot (0600, via a temporary file); on any failure nothing is left behind."""
        tmp = path.with_name(path.name.split(".")[0] + ".tmp")
        try:
            private.write_private(tmp, self._encode_snapshot(image, path.name))
            os.replace(tmp, path)
        except OSError as exc:
            _unlink_all([tmp])
            self._snapshot_failures += 1
            now = time.monotonic()
            if now - self._snapshot_warned >= SNAPSHOT_WARNING_SECONDS:  # a full disk fails every one: once a minute
                log.warning("snapshot not saved: %s (%d snapshot(s) not saved so far)", exc.strerror or exc,
                            self._snapshot_failures)
                self._snapshot_warned = now
            return False
        return True

    def sweep_snapshots(self) -> int:
        """Delete snapshot files no event names (left by a kill between an event and its file, or by a full disk)
        and tighten loose ones; returns how many were deleted."""
        if self.snapshot_dir is None or not self.snapshot_dir.is_dir():
            return 0
        rows = self._db.execute("SELECT snapshot FROM events WHERE snapshot IS NOT NULL")
        named = {os.path.basename(r[0]) for r in rows}
        orphans = []
        for entry in os.scandir(self.snapshot_dir):
            if not entry.is_file(follow_symlinks=False) or not entry.name.endswith(SNAPSHOT_SUFFIXES):
                continue
            if entry.name in named:
                private.tighten(entry.path, log)
            else:
                orphans.append(entry.path)
        _unlink_all(orphans)
        if orphans:
            log.warning("snapshot folder %s: %d file(s) without an event deleted", self.snapshot_dir, len(orphans))
        return len(orphans)

    def _prune_in(self, conn: sqlite3.Connection, now: float) -> list[str]:
        """Delete events beyond the retention inside the caller's transaction; returns their snapshot paths."""
        # by age first, then by count: the newest max_events ids stay (MAX(id) read after the age pass, so an
        # already too old event just inserted does not push a current one out)
        passes = [("id <= (SELECT COALESCE(MAX(id), 0) FROM events) - ?", (self.max_events,))]
        if self.retention_days > 0:
            passes.insert(0, ("ts < ?", (now - self.retention_days * 86400.0,)))
        snaps, n = [], 0
        for where, params in passes:
            snaps += [r[0] for r in conn.execute(
                f"SELECT snapshot FROM events WHERE ({where}) AND snapshot IS NOT NULL", params)]
            n += conn.execute(f"DELETE FROM events WHERE {where}", params).rowcount
        if n:
            log.info("event log: %d old event(s) deleted", n)
        return snaps

    def prune(self, now: Optional[float] = None) -> int:
        """Delete events (and their snapshots) beyond the retention; returns how many were deleted."""
        now = time.time() if now is None else now
        before = self.count()
        try:
            with _sqlite.transaction(self._db) as conn:
                snaps = self._prune_in(conn, now)
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot prune event log {self.path}: {exc}") from exc
        _unlink_all(snaps)
        return before - self.count()

    def forget(self, name: str) -> tuple[int, int]:
        """Erase a person: delete every event naming ``name`` and their snapshot files, in one transaction.

        A site door's ``outbox`` table (:mod:`edgeface.device.site.outbox`) lives in this file too: its rows
        naming ``name`` (copies of those events not yet sent to the hub) are deleted in the same transaction.
        Returns (events deleted, snapshot files deleted).
        """
        try:
            with _sqlite.transaction(self._db) as conn:
                snaps = [r[0] for r in conn.execute(
                    "SELECT snapshot FROM events WHERE identity = ? AND snapshot IS NOT NULL", (name,))]
                n = conn.execute("DELETE FROM events WHERE identity = ?", (name,)).rowcount
                if "outbox" in _sqlite.table_names(conn):
                    conn.execute("DELETE FROM outbox WHERE identity = ?", (name,))
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot erase {name!r} from event log {self.path}: {exc}") from exc
        return n, _unlink_all(snaps)

    def rename(self, old: str, new: str) -> int:
        """Rewrite ``old`` to ``new`` in every event (so a renamed person's old name is not kept); returns the count."""
        try:
            with _sqlite.transaction(self._db) as conn:
                return conn.execute("UPDATE events SET identity = ? WHERE identity = ?", (new, old)).rowcount
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot rename {old!r} in event log {self.path}: {exc}") from exc

    def check(self) -> list[str]:
        """``PRAGMA quick_check`` of the database: an empty list when sound, else SQLite's problems
        (:func:`edgeface._sqlite.quick_check`, as :meth:`edgeface.Gallery.check`)."""
        return _sqlite.quick_check(self._db)

    def events(self, limit: Optional[int] = 100, since: Optional[float] = None,
               kind: Optional[str] = None) -> list[Event]:
        """Newest events last (the last ``limit``), optionally only since ``since`` or of one ``kind``."""
        conds, params = [], []
        if since is not None:
            conds.append("ts >= ?")
            params.append(since)
        if kind is not None:
            conds.append("kind = ?")
            params.append(kind)
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        sql = f"SELECT {', '.join(COLUMNS)} FROM events {where} ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        try:
            rows = self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot read event log {self.path}: {exc}") from exc
        return [Event(*r) for r in reversed(rows)]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            conn.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: doctor calls the event log's disk full below this much free space
MIN_FREE_BYTES = 256 << 10


def check_event_log(path: str | os.PathLike, snapshot_dir: Optional[str | os.PathLike] = None) -> tuple[bool, str]:
    """``doctor``'s check: can access events (and snapshots) be committed now? (ok, one-line detail).

    Reads the log without changing it (``PRAGMA quick_check``), and writes and deletes a 64 KiB probe file in
    each folder (a full or read-only disk fails there). The loop refuses to open the door for a decision it
    cannot record, so a failure here means no one gets in.
    """
    path = Path(path)
    problems, notes = [], []
    if path.exists():
        try:
            with EventLog(path, readonly=True) as ev:
                state = ev.check()
                notes.append(f"{ev.count()} events")
            if state:
                problems.append(f"corrupt ({'; '.join(state[:3])})")
        except EventLogError as exc:
            problems.append(str(exc))
    else:
        notes.append("not created yet")
    folders = [path.absolute().parent] + ([Path(snapshot_dir)] if snapshot_dir else [])
    for folder in folders:
        target = folder if folder.is_dir() else next((p for p in folder.parents if p.is_dir()), None)
        if target is None:
            problems.append(f"{folder}: no such folder")
            continue
        probe = target / f".edgeface-probe-{os.getpid()}"
        try:
            private.write_private(probe, b"\0" * 65536)
            with open(probe, "rb+") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            problems.append(f"{target} not writable: {exc.strerror or exc}")
        finally:
            _unlink_all([probe])
        free = _free_bytes(target)
        if free is not None and free < MIN_FREE_BYTES:
            problems.append(f"{target}: only {free // 1024} KiB free")
    if problems:
        return False, f"{path}: " + "; ".join(dict.fromkeys(problems)) + " - access decisions cannot be recorded, " \
                                                                         "so the door will not open"
    return True, f"{path}: " + ", ".join(notes + ["writable"])


def _free_bytes(folder: str | os.PathLike) -> Optional[int]:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _disk_note(path: str) -> str:
    """" (disk full: 0 KiB free)" when the log's filesystem is (nearly) full: SQLite only says "disk I/O error"."""
    free = None if path == ":memory:" else _free_bytes(Path(path).absolute().parent)
    return f" (disk full: {free // 1024} KiB free)" if free is not None and free < MIN_FREE_BYTES else ""


def _unlink_all(paths) -> int:
    """Delete files, ignoring ones already gone; returns how many were deleted."""
    n = 0
    for p in paths:
        try:
            os.unlink(p)
            n += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot delete %s: %s", p, exc.strerror or exc)
    return n
