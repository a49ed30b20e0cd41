"""Remote commands from the hub: ``unlock`` (audited as its own event; refused unless ``[site]
remote_unlock = true``) and ``reload`` (fetch every retained person record again).

A command is a signed envelope (see :mod:`.records`) with body
``{"type": "command", "site": ..., "door": ..., "action": "unlock"|"reload", "id": "<uuid>", "ts": <unix s>}``.
A command for another door, older than ``MAX_AGE_SECONDS`` or already seen (replay) is refused with one log
line; the door stays locked.
"""
from __future__ import annotations

import collections
import time
import uuid

from .records import RecordError

ACTIONS = ("unlock", "reload")
MAX_AGE_SECONDS = 60.0


def command_body(site: str, door: str, action: str) -> dict:
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    return {"type": "command", "site": site, "door": door, "action": action, "id": uuid.uuid4().hex,
            "ts": round(time.time(), 3)}


class CommandCheck:
    """Validates command bodies for one door (and remembers recent ids against replays)."""

    def __init__(self, site: str, door: str):
        self.site, self.door = site, door
        self._seen: collections.deque = collections.deque(maxlen=1000)

    def __call__(self, body: dict, now: float | None = None) -> str:
        """The action, or :class:`RecordError`."""
        now = time.time() if now is None else now
        if body.get("type") != "command":
            raise RecordError("not a command")
        if body.get("site") != self.site or body.get("door") != self.door:
            raise RecordError(f"command for {body.get('site')}/{body.get('door')}, not this door")
        if body.get("action") not in ACTIONS:
            raise RecordError(f"unknown action {body.get('action')!r}")
        ts = body.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or abs(now - ts) > MAX_AGE_SECONDS:
            raise RecordError("command too old or from the future (replay?)")
        if body.get("id") in self._seen:
            raise RecordError("command already executed (replay)")
        self._seen.append(body.get("id"))
        return body["action"]
