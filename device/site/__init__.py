"""A site of many doors over MQTT (Mosquitto): the door side (optional; ``pip install 'edgeface[site]'``).

The door stays the authority: its local SQLite gallery and its k-of-n decision decide, online or offline.
The network only brings people in (signed, versioned, retained person records from the hub) and takes
events out (an outbox written in the same transaction as the event log, published QoS 1, deleted on PUBACK).

Modules: :mod:`.records` (signed person records and commands), :mod:`.mqtt` (one paho-mqtt 2.x client
recipe: MQTT v5, TLS, user/password, last will), :mod:`.sync` (apply records, erase a person),
:mod:`.outbox` (events out), :mod:`.presence` (retained online/offline state, Home Assistant discovery),
:mod:`.commands` (remote unlock, reload), :mod:`.link` (the door's site link that ties them together),
:mod:`.broker` (generate a Mosquitto configuration: password file, ACL, TLS) and :mod:`.hub` (the hub).

Topics (``<prefix>`` = ``edgeface/<site>``)::

    <prefix>/gallery/<person_id>      hub -> doors   retained signed person record or tombstone (QoS 1)
    <prefix>/door/<door>/event        door -> hub    one access event, QoS 1, stable ``event_id``
    <prefix>/door/<door>/state        door -> all    retained presence (online / offline = last will)
    <prefix>/door/<door>/cmd          hub -> door    signed command (unlock, reload)

paho-mqtt is imported lazily (inside the functions that connect), so importing this package costs nothing.
"""
from __future__ import annotations

from edgeface.errors import EdgefaceError


class SiteError(EdgefaceError, RuntimeError):
    """The site link cannot be set up (missing key, bad broker settings, paho-mqtt not installed)."""


def topic_prefix(site: str) -> str:
    return f"edgeface/{site}"


def gallery_topic(site: str, person_id: str = "+") -> str:
    return f"{topic_prefix(site)}/gallery/{person_id}"


def door_topic(site: str, door: str, leaf: str) -> str:
    """``leaf``: event, state or cmd; ``door`` may be ``+``."""
    return f"{topic_prefix(site)}/door/{door}/{leaf}"
