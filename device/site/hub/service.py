"""The hub's work: enroll from photos for every embedder space, publish signed retained person records,
consume door events (dedup by id) and presence, publish Home Assistant discovery, send signed commands.

MQTT: a persistent session (the broker queues door events while the hub is away) and, on every connect,
all person records are published again (retained), so a broker that lost its store is refilled.
"""
from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import NamedTuple, Optional

import cv2
import numpy as np

from .. import door_topic, gallery_topic, topic_prefix
from ..commands import command_body
from ..mqtt import BrokerSettings, make_client, start, stop
from ..presence import ha_discovery
from ..records import load_signing_key, sign
from .store import HubError, HubStore

log = logging.getLogger(__name__)


class EnrollReport(NamedTuple):
    person_id: Optional[str]
    accepted: list
    rejected: list          #: (file name, reason)


def load_config(path: str | Path) -> dict:
    cfg = json.loads(Path(path).read_text())
    for key in ("site", "host", "port", "username", "password_file", "signing_key", "database"):
        if key not in cfg:
            raise HubError(f"{path}: missing {key!r}")
    return cfg


class Hub:
    """Args: cfg (hub.json as a dict), recognizers (FaceRecognizer per embedder space the doors run)."""

    def __init__(self, cfg: dict, recognizers: list):
        self.cfg, self.site = cfg, cfg["site"]
        self.recognizers = {r.embedder_id: r for r in recognizers}
        self.store = HubStore(cfg["database"], self.site)
        self.key = load_signing_key(cfg["signing_key"])
        self.settings = BrokerSettings(cfg["host"], int(cfg["port"]), cfg["username"],
                                       Path(cfg["password_file"]).read_text().strip(), cfg.get("ca_file", ""),
                                       cfg.get("client_id", f"edgeface-hub-{self.site}"))
        self._inbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._embed_lock = threading.Lock()
        self.client, self.state = make_client(self.settings, "hub", persistent_session=True,
                                              on_connect=self._on_connect, on_message=self._on_message,
                                              max_inflight=1000)
        self._writer = threading.Thread(target=self._write_events, name="hub-events", daemon=True)
        self.received = 0

    def start(self) -> "Hub":
        self._writer.start()
        start(self.client)
        return self

    def close(self) -> None:
        self._stop.set()
        self._writer.join(5)
        stop(self.client)
        self.store.close()

    # -- MQTT ----------------------------------------------------------------------------------------------
    def _on_connect(self, client) -> None:
        client.subscribe([(door_topic(self.site, "+", "event"), 1), (door_topic(self.site, "+", "state"), 1),
                          (f"{topic_prefix(self.site)}/hub/unlock/+", 1)])
        threading.Thread(target=self.publish_all, name="hub-republish", daemon=True).start()

    def publish_all(self) -> int:
        ids = self.store.all_ids()
        for pid in ids:
            self.publish_person(pid)
        return len(ids)

    def publish_person(self, pid: str):
        body = self.store.record(pid)
        self._last = self.client.publish(gallery_topic(self.site, pid), sign(body, self.key), qos=1, retain=True)
        return self._last

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the last published record is acknowledged by the broker."""
        last = getattr(self, "_last", None)
        if last is not None and self.state.connected.is_set():
            last.wait_for_publish(timeout)

    def _on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        try:
            if parts[-1] == "event":
                self._inbox.put((parts[-2], payload))
            elif parts[-1] == "state" and payload:
                self._door_state(parts[-2], json.loads(payload))
            elif parts[-2] == "unlock":  # Home Assistant's button
                self.command(parts[-1], "unlock")
        except (ValueError, HubError) as exc:
            log.warning("hub: message on %s ignored: %s", topic, exc)

    def _door_state(self, door: str, state: dict) -> None:
        if not isinstance(state, dict):
            raise ValueError("state is not a JSON object")
        before = self.store.door_state(door, state)
        if state.get("state") == "online" and (before is None or before.get("remote_unlock") != state.get(
                "remote_unlock") or before.get("state") != "online"):
            for t, p in ha_discovery(self.site, door, bool(state.get("remote_unlock"))):
                self.client.publish(t, p, qos=1, retain=True)

    def _write_events(self) -> None:
        retention = float(self.cfg.get("event_retention_days", 90))
        last_prune = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                n = self.store.prune(retention)
                if n:
                    log.info("hub: %d event(s) older than %g days deleted", n, retention)
            try:
                batch = [self._inbox.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < 1000:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            events = []
            for door, payload in batch:
                try:
                    e = json.loads(payload)
                    if not isinstance(e, dict) or e.get("door") != door or not isinstance(e.get("event_id"), str):
                        raise ValueError("not an event of this door")
                except (ValueError, TypeError) as exc:
                    log.warning("hub: event from %s ignored: %s", door, exc)
                    continue
                try:
                    e = self._prepare(e)
                except Exception as exc:  # noqa: BLE001 - a bad snapshot must not lose the event
                    log.warning("hub: snapshot of event %s from %s not usable: %s", e.get("event_id"), door, exc)
                    e.pop("_embedding", None)
                events.append(e)
            try:
                self.received += self.store.add_events(events)
            except Exception as exc:  # noqa: BLE001 - keep consuming
                log.error("hub: events not stored: %s", exc)

    def _prepare(self, e: dict) -> dict:
        snap = e.get("snapshot")
        if snap:
            e["_snapshot"] = base64.b64decode(snap)
            rec = self.recognizers.get(e.get("space"))
            if rec is not None and e.get("decision") == "unknown":
                img = cv2.imdecode(np.frombuffer(e["_snapshot"], np.uint8), cv2.IMREAD_COLOR)
                if img is not None:
                    with self._embed_lock:
                        size = rec.embedder.size  # the door's snapshot is this embedder's aligned crop
                        crop = img[:, :, ::-1] if img.shape[:2] == (size, size) else \
                            cv2.resize(img[:, :, ::-1], (size, size))
                        e["_embedding"] = rec.embedder.embed_crop(np.ascontiguousarray(crop)).astype("<f4").tobytes()
        return e

    # -- actions (web page, CLI) -----------------------------------------------------------------------------
    def enroll_images(self, name: str, images: list[tuple[str, bytes]], pid: Optional[str] = None) -> EnrollReport:
        """Enroll ``name`` from photo files (name, bytes) in every space; publishes the record."""
        from ...enroll import embed_photo

        per_space: dict = {s: [] for s in self.recognizers}
        accepted, rejected, thumb = [], [], None
        for fname, data in images:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
            if img is None:
                rejected.append((fname, "not an image"))
                continue
            rgb = np.ascontiguousarray(img[:, :, ::-1])
            got, reason = {}, None
            with self._embed_lock:
                for space, rec in self.recognizers.items():
                    emb, reason = embed_photo(rec, rgb)
                    if emb is None:
                        break
                    got[space] = emb
                    if thumb is None:
                        face = rec.detect(rgb)[0]
                        crop = rec.embedder.crop(rgb, face.box, face.keypoints)
                        ok, jpg = cv2.imencode(".jpg", np.ascontiguousarray(crop[:, :, ::-1]))
                        thumb = jpg.tobytes() if ok else None
            if len(got) != len(self.recognizers):
                rejected.append((fname, reason))
                continue
            for s, v in got.items():
                per_space[s].append(v)
            accepted.append(fname)
        if not accepted:
            return EnrollReport(None, accepted, rejected)
        pid = self.store.enroll(name, {s: np.stack(v) for s, v in per_space.items()}, thumb, pid=pid)
        self.publish_person(pid)
        log.info("hub: enrolled %s (%s) from %d photo(s), %d rejected", name, pid, len(accepted), len(rejected))
        return EnrollReport(pid, accepted, rejected)

    def assign_unknown(self, event_ids: list[str], name: str = "", pid: Optional[str] = None) -> str:
        """Enroll reviewed unknown faces as ``pid`` (existing) or a new person ``name``."""
        emb = self.store.unknown_embeddings(event_ids)
        if not emb:
            raise HubError("none of these faces can be enrolled (no embedding)")
        thumb = self.store.snapshot(event_ids[0])
        if pid:
            name = next((p["name"] for p in self.store.people() if p["id"] == pid), None)
            if name is None:
                raise HubError(f"no person {pid}")
        pid = self.store.enroll(name, emb, thumb, pid=pid or None)
        self.store.mark_reviewed(event_ids, name)
        self.publish_person(pid)
        return pid

    def rename(self, pid: str, new: str) -> None:
        self.store.rename(pid, new)
        self.publish_person(pid)

    def set_window(self, pid: str, valid_from: Optional[float], valid_until: Optional[float]) -> None:
        """A validity window: every door lets the person in only inside it (checked by the door itself)."""
        self.store.set_window(pid, valid_from, valid_until)
        self.publish_person(pid)

    def forget(self, pid: str) -> str:
        thresholds = {s: float(r.min_cosine_similarity) for s, r in self.recognizers.items()
                      if getattr(r, "min_cosine_similarity", None) is not None}
        faces = self.store.unknown_like(pid, thresholds)  # their unrecognised snapshots go too
        name = self.store.forget(pid)
        self.store.delete_events(faces)
        self.publish_person(pid)  # the tombstone: every door erases the person, their events and snapshots
        log.info("hub: %s (%s) forgotten", name, pid)
        return name

    def command(self, door: str, action: str) -> None:
        body = command_body(self.site, door, action)
        self.client.publish(door_topic(self.site, door, "cmd"), sign(body, self.key), qos=1)

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.state.connected.wait(timeout)
