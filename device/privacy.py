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


def forget_in(name: str, gallery=None, events: Optional[EventLog] = None) -> ForgetReport:
    """The erasure itself, on objects the caller already holds open: ``gallery`` (an :class:`edgeface.Gallery`,
    or None) first, so the person can no longer be recognised, then ``events`` (an :class:`EventLog`, or None):
    every event naming them, those events' snapshot files and the site outbox rows naming them.

    :func:`forget_person` opens the files and calls this; the site sync (which keeps both open) calls it for a
    tombstone. Idempotent: a name that is not enrolled is skipped in the gallery and still erased from events.
    """
    from edgeface.gallery import GalleryError

    embeddings = 0
    if gallery is not None:
        try:
            if name in gallery:  # Gallery.forget overwrites the rows and truncates the write-ahead log
                embeddings = sum(f.embeddings for f in gallery.forget(name))
        except GalleryError as exc:
            raise PrivacyError(f"cannot erase {name!r} from gallery {gallery.path}: {exc}; "
                               "nothing was erased") from exc
    if events is None:
        return ForgetReport(name, embeddings, 0, 0)
    try:
        n_events, snapshots = events.forget(name)
    except EdgefaceError as exc:
        raise PrivacyError(f"{name!r}: {embeddings} embedding(s) removed from the gallery, but the event log could "
                           f"not be cleaned: {exc}; run forget again") from exc
    log.info("forgot a person: %d embeddings, %d events, %d snapshots", embeddings, n_events, snapshots)
    return ForgetReport(name, embeddings, n_events, snapshots)


def forget_person(name: str, gallery_path: str | os.PathLike, events_path: Optional[str | os.PathLike] = None,
                  snapshot_dir: Optional[str | os.PathLike] = None, cipher=None) -> ForgetReport:
    """Erase ``name``: their gallery embeddings first (so they can no longer be recognised), then every event
    naming them and those events' snapshot files (:func:`forget_in` on the files opened here). Returns what was
    removed. ``cipher``: the gallery is encrypted (:mod:`edgeface.device.crypto`); it is sealed back before the
    events are touched."""
    from edgeface.gallery import GalleryError

    try:
        with gallery_file(gallery_path, cipher, write=True) as g:
            embeddings = forget_in(name, g).embeddings
    except (GalleryError, CryptoError) as exc:
        raise PrivacyError(f"cannot erase {name!r} from gallery {gallery_path}: {exc}; nothing was erased") from exc
    try:
        ev = _open_events(events_path, snapshot_dir)
    except EdgefaceError as exc:
        raise PrivacyError(f"{name!r}: {embeddings} embedding(s) removed from the gallery, but the event log could "
                           f"not be opened: {exc}; run forget again") from exc
    if ev is None:
        return ForgetReport(name, embeddings, 0, 0)
    with ev:
        report = forget_in(name, None, ev)
    return report._replace(embeddings=embeddings)


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
