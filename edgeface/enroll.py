"""Enrollment from photos, shared by ``edgeface enroll`` and ``edgeface-device enroll``.

One face per photo: a photo with no face, several faces (or, with ``check``, a face that fails the
caller's quality gates) is rejected with a reason and the others are still enrolled.
"""
from __future__ import annotations

import logging
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from .preprocess import ImageError, read_image

log = logging.getLogger(__name__)

#: ``check(image, face)``: ``None`` for a usable face, else the reason it is not
FaceCheck = Callable[[np.ndarray, object], Optional[str]]


class EnrollResult(NamedTuple):
    name: str
    accepted: list        #: sources (file names, or "camera frame N") of the stored embeddings
    rejected: list        #: (source, reason) for each rejected photo
    total_embeddings: int  #: the person's embeddings in the gallery afterwards (0: nothing stored)

    def to_json(self) -> dict:
        """The one JSON shape of an enrollment (both CLIs' ``--json``)."""
        return {"name": self.name, "enrolled": len(self.accepted), "accepted": list(self.accepted),
                "rejected": [{"source": s, "reason": r} for s, r in self.rejected],
                "total_embeddings": self.total_embeddings}


def photo_embedding(rec, image: np.ndarray, check: Optional[FaceCheck] = None
                    ) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(embedding, None) for a usable photo of one person, else (None, reason)."""
    faces = rec.detect(image)
    if not faces:
        return None, "no face found"
    if len(faces) > 1:
        return None, f"{len(faces)} faces found; enroll from photos of one person"
    reason = check(image, faces[0]) if check is not None else None
    if reason is not None:
        return None, reason
    return rec.embed_face(image, faces[0]), None


def embed_photos(rec, paths: Sequence[str], check: Optional[FaceCheck] = None) -> tuple[list, list, list]:
    """Embed one face per photo file: ``(embeddings, accepted sources, rejected (source, reason))``."""
    embeddings, accepted, rejected = [], [], []
    for path in paths:
        try:
            image = read_image(path)
        except ImageError as exc:
            rejected.append((str(path), str(exc).split(": ", 1)[-1]))  # the message without the file name
            continue
        emb, reason = photo_embedding(rec, image, check)
        if emb is None:
            rejected.append((str(path), reason))
            continue
        embeddings.append(emb)
        accepted.append(str(path))
    for source, reason in rejected:
        log.info("%s rejected: %s", source, reason)
    return embeddings, accepted, rejected


def enroll_photos(rec, gallery, name: str, paths: Sequence[str], check: Optional[FaceCheck] = None,
                  keep_source: bool = False) -> EnrollResult:
    """Enroll ``name`` into ``gallery`` from photo files (one transaction; nothing stored if none is usable).

    The photos' paths are stored beside the embeddings only with ``keep_source`` (they say where a person's
    photos are: personal data the gallery does not need).
    """
    embeddings, accepted, rejected = embed_photos(rec, paths, check)
    total = gallery.enroll(name, np.stack(embeddings), accepted if keep_source else None) if embeddings else 0
    return EnrollResult(name, accepted, rejected, total)
