"""A small IoU tracker: a face in this frame continues the track whose last box overlaps it most."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from edgeface import blazeface


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (:func:`edgeface.blazeface.iou`)."""
    return float(blazeface.iou(a, np.asarray(b, np.float64)[None])[0])


@dataclass
class Track:
    """One face followed across frames; the loop stores its per-track state in the fields below."""
    id: int
    box: np.ndarray
    face: Any
    first_frame: int
    last_frame: int
    hits: int = 1
    missed: int = 0
    state: dict = field(default_factory=dict)


class IoUTracker:
    """Greedy IoU matching, best overlaps first. Tracks unseen for more than ``max_missed`` frames end."""

    def __init__(self, min_iou: float = 0.3, max_missed: int = 5):
        if not 0.0 <= min_iou <= 1.0:
            raise ValueError(f"min_iou must be in [0, 1], got {min_iou}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        self.min_iou, self.max_missed = float(min_iou), int(max_missed)
        self.tracks: dict[int, Track] = {}
        self._ids = itertools.count(1)

    def update(self, faces: list, frame_index: int) -> tuple[list[Track], list[Track]]:
        """Assign ``faces`` (objects with a ``.box``) to tracks. Returns (tracks seen this frame, ended tracks)."""
        live = list(self.tracks.values())
        pairs = sorted(((iou(t.box, f.box), ti, fi) for ti, t in enumerate(live) for fi, f in enumerate(faces)),
                       reverse=True)
        used_t, used_f, seen = set(), set(), []
        for score, ti, fi in pairs:
            if score < self.min_iou or score <= 0.0:
                break
            if ti in used_t or fi in used_f:
                continue
            used_t.add(ti)
            used_f.add(fi)
            t = live[ti]
            t.box, t.face, t.last_frame, t.hits, t.missed = np.asarray(faces[fi].box, np.float32), faces[fi], \
                frame_index, t.hits + 1, 0
            seen.append(t)
        for fi, f in enumerate(faces):
            if fi not in used_f:
                t = Track(next(self._ids), np.asarray(f.box, np.float32), f, frame_index, frame_index)
                self.tracks[t.id] = t
                seen.append(t)
        ended = []
        for ti, t in enumerate(live):
            if ti not in used_t:
                t.missed += 1
                if t.missed > self.max_missed:
                    ended.append(self.tracks.pop(t.id))
        return seen, ended

    def clear(self) -> list[Track]:
        """End every track (the camera was lost); returns them."""
        ended, self.tracks = list(self.tracks.values()), {}
        return ended

    def get(self, track_id: int) -> Optional[Track]:
        return self.tracks.get(track_id)
