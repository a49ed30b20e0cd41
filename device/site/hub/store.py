"""The hub's master gallery and event log in one SQLite file (WAL; one lock: the web server's threads and
the MQTT thread share it).

Versions: every change of a person (enroll, rename, forget) takes the next value of one site-wide counter,
so a door's highest applied version tells how far behind the hub it is.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Optional

import numpy as np

from edgeface import _sqlite
from edgeface.errors import EdgefaceError

from ..records import encode_vectors

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS people (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, valid_from REAL, valid_until REAL, thumb BLOB);
CREATE UNIQUE INDEX IF NOT EXISTS people_name ON people(name) WHERE deleted = 0;
CREATE TABLE IF NOT EXISTS embeddings (
    id INTEGER PRIMARY KEY, person_id TEXT NOT NULL, space TEXT NOT NULL, vector BLOB NOT NULL, source TEXT);
CREATE INDEX IF NOT EXISTS embeddings_person ON embeddings(person_id);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, door TEXT NOT NULL, space TEXT, ts REAL, time TEXT, kind TEXT, identity TEXT,
    score REAL, decision TEXT, detail TEXT, snapshot BLOB, embedding BLOB, received REAL NOT NULL,
    reviewed INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE INDEX IF NOT EXISTS events_identity ON events(identity);
CREATE TABLE IF NOT EXISTS doors (door TEXT PRIMARY KEY, state TEXT NOT NULL, last_seen REAL NOT NULL)
"""
EVENT_COLUMNS = ("event_id", "door", "space", "ts", "time", "kind", "identity", "score", "decision", "detail")


class HubError(EdgefaceError, ValueError):
    """A hub operation is refused (unknown person, name taken, no usable photo...)."""


class HubStore:
    def __init__(self, path: str, site: str):
        self.path, self.site = os.fspath(path), site
        self._lock = threading.RLock()
        self._conn = _sqlite.connect(self.path, check_same_thread=False)
        _sqlite.use_wal(self._conn)
        with _sqlite.transaction(self._conn):
            _sqlite.run_script(self._conn, SCHEMA)

    def _tx(self):
        return _sqlite.transaction(self._conn)

    def _next_version(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        v = (int(row[0]) if row else 0) + 1
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (str(v),))
        return v

    @property
    def version(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0

    # -- people ----------------------------------------------------------------------------------------
    def enroll(self, name: str, embeddings: dict, thumb: Optional[bytes] = None, sources=None,
               pid: Optional[str] = None) -> str:
        """Add ``{space: (k, dim) array}`` to ``name`` (a new person unless ``pid`` or the name exists)."""
        name = (name or "").strip()
        if not name or len(name) > 100:
            raise HubError("a name of 1 to 100 characters is required")
        if not embeddings or not any(len(v) for v in embeddings.values()):
            raise HubError(f"no usable face for {name}")
        with self._lock, self._tx() as c:
            if pid is None:
                row = c.execute("SELECT id FROM people WHERE name = ? AND deleted = 0", (name,)).fetchone()
                pid = row[0] if row else None
            elif c.execute("SELECT 1 FROM people WHERE id = ? AND deleted = 0", (pid,)).fetchone() is None:
                raise HubError(f"no person {pid}")
            v = self._next_version()
            if pid is None:
                pid = uuid.uuid4().hex[:16]
                c.execute("INSERT INTO people (id, name, version, created, thumb) VALUES (?, ?, ?, ?, ?)",
                          (pid, name, v, time.time(), thumb))
            else:
                c.execute("UPDATE people SET version = ?, thumb = COALESCE(thumb, ?) WHERE id = ?", (v, thumb, pid))
            for space, vecs in embeddings.items():
                vecs = np.atleast_2d(np.asarray(vecs, np.float32))
                vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
                c.executemany("INSERT INTO embeddings (person_id, space, vector, source) VALUES (?, ?, ?, ?)",
                              [(pid, space, x.astype("<f4").tobytes(), (sources or {}).get(space)) for x in vecs])
        return pid

    def rename(self, pid: str, new: str) -> None:
        new = (new or "").strip()
        if not new or len(new) > 100:
            raise HubError("a name of 1 to 100 characters is required")
        with self._lock, self._tx() as c:
            if c.execute("SELECT 1 FROM people WHERE name = ? AND deleted = 0 AND id != ?", (new, pid)).fetchone():
                raise HubError(f"{new} is already enrolled")
            old = c.execute("SELECT name FROM people WHERE id = ? AND deleted = 0", (pid,)).fetchone()
            if old is None:
                raise HubError(f"no person {pid}")
            c.execute("UPDATE people SET name = ?, version = ? WHERE id = ?", (new, self._next_version(), pid))
            c.execute("UPDATE events SET identity = ? WHERE identity = ?", (new, old[0]))

    def unknown_like(self, pid: str, thresholds: dict) -> list[str]:
        """Event ids of unknown faces (any review state) that match ``pid`` at ``thresholds[space]``: their
        snapshots are that person's too and go with them when they are forgotten."""
        with self._lock:
            mine = self._conn.execute("SELECT space, vector FROM embeddings WHERE person_id = ?", (pid,)).fetchall()
            rows = self._conn.execute("SELECT event_id, space, embedding FROM events WHERE decision = 'unknown' "
                                      "AND embedding IS NOT NULL").fetchall()
        by_space: dict = {}
        for space, blob in mine:
            by_space.setdefault(space, []).append(np.frombuffer(blob, "<f4"))
        out = []
        for eid, space, blob in rows:
            if space in by_space and space in thresholds:
                v = np.frombuffer(blob, "<f4")
                v = v / (np.linalg.norm(v) or 1.0)
                if float(np.max(np.stack(by_space[space]) @ v)) >= thresholds[space]:
                    out.append(eid)
        return out

    def delete_events(self, event_ids: list[str]) -> int:
        with self._lock, self._tx() as c:
            return sum(c.execute("DELETE FROM events WHERE event_id = ?", (e,)).rowcount for e in event_ids)

    def set_window(self, pid: str, valid_from: Optional[float], valid_until: Optional[float]) -> None:
        """Access only from ``valid_from`` until ``valid_until`` (unix seconds; None = open end)."""
        if valid_from is not None and valid_until is not None and valid_until <= valid_from:
            raise HubError("'valid until' must be after 'valid from'")
        with self._lock, self._tx() as c:
            if c.execute("SELECT 1 FROM people WHERE id = ? AND deleted = 0", (pid,)).fetchone() is None:
                raise HubError(f"no person {pid}")
            c.execute("UPDATE people SET valid_from = ?, valid_until = ?, version = ? WHERE id = ?",
                      (valid_from, valid_until, self._next_version(), pid))

    def forget(self, pid: str) -> str:
        """Tombstone: embeddings, thumbnail and the person's events (with snapshots) are deleted here."""
        with self._lock, self._tx() as c:
            row = c.execute("SELECT name FROM people WHERE id = ? AND deleted = 0", (pid,)).fetchone()
            if row is None:
                raise HubError(f"no person {pid}")
            c.execute("UPDATE people SET deleted = 1, version = ?, thumb = NULL WHERE id = ?",
                      (self._next_version(), pid))
            c.execute("DELETE FROM embeddings WHERE person_id = ?", (pid,))
            c.execute("DELETE FROM events WHERE identity = ?", (row[0],))
        return row[0]

    def people(self) -> list[dict]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT p.id, p.name, p.version, p.created, p.thumb IS NOT NULL, "
                "(SELECT COUNT(*) FROM embeddings e WHERE e.person_id = p.id), p.valid_from, p.valid_until "
                "FROM people p WHERE deleted = 0 ORDER BY p.name").fetchall()

        def iso(t):
            return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M") if t is not None else ""

        return [{"id": r[0], "name": r[1], "version": r[2], "created": r[3], "thumb": bool(r[4]), "embeddings": r[5],
                 "valid_from": iso(r[6]), "valid_until": iso(r[7])} for r in rows]

    def person_id(self, name: str) -> Optional[str]:
        with self._lock:
            row = self._conn.execute("SELECT id FROM people WHERE name = ? AND deleted = 0", (name,)).fetchone()
        return row[0] if row else None

    def thumb(self, pid: str) -> Optional[bytes]:
        with self._lock:
            row = self._conn.execute("SELECT thumb FROM people WHERE id = ?", (pid,)).fetchone()
        return row[0] if row else None

    def record(self, pid: str) -> dict:
        """The person record body (see :mod:`..records`), a tombstone for a forgotten person."""
        with self._lock:
            p = self._conn.execute("SELECT id, name, version, deleted, valid_from, valid_until FROM people "
                                   "WHERE id = ?", (pid,)).fetchone()
            if p is None:
                raise HubError(f"no person {pid}")
            rows = self._conn.execute("SELECT space, vector FROM embeddings WHERE person_id = ? ORDER BY id",
                                      (pid,)).fetchall()
        emb: dict = {}
        for space, blob in rows:
            emb.setdefault(space, []).append(np.frombuffer(blob, "<f4"))
        return {"type": "person", "site": self.site, "id": p[0], "name": p[1], "version": p[2],
                "deleted": bool(p[3]), "valid_from": p[4], "valid_until": p[5],
                "embeddings": {} if p[3] else {s: encode_vectors(np.stack(v)) for s, v in emb.items()}}

    def all_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT id FROM people ORDER BY version")]

    # -- events ------------------------------------------------------------------------------------------
    def add_events(self, events: list[dict]) -> int:
        """Insert events (dedup by event_id); events of a forgotten person are dropped. Returns new rows."""
        if not events:
            return 0
        now = time.time()
        with self._lock, self._tx() as c:
            gone = {r[0] for r in c.execute("SELECT name FROM people WHERE deleted = 1")} - \
                   {r[0] for r in c.execute("SELECT name FROM people WHERE deleted = 0")}
            rows = [tuple(e.get(k) for k in EVENT_COLUMNS) + (e.get("_snapshot"), e.get("_embedding"), now)
                    for e in events if e.get("identity") not in gone]
            before = c.total_changes
            c.executemany(f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}, snapshot, embedding, received) "
                          f"VALUES ({', '.join('?' * (len(EVENT_COLUMNS) + 3))})", rows)
            return c.total_changes - before

    def prune(self, retention_days: float, now: Optional[float] = None) -> int:
        """Delete events (and their snapshots) received more than ``retention_days`` ago (0 = keep)."""
        if retention_days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - retention_days * 86400.0
        with self._lock, self._tx() as c:
            return c.execute("DELETE FROM events WHERE received < ?", (cutoff,)).rowcount

    def events(self, limit: int = 100, after: float = 0.0, door: Optional[str] = None) -> list[dict]:
        conds, params = ["received > ?"], [after]
        if door:
            conds.append("door = ?")
            params.append(door)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {', '.join(EVENT_COLUMNS)}, snapshot IS NOT NULL, received FROM events WHERE "
                f"{' AND '.join(conds)} ORDER BY received DESC, ts DESC LIMIT ?", params + [int(limit)]).fetchall()
        return [dict(zip(EVENT_COLUMNS + ("has_snapshot", "received"), r)) for r in rows]

    def count_events(self, door: Optional[str] = None) -> int:
        with self._lock:
            if door:
                return int(self._conn.execute("SELECT COUNT(*) FROM events WHERE door = ?", (door,)).fetchone()[0])
            return int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def snapshot(self, event_id: str) -> Optional[bytes]:
        with self._lock:
            row = self._conn.execute("SELECT snapshot FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return row[0] if row else None

    def unknown(self, limit: int = 200) -> list[tuple[str, str, np.ndarray, float, str]]:
        """Recent unreviewed unknown faces with an embedding: (event_id, space, embedding, ts, door)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT event_id, space, embedding, ts, door FROM events WHERE kind = 'access' AND decision = "
                "'unknown' AND reviewed = 0 AND embedding IS NOT NULL ORDER BY ts DESC LIMIT ?", (limit,)).fetchall()
        return [(r[0], r[1], np.frombuffer(r[2], "<f4"), r[3], r[4]) for r in rows]

    def unknown_embeddings(self, event_ids: list[str]) -> dict:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT space, embedding FROM events WHERE embedding IS NOT NULL AND event_id IN "
                f"({', '.join('?' * len(event_ids))})", event_ids).fetchall()
        out: dict = {}
        for space, blob in rows:
            out.setdefault(space, []).append(np.frombuffer(blob, "<f4"))
        return {s: np.stack(v) for s, v in out.items()}

    def mark_reviewed(self, event_ids: list[str], identity: Optional[str] = None) -> None:
        with self._lock, self._tx() as c:
            c.executemany("UPDATE events SET reviewed = 1, identity = COALESCE(?, identity) WHERE event_id = ?",
                          [(identity, e) for e in event_ids])

    # -- doors -----------------------------------------------------------------------------------------------
    def door_state(self, door: str, state: dict) -> Optional[dict]:
        """Store a door's presence; returns the previous state."""
        with self._lock, self._tx() as c:
            row = c.execute("SELECT state FROM doors WHERE door = ?", (door,)).fetchone()
            c.execute("INSERT OR REPLACE INTO doors VALUES (?, ?, ?)", (door, json.dumps(state), time.time()))
        return json.loads(row[0]) if row else None

    def doors(self) -> list[dict]:
        with self._lock:
            rows = self._conn.execute("SELECT door, state, last_seen FROM doors ORDER BY door").fetchall()
        out = []
        for door, state, seen in rows:
            s = json.loads(state)
            s.update(door=door, last_seen=datetime.fromtimestamp(seen, timezone.utc).isoformat(timespec="seconds"))
            out.append(s)
        return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()
