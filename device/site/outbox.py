"""Events out: an outbox table written in the same transaction as the event log, published QoS 1.

Every event the door logs also becomes one ``outbox`` row (same SQLite file, same transaction: see
``EventLog.on_insert``), with a stable ``event_id`` (a UUID made at logging time). The
:class:`Publisher` sends rows oldest first with QoS 1 and deletes a row only when the broker's PUBACK
arrives. Broker down for an hour: rows wait on disk. A row sent but not acknowledged when the link drops
is sent again after reconnecting, so the hub may see it twice and keeps the first (dedup by ``event_id``):
nothing lost, nothing duplicated.

The payload is JSON: ``event_id, door, space, ts, time, kind, track, identity, score, decision, detail``
and ``snapshot`` (the face crop as base64 JPEG, read from the snapshot file at send time; null if the
door keeps no snapshots or the file was erased).
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import uuid

from edgeface import _sqlite

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the publisher remembers how far it sent
    event_id  TEXT NOT NULL UNIQUE,
    identity  TEXT,
    payload   TEXT NOT NULL
)
"""


class Outbox:
    """The ``outbox`` table in the event log file ``path``; thread-safe (one connection, one lock)."""

    def __init__(self, path: str, door: str, space: str):
        self.path, self.door, self.space = path, door, space
        self._lock = threading.Lock()
        self._conn = _sqlite.connect(path, check_same_thread=False)
        _sqlite.use_wal(self._conn)
        with _sqlite.transaction(self._conn):
            self._conn.execute(SCHEMA)
        self.new_rows = threading.Event()

    def attach(self, events) -> None:
        """Queue every event ``events`` (an :class:`EventLog`) logs from now on."""
        events.on_insert = tuple(events.on_insert) + (self.hook,)

    def hook(self, conn, event) -> None:
        """Called by the event log inside its transaction."""
        body = event.to_json()
        body.pop("id")
        body.update(event_id=uuid.uuid4().hex, door=self.door, space=self.space, local_id=event.id,
                    score=None if event.score is None else float(event.score))
        conn.execute("INSERT INTO outbox (event_id, identity, payload) VALUES (?, ?, ?)",
                     (body["event_id"], event.identity, json.dumps(body, default=str)))
        self.new_rows.set()

    def pending(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """(seq, payload bytes) of rows after ``after_seq``, oldest first, snapshots inlined."""
        with self._lock:
            rows = self._conn.execute("SELECT seq, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                                      (after_seq, limit)).fetchall()
        out = []
        for seq, payload in rows:
            body = json.loads(payload)
            snap = body.pop("snapshot", None)
            body["snapshot"] = None
            if snap:
                try:
                    with open(snap, "rb") as fh:
                        body["snapshot"] = base64.b64encode(fh.read()).decode()
                except OSError:
                    pass
            out.append((seq, json.dumps(body, separators=(",", ":")).encode()))
        return out

    def delete(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock, _sqlite.transaction(self._conn):
            self._conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class Publisher:
    """Sends the outbox over a connected paho client; call :meth:`on_publish` from the client's callback."""

    def __init__(self, outbox: Outbox, client, state, topic: str, max_inflight: int = 100):
        self.outbox, self.client, self.state, self.topic = outbox, client, state, topic
        self.max_inflight = max_inflight
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}     # mid -> seq
        self._early: dict[int, tuple] = {}       # PUBACKs that beat publish() returning
        self._acked: list[int] = []
        self._sent_upto = 0
        self._session = 0
        self._refusals: set = set()
        self._stop = threading.Event()
        self.sent = self.acked = 0
        self._thread = threading.Thread(target=self._run, name="site-outbox", daemon=True)

    def start(self) -> "Publisher":
        self._thread.start()
        return self

    def on_publish(self, mid: int, ok: bool, reason: str) -> None:
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                self._early[mid] = (ok, reason)
                return
        self._ack(seq, ok, reason)

    def _ack(self, seq: int, ok: bool, reason: str) -> None:
        if ok:
            with self._lock:
                self._acked.append(seq)
        elif reason not in self._refusals:
            self._refusals.add(reason)
            log.error("site: the broker refused an event (%s); it stays in the outbox", reason)
        self.outbox.new_rows.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                acked, self._acked = self._acked, []
            if acked:
                self.outbox.delete(acked)
                self.acked += len(acked)
            if not self.state.connected.is_set():
                with self._lock:
                    self._inflight.clear()
                    self._early.clear()
                    self._sent_upto = 0
                self._stop.wait(0.2)
                continue
            if self.state.connects != self._session:      # a new connection: resend what is unacknowledged
                self._session = self.state.connects
                with self._lock:
                    self._inflight.clear()
                    self._early.clear()
                    self._sent_upto = 0
            with self._lock:
                room = self.max_inflight - len(self._inflight)
            rows = self.outbox.pending(self._sent_upto, room) if room > 0 else []
            for seq, payload in rows:
                info = self.client.publish(self.topic, payload, qos=1)
                if info.rc != 0:  # not connected any more
                    break
                self._sent_upto = seq
                self.sent += 1
                with self._lock:
                    early = self._early.pop(info.mid, None)
                    if early is None:
                        self._inflight[info.mid] = seq
                if early is not None:
                    self._ack(seq, *early)
            if not rows:
                self.outbox.new_rows.wait(0.2)
                self.outbox.new_rows.clear()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the outbox is empty (True) or ``timeout``."""
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.outbox.count() == 0:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()
        self.outbox.new_rows.set()
        self._thread.join(5)
        with self._lock:
            acked, self._acked = self._acked, []
        self.outbox.delete(acked)
