"""The door's site link: one paho client, one worker thread (gallery sync, commands, presence) and the
outbox publisher. Started by :class:`edgeface.device.app.DoorApp` when ``[site] enabled = true``.

Threads: paho's network thread only queues incoming messages (after a size check); the worker thread owns
its own gallery and event-log connections (SQLite objects stay on their thread) and applies records in
bursts (up to :data:`BURST`, one gallery transaction each); the publisher thread sends the outbox. The
recognition loop never waits for any of them, and nothing here can open the door except a verified, enabled,
fresh unlock command.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from . import SiteError, door_topic, gallery_topic
from .commands import CommandCheck
from .mqtt import BrokerSettings, make_client, start, stop
from .outbox import Outbox, Publisher
from .presence import offline_payload, online_payload
from .records import RecordError, load_public_key, open_signed, person_record

log = logging.getLogger(__name__)

#: messages the sync worker takes from its inbox at once: their person records are one gallery transaction
BURST = 500


def read_password(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise SiteError(f"[site] password_file {path}: {exc.strerror or exc}") from exc


def broker_settings(site_cfg) -> BrokerSettings:
    s = site_cfg
    if not s.door_id:
        raise SiteError("[site] door_id is required (also the MQTT user name)")
    return BrokerSettings(s.host, s.port, s.door_id, read_password(s.password_file) if s.password_file else "",
                          s.ca_file, f"door-{s.door_id}", s.keepalive_seconds)


def ensure_gallery(path: str, rec) -> None:
    """A door on a site may start with no gallery: create an empty one for its embedder."""
    if not Path(path).is_file():
        from edgeface.gallery import Gallery

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Gallery(path, rec.embedder_id, rec.embedder.dim).close()
        log.info("site: created an empty gallery %s; people come from the hub", path)


class SiteLink:
    """Args: site_cfg (``[site]``), gallery_path, events (the loop's :class:`EventLog`: the outbox is attached
    to it), door (a DoorController or None), models (dict for presence), threshold, space (embedder id)."""

    def __init__(self, site_cfg, gallery_path: str, events, door, models: dict, threshold: float, space: str):
        self.cfg, self.gallery_path, self.door = site_cfg, gallery_path, door
        self.models, self.threshold, self.space = models, threshold, space
        self.events_path = events.path
        self.public_key = load_public_key(site_cfg.hub_public_key) if site_cfg.hub_public_key else None
        if self.public_key is None:
            raise SiteError("[site] hub_public_key is required: the door accepts only records signed by the hub")
        self.settings = broker_settings(site_cfg)
        self.site, self.door_id = site_cfg.site, site_cfg.door_id
        self.state_topic = door_topic(self.site, self.door_id, "state")
        self.outbox = Outbox(self.events_path, self.door_id, space)
        self.outbox.attach(events)
        self.check_command = CommandCheck(self.site, self.door_id)
        self.inbox: queue.Queue = queue.Queue(maxsize=200_000)
        self.client, self.state = make_client(
            self.settings, f"door {self.door_id}", will=(self.state_topic, offline_payload(self.site, self.door_id)),
            on_connect=self._on_connect, on_message=self._on_message, on_publish=self._on_publish)
        self.publisher = Publisher(self.outbox, self.client, self.state, door_topic(self.site, self.door_id, "event"))
        self.applied = 0
        self.version = 0
        self.people = 0
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._worker = threading.Thread(target=self._work, name="site-sync", daemon=True)
        self._logged: set = set()

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> "SiteLink":
        self._worker.start()
        self._ready.wait(10)
        self.publisher.start()
        start(self.client)
        return self

    def close(self) -> None:
        self._stop.set()
        self.publisher.stop()
        self._worker.join(10)
        stop(self.client, (self.state_topic, offline_payload(self.site, self.door_id)))
        self.outbox.close()

    # -- paho thread: keep it short ---------------------------------------------------------------------
    def _on_connect(self, client) -> None:
        client.subscribe(gallery_topic(self.site), qos=1)
        client.subscribe(door_topic(self.site, self.door_id, "cmd"), qos=1)
        self._dirty.set()

    def _on_publish(self, mid, ok, reason) -> None:
        self.publisher.on_publish(mid, ok, reason)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if len(payload) > self.cfg.max_payload_bytes:
            log.warning("site: message of %d bytes on %s ignored (over [site] max_payload_bytes = %d)",
                        len(payload), topic, self.cfg.max_payload_bytes)
            return
        try:
            self.inbox.put_nowait((topic, payload))
        except queue.Full:
            log.warning("site: inbox full, message on %s dropped (retained records come back on reconnect)", topic)

    # -- worker thread -----------------------------------------------------------------------------------
    def _work(self) -> None:
        from edgeface.gallery import Gallery

        from ..events import EventLog
        from .sync import GallerySync

        gallery = Gallery.open(self.gallery_path)
        events = EventLog(self.events_path, retention_days=0, max_events=10**9)  # no pruning here
        sync = GallerySync(gallery, events)  # a tombstone erases through this same event log
        self.outbox.attach(events)
        self.version, self.people = sync.version, len(gallery)
        self._ready.set()
        last_sweep = last_state = 0.0
        try:
            while not self._stop.is_set():
                try:
                    burst = [self.inbox.get(timeout=0.2)]
                except queue.Empty:
                    burst = []
                while burst and len(burst) < BURST:
                    try:
                        burst.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                if burst:
                    self._handle(burst, sync, events)
                now = time.monotonic()
                if now - last_sweep > 5.0:
                    last_sweep = now
                    if sync.sweep():
                        self._dirty.set()
                if self._dirty.is_set() and (self.inbox.empty() or now - last_state > 1.0) and \
                        self.state.connected.is_set():
                    self._dirty.clear()
                    last_state = now
                    self.version, self.people = sync.version, len(gallery)
                    self.client.publish(self.state_topic, online_payload(
                        self.site, self.door_id, self.version, self.people, self.models, self.threshold,
                        self.cfg.remote_unlock, self.outbox.count()), qos=1, retain=True)
        finally:
            sync.close()
            gallery.close()
            events.close()

    def _once(self, key: str, msg: str, *args) -> None:
        log.warning(msg, *args) if key not in self._logged else log.debug(msg, *args)
        self._logged.add(key)

    def _handle(self, messages: list, sync, events) -> None:
        """Verify a burst of messages one by one, then apply its person records in one gallery transaction
        (:meth:`GallerySync.apply_many`); a command is run in its place in the order (records before it are
        applied first)."""
        records: list = []  # PersonRecords of this burst, in order
        for topic, payload in messages:
            kind = "command" if topic.endswith("/cmd") else "gallery record"
            try:
                body = open_signed(payload, self.public_key, self.cfg.max_payload_bytes)
                if kind == "command":
                    action = self.check_command(body)
                    self._apply(records, sync)
                    records = []
                    self._command(action, events)
                    continue
                rec = person_record(body)
                if rec.site != self.site:
                    raise RecordError(f"record of site {rec.site!r}, this door is on {self.site!r}")
                if topic.rsplit("/", 1)[-1] != rec.id:
                    raise RecordError(f"record {rec.id} published on {topic}")
                records.append(rec)
            except RecordError as exc:
                log.warning("site: %s on %s refused: %s", kind, topic, exc)
            except Exception as exc:  # noqa: BLE001 - a bad message must never stop the link
                log.error("site: %s on %s failed: %s: %s", kind, topic, type(exc).__name__, exc)
        self._apply(records, sync)

    def _apply(self, records: list, sync) -> None:
        if not records:
            return
        try:
            results = sync.apply_many(records)
        except Exception as exc:  # noqa: BLE001 - a failing gallery (disk full) must never stop the link
            log.error("site: %d gallery record(s) not applied: %s: %s (they come back on the next reconnect)",
                      len(records), type(exc).__name__, exc)
            return
        for rec, result in zip(records, results):
            if isinstance(result, RecordError):
                continue  # logged by the sync (with the record id) before the burst was committed
            if result != "stale":
                self.applied += 1
                self._dirty.set()
                log.debug("site: %s %s v%d: %s", rec.name, rec.id, rec.version, result)

    def _command(self, action: str, events) -> None:
        if action == "reload":
            log.info("site: reload requested: fetching every person record again")
            self.client.unsubscribe(gallery_topic(self.site))
            self.client.subscribe(gallery_topic(self.site), qos=1)
            self._dirty.set()
            return
        if not self.cfg.remote_unlock:
            log.warning("site: remote unlock refused: [site] remote_unlock is false")
            events.log("remote_unlock", decision="deny", detail="refused: [site] remote_unlock = false")
            return
        granted = self.door.grant(None, "remote unlock") if self.door is not None else False
        events.log("remote_unlock", identity=None, decision="grant" if granted else "cooldown",
                   detail="unlocked by the hub" if granted else "not unlocked (cooldown or no relay)")


def doctor_checks(site_cfg, gallery_path: str, timeout: float = 5.0) -> list[tuple[str, bool, str]]:
    """``edgeface-device doctor``'s site link report: broker reachable, TLS, auth, gallery version vs hub.

    Connects once with the door's own credentials, reads the retained person records (verifying each
    signature) and compares the highest version with the one this door has applied.
    """
    out = []
    try:
        settings = broker_settings(site_cfg)._replace(client_id=f"doctor-{site_cfg.door_id}-{int(time.time())}")
        key = load_public_key(site_cfg.hub_public_key)
    except Exception as exc:  # noqa: BLE001
        return [("site", False, str(exc))]
    versions, bad, last = [], [], [time.monotonic()]

    def on_message(topic, payload):
        last[0] = time.monotonic()
        if not payload:
            return
        try:
            versions.append(int(open_signed(payload, key, site_cfg.max_payload_bytes)["version"]))
        except (RecordError, KeyError, ValueError, TypeError):
            bad.append(topic)

    client, state = make_client(settings, f"doctor {site_cfg.door_id}", on_message=on_message,
                                on_connect=lambda c: c.subscribe(gallery_topic(site_cfg.site), qos=1))
    try:
        start(client)
        connected = state.connected.wait(timeout)
        where = f"{site_cfg.host}:{site_cfg.port}"
        tls = f"TLS verified against {site_cfg.ca_file}" if site_cfg.ca_file else "NO TLS (plain MQTT)"
        if not connected:
            out.append(("broker", False, f"{where}: {state.last_error or 'no answer'} ({tls})"))
            return out
        out.append(("broker", True, f"{where} reachable; {tls}; logged in as {settings.username}"))
        out.append(("tls", bool(site_cfg.ca_file), tls))
        while time.monotonic() - last[0] < 1.5 and time.monotonic() - last[0] < timeout:
            time.sleep(0.1)
    finally:
        stop(client)
    hub_version = max(versions, default=0)
    door_version = 0
    try:
        from edgeface import _sqlite

        conn = _sqlite.connect(gallery_path)
        try:
            if "site_records" in _sqlite.table_names(conn):
                door_version = int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM site_records").fetchone()[0])
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001
        out.append(("sync", False, f"cannot read {gallery_path}: {exc}"))
        return out
    detail = f"door gallery version {door_version}, hub {hub_version} ({len(versions)} retained record(s))"
    if bad:
        detail += f"; {len(bad)} record(s) NOT signed by this hub's key: {', '.join(bad[:3])}"
    out.append(("sync", door_version >= hub_version and not bad,
                detail + ("" if door_version >= hub_version else " - behind: start the door to catch up")))
    return out
