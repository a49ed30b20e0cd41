"""Gallery sync: apply the hub's person records to the door's own gallery, idempotently by version.

The door's SQLite gallery stays the authority for decisions; this module only changes it when a verified
record (see :mod:`.records`) is newer than what the door holds. What was applied is kept in a table
``site_records`` inside the gallery file itself, so deleting the gallery also forgets the sync state and the
next connect brings everything back (the hub's records are retained on the broker).

* a newer record replaces the person's embeddings (and follows a rename);
* a record whose validity window is closed keeps the person out of the gallery until it opens
  (:meth:`GallerySync.sweep` runs every few seconds);
* a tombstone erases the person, their events and snapshots (:func:`erase_person`);
* a record without embeddings for this door's embedder space is ignored with one log line;
* a record that is stale (version not newer) is skipped silently (retained replays on reconnect).
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Optional

from edgeface import _sqlite

from .records import PersonRecord, vectors

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS site_records (
    id        TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    version   INTEGER NOT NULL,
    deleted   INTEGER NOT NULL,
    active    INTEGER NOT NULL,
    window    TEXT
);
CREATE TABLE IF NOT EXISTS site_names (id TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (id, name))
"""


def erase_person(gallery, events_path: Optional[str], name: str) -> dict:
    """Erase ``name`` on this door: gallery embeddings, their events (and outbox rows) and snapshot files.

    The same erasure as ``gallery forget``; kept as one small function so the device-side forget can
    replace it. Returns counts: ``{"gallery": 0|1, "events": n, "snapshots": n}``.
    """
    from edgeface.gallery import UnknownPersonError

    out = {"gallery": 0, "events": 0, "snapshots": 0}
    try:
        gallery.remove(name)
        out["gallery"] = 1
    except UnknownPersonError:
        pass
    if not events_path or not Path(events_path).is_file():
        return out
    conn = _sqlite.connect(events_path)
    try:
        tables = _sqlite.table_names(conn)
        with _sqlite.transaction(conn):
            snaps = [r[0] for r in conn.execute(
                "SELECT snapshot FROM events WHERE identity = ? AND snapshot IS NOT NULL", (name,))]
            out["events"] = conn.execute("DELETE FROM events WHERE identity = ?", (name,)).rowcount
            if "outbox" in tables:
                conn.execute("DELETE FROM outbox WHERE identity = ?", (name,))
    finally:
        conn.close()
    for s in snaps:
        try:
            os.unlink(s)
            out["snapshots"] += 1
        except OSError:
            pass
    return out


class GallerySync:
    """Applies person records to ``gallery`` (an open :class:`edgeface.Gallery`, same thread).

    Args:
      gallery: the door's gallery (its embedder id is this door's *space*).
      events_path: the door's event log file (for erasure), or None.
    """

    def __init__(self, gallery, events_path: Optional[str] = None):
        self.gallery, self.events_path = gallery, events_path
        self.space, self.dim = gallery.embedder_id, gallery.dim
        self._conn = _sqlite.connect(gallery.path)
        with _sqlite.transaction(self._conn):
            _sqlite.run_script(self._conn, SCHEMA)
        self._ignored_spaces: set = set()
        self._pending: dict = {}  # id -> site_records row not yet written (see flush)
        self._pending_names: set = set()  # (id, name) not yet written

    @property
    def version(self) -> int:
        """The highest record version applied: compare with the hub's to see if the door is up to date."""
        self.flush()
        return int(self._conn.execute("SELECT COALESCE(MAX(version), 0) FROM site_records").fetchone()[0])

    def held(self, pid: str) -> Optional[tuple]:
        """(name, version, deleted, active) last applied for ``pid``, or None."""
        if pid in self._pending:
            row = self._pending[pid]
            return row[1], row[2], row[3], row[4]
        return self._conn.execute("SELECT name, version, deleted, active FROM site_records WHERE id = ?",
                                  (pid,)).fetchone()

    def _remember(self, rec: PersonRecord, active: bool, window: Optional[str]) -> None:
        self._pending[rec.id] = (rec.id, rec.name, rec.version, int(rec.deleted), int(active), window)
        if not rec.deleted:
            self._pending_names.add((rec.id, rec.name))
        if len(self._pending) >= 500:
            self.flush()

    def flush(self) -> None:
        """Write what was applied since the last flush, in one transaction (a burst of records costs one
        commit here, not one each). Safe to lose in a crash: the gallery already holds the people, and the
        retained records are applied again, idempotently, on the next start."""
        if not self._pending:
            return
        rows, self._pending = list(self._pending.values()), {}
        names, self._pending_names = sorted(self._pending_names), set()
        with _sqlite.transaction(self._conn):
            self._conn.executemany("INSERT OR REPLACE INTO site_records VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._conn.executemany("DELETE FROM site_names WHERE id = ?", [(r[0],) for r in rows if r[3]])
            # every name a person had: their events carry it, a tombstone erases them all
            self._conn.executemany("INSERT OR IGNORE INTO site_names VALUES (?, ?)", names)

    def apply(self, rec: PersonRecord, now: Optional[float] = None) -> str:
        """Apply one verified record: returns ``stale``, ``erased``, ``enrolled``, ``inactive`` or ``ignored``.

        Raises :class:`RecordError` for embeddings of the wrong size (nothing changed then).
        """
        now = time.time() if now is None else now
        held = self.held(rec.id)
        if held is not None and held[1] >= rec.version:
            return "stale"
        if rec.deleted:
            self.flush()
            names = {r[0] for r in self._conn.execute("SELECT name FROM site_names WHERE id = ?", (rec.id,))}
            for name in sorted(names | {rec.name}):
                counts = erase_person(self.gallery, self.events_path, name)
                log.info("site: %s erased (%d event(s), %d snapshot(s))", name, counts["events"], counts["snapshots"])
            self._remember(rec, False, None)
            return "erased"
        if self.space not in rec.embeddings:
            if rec.embeddings and frozenset(rec.embeddings) not in self._ignored_spaces:
                self._ignored_spaces.add(frozenset(rec.embeddings))
                log.warning("site: record %s (%s) has embeddings for %s only; this door runs %s: ignored",
                            rec.id, rec.name, ", ".join(sorted(rec.embeddings)), self.space)
            vecs = None
        else:
            vecs = vectors(rec.embeddings[self.space], self.dim)  # RecordError before any change
        if held is not None and held[0] != rec.name and held[0] in self.gallery:
            self.gallery.remove(held[0])
        if rec.name in self.gallery:
            self.gallery.remove(rec.name)
        active = vecs is not None and rec.active(now)
        if active:
            self.gallery.enroll(rec.name, vecs, [f"site:{rec.id}:v{rec.version}"] * len(vecs))
        window = None
        if rec.valid_from is not None or rec.valid_until is not None:
            window = json.dumps({"valid_from": rec.valid_from, "valid_until": rec.valid_until,
                                 "vectors": rec.embeddings.get(self.space, [])})
        self._remember(rec, active, window)
        return "ignored" if vecs is None else ("enrolled" if active else "inactive")

    def sweep(self, now: Optional[float] = None) -> int:
        """Let people in or out as their validity windows open and close; returns how many changed."""
        now = time.time() if now is None else now
        changed = 0
        self.flush()
        rows = self._conn.execute("SELECT id, name, version, active, window FROM site_records "
                                  "WHERE window IS NOT NULL AND deleted = 0").fetchall()
        for pid, name, version, active, window in rows:
            w = json.loads(window)
            should = (w["valid_from"] is None or now >= w["valid_from"]) and \
                     (w["valid_until"] is None or now < w["valid_until"])
            if bool(active) == should or not w["vectors"]:
                continue
            if name in self.gallery:
                self.gallery.remove(name)
            if should:
                self.gallery.enroll(name, vectors(w["vectors"], self.dim))
            with _sqlite.transaction(self._conn):
                self._conn.execute("UPDATE site_records SET active = ? WHERE id = ?", (int(should), pid))
            log.info("site: %s %s (validity window)", name, "let in" if should else "let out")
            changed += 1
        return changed

    def close(self) -> None:
        try:
            self.flush()
            self._conn.close()
        except sqlite3.Error:
            pass
