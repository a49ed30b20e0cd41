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
* a record that is stale (version not newer) is skipped silently (retained replays on reconnect);
* a burst of records (:meth:`GallerySync.apply_many`) is one transaction (:meth:`edgeface.Gallery.apply`) for
  the people and the versions applied: 10,000 people cost one fsync per 500, not one or more per person.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Optional, Sequence

from edgeface import _sqlite
from edgeface.gallery import Change, InvalidNameError, check_name

from .records import PersonRecord, RecordError, vectors

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
        self._changes: list = []  # gallery Changes not yet written (see flush)

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

    def flush(self) -> None:
        """Write what was applied since the last flush: the gallery changes and the record versions together,
        in one transaction (:meth:`edgeface.Gallery.apply` with ``also``): a burst of records costs one
        commit, not one or more each, and the door's version never runs ahead of or behind its gallery. If the
        write fails (disk full), nothing of the burst is kept (the records come back with the next reconnect
        or reload) and the error is raised."""
        changes, self._changes = self._changes, []
        rows, self._pending = list(self._pending.values()), {}
        names, self._pending_names = sorted(self._pending_names), set()
        if not rows and not changes:
            return

        def remember(conn) -> None:
            conn.executemany("INSERT OR REPLACE INTO site_records VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.executemany("DELETE FROM site_names WHERE id = ?", [(r[0],) for r in rows if r[3]])
            # every name a person had: their events carry it, a tombstone erases them all
            conn.executemany("INSERT OR IGNORE INTO site_names VALUES (?, ?)", names)

        if changes:
            self.gallery.apply(changes, also=remember)
        else:  # tombstones only: the erasure already committed
            with _sqlite.transaction(self._conn):
                remember(self._conn)

    def apply(self, rec: PersonRecord, now: Optional[float] = None) -> str:
        """Apply one verified record: returns ``stale``, ``erased``, ``enrolled``, ``inactive`` or ``ignored``.

        Raises :class:`RecordError` for embeddings of the wrong size or a bad name (nothing changed then).
        For a burst of records use :meth:`apply_many` (one gallery commit for all).
        """
        result = self.apply_many([rec], now)[0]
        if isinstance(result, RecordError):
            raise result
        return result

    def apply_many(self, recs: Sequence[PersonRecord], now: Optional[float] = None) -> list:
        """Apply verified records in order, the gallery changes of the whole burst in one transaction.

        Returns one result per record: ``stale``, ``erased``, ``enrolled``, ``inactive``, ``ignored``, or the
        :class:`RecordError` that refused it (wrong embedding size, bad name: that record changes nothing, the
        others are applied). A tombstone writes what came before it, then erases (see :meth:`_forget`). The
        gallery holds the burst when this returns.
        """
        now = time.time() if now is None else now
        out: list = []
        try:
            for rec in recs:
                try:
                    out.append(self._apply_one(rec, now))
                except RecordError as exc:  # logged now, before the burst commits
                    log.warning("site: gallery record %s refused: %s", rec.id, exc)
                    out.append(exc)
        finally:
            self.flush()
        return out

    def _apply_one(self, rec: PersonRecord, now: float) -> str:
        held = self.held(rec.id)
        if held is not None and held[1] >= rec.version:
            return "stale"
        if rec.deleted:
            self.flush()
            names = {r[0] for r in self._conn.execute("SELECT name FROM site_names WHERE id = ?", (rec.id,))}
            for name in sorted(names | {rec.name}):
                taken = self._conn.execute("SELECT 1 FROM site_records WHERE name = ? AND deleted = 0 AND id != ?",
                                           (name, rec.id)).fetchone() is not None
                if taken:  # an old name now held by someone else: they stay enrolled
                    log.warning("site: %s now belongs to another person: they stay enrolled, but the events under "
                                "that name are erased (they cannot be told apart)", name)
                r = self._forget(name, gallery=not taken)
                log.info("site: %s erased (%d event(s), %d snapshot(s))", name, r.events, r.snapshots)
            self._remember(rec, False, None)
            return "erased"
        try:
            check_name(rec.name)
        except InvalidNameError as exc:
            raise RecordError(str(exc)) from None
        if self.space not in rec.embeddings:
            if rec.embeddings and frozenset(rec.embeddings) not in self._ignored_spaces:
                self._ignored_spaces.add(frozenset(rec.embeddings))
                log.warning("site: record %s (%s) has embeddings for %s only; this door runs %s: ignored",
                            rec.id, rec.name, ", ".join(sorted(rec.embeddings)), self.space)
            vecs = None
        else:
            vecs = vectors(rec.embeddings[self.space], self.dim)  # RecordError before any change
        if held is not None and not held[2] and held[0] != rec.name:
            self._changes.append(Change(held[0], None))  # a rename: the old name goes
        active = vecs is not None and rec.active(now)
        if active:
            self._changes.append(Change(rec.name, vecs, [f"site:{rec.id}:v{rec.version}"] * len(vecs)))
        else:
            self._changes.append(Change(rec.name, None))
        window = None
        if rec.valid_from is not None or rec.valid_until is not None:
            window = json.dumps({"valid_from": rec.valid_from, "valid_until": rec.valid_until,
                                 "vectors": rec.embeddings.get(self.space, [])})
        self._remember(rec, active, window)
        return "ignored" if vecs is None else ("enrolled" if active else "inactive")

    def _forget(self, name: str, gallery: bool = True):
        """The device's erasure of ``name`` (gallery unless ``gallery`` is false, events, snapshots, outbox
        rows): a ForgetReport."""
        from ..events import EventLog
        from ..privacy import forget_in

        g = self.gallery if gallery else None
        if self.events is None or not isinstance(self.events, (str, Path)):
            return forget_in(name, g, self.events)
        if not Path(self.events).is_file():
            return forget_in(name, g)
        with EventLog(self.events, retention_days=0, max_events=10**9) as ev:
            return forget_in(name, g, ev)

    def sweep(self, now: Optional[float] = None) -> int:
        """Let people in or out as their validity windows open and close; returns how many changed."""
        now = time.time() if now is None else now
        self.flush()
        rows = self._conn.execute("SELECT id, name, active, window FROM site_records "
                                  "WHERE window IS NOT NULL AND deleted = 0").fetchall()
        changes, flips = [], []
        for pid, name, active, window in rows:
            w = json.loads(window)
            should = (w["valid_from"] is None or now >= w["valid_from"]) and \
                     (w["valid_until"] is None or now < w["valid_until"])
            if bool(active) == should or not w["vectors"]:
                continue
            changes.append(Change(name, vectors(w["vectors"], self.dim) if should else None))
            flips.append((int(should), pid))
            log.info("site: %s %s (validity window)", name, "let in" if should else "let out")
        if changes:
            self.gallery.apply(changes)
            with _sqlite.transaction(self._conn):
                self._conn.executemany("UPDATE site_records SET active = ? WHERE id = ?", flips)
        return len(changes)

    def close(self) -> None:
        try:
            self.flush()
            self._conn.close()
        except sqlite3.Error:
            pass
