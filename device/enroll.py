"""On-device enrollment: from photos (one face per photo, a reason for every rejected file) and from the
camera (K diverse good crops of one person, guided by the quality gates).

Every enrollment is one gallery transaction: a process killed half-way leaves the gallery as it was before.
Only the embeddings are stored: the photo paths (or camera frame labels) they came from are kept in the gallery
only with ``keep_source=True`` (``edgeface-device enroll --keep-source``), as in ``edgeface enroll``.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Sequence

import numpy as np

from edgeface.enroll import EnrollResult, photo_embedding
from edgeface.enroll import enroll_photos as core_enroll_photos
from edgeface.errors import EdgefaceError

from . import quality as quality_mod
from .sources import LOST, FrameCheckError, check_frame

log = logging.getLogger(__name__)


class EnrollTimeoutError(EdgefaceError, TimeoutError):
    """Camera enrollment did not collect its good crops in time (nothing was stored)."""


def quality_check(quality_cfg):
    """The device's quality gates as an enrollment ``check`` (None: no gates)."""
    if quality_cfg is None:
        return None

    def check(image, face):
        q = quality_mod.assess(image, face.box, face.keypoints, quality_cfg)
        return None if q.ok else f"poor face: {q.reason}"
    return check


def embed_photo(rec, image: np.ndarray, quality_cfg=None) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(embedding, None) for a usable photo of one person, else (None, reason)."""
    return photo_embedding(rec, image, quality_check(quality_cfg))


def enroll_photos(rec, gallery, name: str, paths: Sequence[str], quality_cfg=None,
                  keep_source: bool = False) -> EnrollResult:
    """Enroll ``name`` from photo files; photos without exactly one (good) face are rejected with a reason.

    ``keep_source``: also store each accepted photo's path in the gallery (default: embeddings only)."""
    return core_enroll_photos(rec, gallery, name, paths, quality_check(quality_cfg), keep_source=keep_source)


GUIDANCE = {
    "face": "come closer to the camera",
    "brightness": "find better light",
    "blurred": "hold still",
    "turned": "look at the camera",
    "tilted": "hold your head straight",
}


class CameraEnroller:
    """Collects K diverse, good crops of one person from frames.

    A crop is kept when exactly one face is in view, it passes the quality gates, and its embedding is both
    new (cosine to every kept crop <= ``max_cosine_to_collected``) and consistent (cosine to the first kept
    crop >= ``min_cosine_to_first``, so a second person stepping in is not mixed in). :meth:`feed` returns a
    short instruction for the person in front of the camera.
    """

    def __init__(self, rec, enroll_cfg, quality_cfg):
        self.rec, self.cfg, self.qcfg = rec, enroll_cfg, quality_cfg
        self.embeddings: list[np.ndarray] = []
        self.sources: list[str] = []
        self.frames = 0

    @property
    def done(self) -> bool:
        return len(self.embeddings) >= self.cfg.samples

    def feed(self, image: np.ndarray, label: str = "") -> str:
        self.frames += 1
        faces = self.rec.detect(image)
        if not faces:
            return "no face: step in front of the camera"
        if len(faces) > 1:
            return "several faces: one person at a time"
        face = faces[0]
        q = quality_mod.assess(image, face.box, face.keypoints, self.qcfg)
        if not q.ok:
            return GUIDANCE.get(q.reason.split(" ")[0], q.reason)
        emb = self.rec.embed_face(image, face)
        if self.embeddings:
            sims = np.stack(self.embeddings) @ emb
            if float(sims[0]) < self.cfg.min_cosine_to_first:
                return "a different person? the first person only, please"
            if float(sims.max()) > self.cfg.max_cosine_to_collected:
                return "turn your head a little or change expression"
        self.embeddings.append(emb)
        self.sources.append(label or f"camera frame {self.frames}")
        return f"got {len(self.embeddings)} of {self.cfg.samples}"


def enroll_from_camera(rec, gallery, name: str, source, enroll_cfg, quality_cfg,
                       on_progress: Optional[Callable[[str], None]] = None,
                       clock: Callable[[], float] = time.monotonic, keep_source: bool = False) -> EnrollResult:
    """Collect ``enroll_cfg.samples`` crops from ``source`` (a ReconnectingSource) and store them in one
    transaction. Raises TimeoutError (nothing stored) when they are not collected in time. ``keep_source``:
    also store the frame labels ("camera frame N") in the gallery (default: embeddings only)."""
    enroller = CameraEnroller(rec, enroll_cfg, quality_cfg)
    deadline = clock() + enroll_cfg.timeout_seconds
    last = None
    source.open()
    try:
        while not enroller.done:
            if clock() > deadline:
                raise EnrollTimeoutError(f"collected {len(enroller.embeddings)} of {enroll_cfg.samples} good crops in "
                                   f"{enroll_cfg.timeout_seconds:.0f} s; nothing enrolled")
            item = source.read()
            if item is None:
                raise EnrollTimeoutError(f"the source ended after {len(enroller.embeddings)} of {enroll_cfg.samples} "
                                   "good crops; nothing enrolled")
            if item is LOST:
                msg = "camera lost, reconnecting"
            else:
                try:
                    image = check_frame(item.image)
                except FrameCheckError as exc:
                    log.warning("frame skipped: %s", exc)
                    continue
                msg = enroller.feed(image, f"camera frame {item.index}")
            if on_progress is not None and msg != last:
                on_progress(msg)
            last = msg
    finally:
        source.close()
    total = gallery.enroll(name, np.stack(enroller.embeddings), enroller.sources if keep_source else None)
    return EnrollResult(name, list(enroller.sources), [], total)
