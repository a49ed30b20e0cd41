"""Erasing and renaming a person everywhere the device keeps them: gallery embeddings, access events, snapshots.

``edgeface-device gallery forget NAME`` and ``gallery rename OLD NEW`` call these; so can the site sync for
a tombstone (a person erased centrally). :func:`forget_person` is idempotent: forgetting someone already gone
removes whatever is left (events and snapshots of a person removed earlier with ``edgeface gallery remove``)
and reports zeros otherwise.

What it cannot reach: copies outside the device (backups, a central site database, the systemd journal,
which logs decisions with the escaped name when run with ``-v``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple, Optional

from edgeface.errors import EdgefaceError

from .crypto import CryptoError, gallery_file
from .events import EventLog

log = logging.getLogger(__name__)


class PrivacyError(EdgefaceError, RuntimeError):
    """A person could not be erased or renamed (the message says what was and was not done)."""


class ForgetReport(NamedTuple):
    """What :func:`forget_person` removed."""
    name: str
    embeddings: int  #: gallery embeddings removed (0: not enrolled)
    events: int      #: event rows naming the person removed
    snapshots: int   #: snapshot files of those events deleted

    def to_json(self) -> dict:
        return self._asdict()


def _open_events(events_path, snapshot_dir) -> Optional[EventLog]:
    if not events_path or not Path(events_path).is_file():
        return None
    return EventLog(events_path, retention_days=0, max_events=10**9, snapshot_dir=snapshot_dir or None)


def forget_person(name: str, gallery_path: str | os.PathLike, events_path: Optional[str | os.PathLike] = None,
                  snapshot_dir: Optional[str | os.PathLike] = None, cipher=None) -> ForgetReport:
    """Erase ``name``: their gallery embeddings first (so they can no longer be recognised), then every event
    naming them and those events' snapshot files. Returns what was removed. ``cipher``: the gallery is encrypted
    (:mod:`edgeface.device.crypto`)."""
    from edgeface.gallery import GalleryError

    embeddings = 0
    try:
        with gallery_file(gallery_path, cipher, write=True) as g:
            if name in g:  # Gallery.forget overwrites the rows and truncates the write-ahead log
                embeddings = sum(f.embeddings for f in g.forget(name))
    except (GalleryError, CryptoError) as exc:
        raise PrivacyError(f"cannot erase {name!r} from gallery {gallery_path}: {exc}; nothing was erased") from exc
    try:
        ev = _open_events(events_path, snapshot_dir)
        if ev is None:
            return ForgetReport(name, embeddings, 0, 0)
        with ev:
            events, snapshots = ev.forget(name)
    except EdgefaceError as exc:
        raise PrivacyError(f"{name!r}: {embeddings} embedding(s) removed from the gallery, but the event log could "
                           f"not be cleaned: {exc}; run forget again") from exc
    log.info("forgot a person: %d embeddings, %d events, %d snapshots", embeddings, events, snapshots)
    return ForgetReport(name, embeddings, events, snapshots)


def rename_person(old: str, new: str, gallery_path: str | os.PathLike,
                  events_path: Optional[str | os.PathLike] = None, cipher=None) -> int:
    """Rename a person in the gallery and in every event (so the old name is not kept); returns events renamed."""
    from edgeface.gallery import GalleryError

    try:
        with gallery_file(gallery_path, cipher, write=True) as g:
            if old in g:
                g.rename(old, new)
            elif new not in g:
                raise PrivacyError(f"{old!r} is not enrolled in {gallery_path}")
            # else: renamed in the gallery earlier (e.g. with `edgeface gallery rename`): finish the events
    except (GalleryError, CryptoError) as exc:
        raise PrivacyError(f"cannot rename {old!r}: {exc}") from exc
    try:
        ev = _open_events(events_path, None)
        if ev is None:
            return 0
        with ev:
            return ev.rename(old, new)
    except EdgefaceError as exc:
        raise PrivacyError(f"{old!r} renamed in the gallery, but not in the event log: {exc}; "
                           "run rename again") from exc
