"""Gallery sync: apply the hub's person records to the door's own gallery, idempotently by version.

The door's SQLite gallery stays the authority for decisions; this module only changes it when a verified
record (see :mod:`.records`) is newer than what the door holds. What was applied is kept in a table
``site_records`` inside the gallery file itself, so deleting the gallery also forgets the sync state and the
next connect brings everything back (the hub's records are retained on the broker).

* a newer record replaces the person's embeddings (and follows a rename);
* a record whose validity window is closed keeps the person out of the gallery until it opens
  (:meth:`GallerySync.sweep` runs every few seconds);
* a tombstone erases the person, their events, snapshots and outbox rows under every name they had: the
  device's own erasure (:func:`edgeface.device.privacy.forget_in`, as ``edgeface-device gallery forget``);
* a record without embeddings for this door's embedder space is ignored with one log line;
* a record that is stale (version not newer) is skipped silently (retained replays on reconnect).
"""
from __future__ import annotations

import json
import logging
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


class GallerySync:
    """Applies person records to ``gallery`` (an open :class:`edgeface.Gallery`, same thread).

    Args:
      gallery: the door's gallery (its embedder id is this door's *space*).
      events: the door's event log for erasures: an open :class:`edgeface.device.events.EventLog` (same
        thread; the site link passes its own), or the event log file's path (opened for each tombstone), or None.
    """

    def __init__(self, gallery, events=None):
        self.gallery, self.events = gallery, events
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
            others = {r[0] for r in self._conn.execute(
                "SELECT name FROM site_records WHERE deleted = 0 AND id != ?", (rec.id,))}
            for name in sorted(names | {rec.name}):
                if name in others:  # an old name now held by someone else: theirs, not this person's
                    log.warning("site: %s not erased for %s: the name now belongs to another person", name, rec.id)
                    continue
                r = self._forget(name)
                log.info("site: %s erased (%d event(s), %d snapshot(s))", name, r.events, r.snapshots)
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

    def _forget(self, name: str):
        """The device's erasure of ``name`` (gallery, events, snapshots, outbox rows): a ForgetReport."""
        from ..events import EventLog
        from ..privacy import forget_in

        if self.events is None or not isinstance(self.events, (str, Path)):
            return forget_in(name, self.gallery, self.events)
        if not Path(self.events).is_file():
            return forget_in(name, self.gallery)
        with EventLog(self.events, retention_days=0, max_events=10**9) as ev:
            return forget_in(name, self.gallery, ev)

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
