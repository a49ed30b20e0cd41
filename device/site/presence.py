"""Presence: the door's retained state (``online`` / ``offline`` as its last will) and Home Assistant
MQTT discovery for it.

State payload (JSON, retained on ``<prefix>/door/<door>/state``)::

    {"state": "online", "door": "front", "site": "office", "ts": 1767000000.0, "gallery_version": 42,
     "people": 17, "models": {"embedder": "facenet-...", "detector": "...", "precision": "int8"},
     "threshold": 0.62, "remote_unlock": false, "outbox": 0}

The last will (sent by the broker when the door vanishes) is ``{"state": "offline", "door": ...}``.
"""
from __future__ import annotations

import json
import time

from . import door_topic


def offline_payload(site: str, door: str) -> bytes:
    return json.dumps({"state": "offline", "door": door, "site": site}).encode()


def online_payload(site: str, door: str, gallery_version: int, people: int, models: dict, threshold: float,
                   remote_unlock: bool, outbox: int) -> bytes:
    return json.dumps({"state": "online", "door": door, "site": site, "ts": round(time.time(), 3),
                       "gallery_version": int(gallery_version), "people": int(people), "models": models,
                       "threshold": round(float(threshold), 4), "remote_unlock": bool(remote_unlock),
                       "outbox": int(outbox)}).encode()


def ha_discovery(site: str, door: str, remote_unlock: bool, prefix: str = "homeassistant") -> list[tuple[str, bytes]]:
    """Home Assistant MQTT discovery messages (topic, retained payload) for one door.

    A sensor "last recognised person" (from the door's events), a device trigger per decision (grant,
    deny/unknown, spoof), a binary sensor for connectivity (from the state topic) and, only when the door
    allows remote unlock, a button that asks the hub to unlock it (the hub signs the command).
    Published by the hub (it alone may write ``homeassistant/#``); an empty payload removes an entity.
    """
    uid = f"edgeface_{site}_{door}"
    device = {"identifiers": [uid], "name": f"edgeface door {door}", "manufacturer": "edgeface",
              "model": "door access controller"}
    events = door_topic(site, door, "event")
    state = door_topic(site, door, "state")
    out = [
        (f"{prefix}/sensor/{uid}/last_person/config", {
            "name": "last recognised person", "unique_id": f"{uid}_last_person", "device": device,
            "state_topic": events, "icon": "mdi:account-check",
            "value_template": "{{ value_json.identity if value_json.decision == 'grant' else this.state }}",
            "availability_topic": state, "availability_template": "{{ value_json.state }}",
            "payload_available": "online", "payload_not_available": "offline"}),
        (f"{prefix}/binary_sensor/{uid}/online/config", {
            "name": "online", "unique_id": f"{uid}_online", "device": device, "device_class": "connectivity",
            "state_topic": state, "value_template": "{{ value_json.state }}",
            "payload_on": "online", "payload_off": "offline"}),
    ]
    for decision in ("grant", "unknown", "spoof"):
        out.append((f"{prefix}/device_automation/{uid}/{decision}/config", {
            "automation_type": "trigger", "topic": events, "type": "action", "subtype": decision,
            "payload": decision, "value_template": "{{ value_json.decision }}", "device": device}))
    button = f"{prefix}/button/{uid}/unlock/config"
    if remote_unlock:
        out.append((button, {
            "name": "unlock", "unique_id": f"{uid}_unlock", "device": device, "icon": "mdi:lock-open",
            "command_topic": f"edgeface/{site}/hub/unlock/{door}", "payload_press": "unlock",
            "availability_topic": state, "availability_template": "{{ value_json.state }}",
            "payload_available": "online", "payload_not_available": "offline"}))
    msgs = [(t, json.dumps(p).encode()) for t, p in out]
    if not remote_unlock:
        msgs.append((button, b""))  # removes a button left from an earlier configuration
    return msgs
