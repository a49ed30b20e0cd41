"""The access-event log in SQLite: WAL mode, one transaction per event, retention.

Each row: time (unix seconds and ISO UTC), kind (``access`` for a door decision, or ``camera_lost``,
``camera_restored``, ``start``, ``stop``, ``error``, ``enroll``), track id, identity (NULL = unknown), score
(cosine similarity), decision (``grant``, ``deny``, ``unknown``, ``spoof``, ``cooldown``), optional snapshot
path and a free-text detail. A process killed mid-write (or a power cut) loses at most the event being
written; every committed event survives.
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

from edgeface import _sqlite
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

    ``on_insert``: callables ``hook(conn, event)`` run inside each event's transaction (the site outbox
    adds its row there, so an event is logged and queued for the hub together or not at all).
    """

    on_insert: tuple = ()

    def __init__(self, path: str | os.PathLike, retention_days: float = 90.0, max_events: int = 1_000_000,
                 snapshot_dir: Optional[str | os.PathLike] = None, prune_every: int = 100):
        self.path = os.fspath(path)
        self.retention_days, self.max_events = float(retention_days), int(max_events)
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        self.prune_every = max(1, int(prune_every))
        self._since_prune = 0
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = _sqlite.connect(self.path, check_same_thread=False)
            tables = _sqlite.table_names(self._conn)
            if tables and "events" not in tables:
                raise EventLogError(f"{self.path} is not an edgeface event log (tables: {sorted(tables)})")
            _sqlite.use_wal(self._conn)
            with _sqlite.transaction(self._conn):
                _sqlite.run_script(self._conn, SCHEMA)
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot open event log {self.path}: {exc}") from exc
        if self.snapshot_dir is not None:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.prune()

    def log(self, kind: str, track: Optional[int] = None, identity: Optional[str] = None,
            score: Optional[float] = None, decision: Optional[str] = None, detail: Optional[str] = None,
            snapshot: Optional[np.ndarray] = None, ts: Optional[float] = None) -> int:
        """Write one event (one transaction); returns its id. ``snapshot`` is an RGB image saved as JPEG."""
        ts = time.time() if ts is None else float(ts)
        iso = datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")
        snap_path = None
        if snapshot is not None and self.snapshot_dir is not None and snapshot.size:
            snap_path = self._save_snapshot(snapshot, ts, track)
        if score is not None and not np.isfinite(score):
            score = None
        try:
            with _sqlite.transaction(self._conn) as conn:
                cur = conn.execute(
                    "INSERT INTO events (ts, time, kind, track, identity, score, decision, snapshot, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ts, iso, kind, track, identity, None if score is None else float(score), decision, snap_path,
                     detail))
                for hook in self.on_insert:  # e.g. the site outbox: written in this same transaction
                    hook(conn, Event(int(cur.lastrowid), ts, iso, kind, track, identity, score, decision,
                                     snap_path, detail))
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot write to event log {self.path}: {exc}") from exc
        self._since_prune += 1
        if self._since_prune >= self.prune_every:
            self.prune()
        return int(cur.lastrowid)

    def _save_snapshot(self, image: np.ndarray, ts: float, track: Optional[int]) -> Optional[str]:
        name = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y%m%dT%H%M%S_%f") + f"_t{track or 0}.jpg"
        path = self.snapshot_dir / name
        tmp = path.with_suffix(".tmp")
        try:
            ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]))
            if not ok:
                raise OSError("JPEG encoding failed")
            tmp.write_bytes(data.tobytes())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("snapshot not saved: %s", exc)
            return None
        return str(path)

    def prune(self, now: Optional[float] = None) -> int:
        """Delete events (and their snapshots) beyond the retention; returns how many were deleted."""
        self._since_prune = 0
        now = time.time() if now is None else now
        conds, params = [], []
        if self.retention_days > 0:
            conds.append("ts < ?")
            params.append(now - self.retention_days * 86400.0)
        conds.append("id <= (SELECT COALESCE(MAX(id), 0) FROM events) - ?")
        params.append(self.max_events)
        where = " OR ".join(conds)
        try:
            with _sqlite.transaction(self._conn) as conn:
                snaps = [r[0] for r in conn.execute(
                    f"SELECT snapshot FROM events WHERE ({where}) AND snapshot IS NOT NULL", params)]
                n = conn.execute(f"DELETE FROM events WHERE {where}", params).rowcount
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot prune event log {self.path}: {exc}") from exc
        for s in snaps:
            try:
                os.unlink(s)
            except OSError:
                pass
        if n:
            log.info("event log: %d old event(s) deleted", n)
        return n

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
        rows = self._conn.execute(sql, params).fetchall()
        return [Event(*r) for r in reversed(rows)]

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            conn.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
