"""Per-track identity voting (k of the last n embedded crops) and the liveness hook.

RGB-only face recognition can be fooled by a photo or a screen showing an enrolled person. Multi-frame
agreement makes a single lucky frame harmless, and the liveness check below rejects the simplest attack (a
flat photo moved in front of the camera), but neither stops a video replay, a bent or cut-out photo or a
mask. Where that matters, add a depth/IR camera or a second factor through :class:`LivenessCheck`.
"""
from __future__ import annotations

import collections
import math
from typing import NamedTuple, Optional, Protocol

import numpy as np


class Vote(NamedTuple):
    name: Optional[str]   #: best gallery match at or above the threshold, None for "no one"
    similarity: float     #: cosine similarity of the best match (even when below the threshold)


class Verdict(NamedTuple):
    status: str            #: "pending", "confirmed" or "unknown"
    name: Optional[str]
    similarity: float      #: mean similarity of the agreeing votes (confirmed) or best seen (unknown)
    votes: int             #: agreeing votes


class VoteBox:
    """k-of-n agreement: ``confirmed`` when k of the last n votes name the same person; ``unknown`` when
    k of the last n name no one, or when a full window has no k agreeing votes and no more votes can come."""

    def __init__(self, k: int, n: int):
        if not 1 <= k <= n:
            raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
        self.k, self.n = int(k), int(n)
        self.votes: collections.deque[Vote] = collections.deque(maxlen=self.n)
        self.total = 0

    def add(self, vote: Vote) -> Verdict:
        self.votes.append(vote)
        self.total += 1
        return self.verdict()

    def verdict(self, final: bool = False) -> Verdict:
        counts = collections.Counter(v.name for v in self.votes)
        for name, count in counts.most_common():
            if name is not None and count >= self.k:
                sims = [v.similarity for v in self.votes if v.name == name]
                return Verdict("confirmed", name, float(np.mean(sims)), count)
        unknown = counts.get(None, 0)
        if unknown >= self.k or (final and self.votes):
            best = max((v.similarity for v in self.votes if not math.isnan(v.similarity)), default=math.nan)
            return Verdict("unknown", None, float(best), unknown)
        return Verdict("pending", None, math.nan, 0)


class LivenessResult(NamedTuple):
    live: Optional[bool]  #: True / False, or None when there is not enough evidence yet
    score: float
    reason: str


class LivenessCheck(Protocol):
    """The liveness hook: called every frame with a track's keypoint history (and the frame)."""

    name: str

    def check(self, keypoints_history: list[np.ndarray], image: Optional[np.ndarray] = None) -> LivenessResult:
        ...


class NoLiveness:
    name = "none"

    def check(self, keypoints_history, image=None) -> LivenessResult:
        return LivenessResult(True, math.nan, "liveness check disabled")


#: keypoints used by the parallax check: eyes, nose tip, mouth, ears (ears carry the yaw parallax)
_PARALLAX_POINTS = [0, 1, 2, 3, 4, 5]


def _affine_onto(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``src`` points moved by the least-squares affine transform that best maps them onto ``dst``."""
    design = np.hstack([src, np.ones((len(src), 1))])
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return design @ coef


def nonrigid_residual(kp_a: np.ndarray, kp_b: np.ndarray) -> float:
    """How far keypoints ``kp_a`` are from the best affine image of ``kp_b``, relative to face size.

    Every view of a flat photo (moved, scaled, rotated, tilted a little) maps onto every other by about an
    affine transform, so the residual stays at detector jitter. A real head that turns or nods moves the nose
    and ears relative to the eyes (parallax). Normalized by the eye-mouth distance of ``kp_b``.
    """
    a = np.asarray(kp_a, np.float64)[_PARALLAX_POINTS]
    b = np.asarray(kp_b, np.float64)[_PARALLAX_POINTS]
    scale = float(np.hypot(*(b[3] - (b[0] + b[1]) / 2)))
    if scale < 1e-6:
        return 0.0
    resid = b - _affine_onto(a, b)
    return float(np.sqrt((resid ** 2).sum(axis=1).mean()) / scale)


def parallax_score(history: list[np.ndarray], smooth: int = 8) -> float:
    """Largest non-rigid (non-affine) deformation of a track's keypoints, smoothed over time.

    All frames are affinely aligned to their mean shape (two rounds); what is left per frame is the part no
    flat-photo motion explains. It is averaged over ``smooth`` consecutive frames (detector jitter averages
    out, a pose change does not) and the largest RMS, relative to the eye-mouth distance, is returned.
    """
    pts = [np.asarray(k, np.float64)[_PARALLAX_POINTS] for k in history]
    if len(pts) < max(2, smooth):
        return 0.0
    mean = pts[-1]
    for _ in range(2):
        aligned = np.stack([_affine_onto(k, mean) for k in pts])
        mean = aligned.mean(axis=0)
    scale = float(np.hypot(*(mean[3] - (mean[0] + mean[1]) / 2)))
    if scale < 1e-6:
        return 0.0
    resid = (aligned - mean) / scale
    csum = np.concatenate([np.zeros((1,) + resid.shape[1:]), np.cumsum(resid, axis=0)])
    smoothed = (csum[smooth:] - csum[:-smooth]) / smooth
    return float(np.sqrt((smoothed ** 2).sum(axis=2).mean(axis=1)).max())


class KeypointParallaxLiveness:
    """Live when the track's keypoints deform in a way no flat photo can (parallax of a turning head).

    A real check, but a weak one: it rejects a photo held and moved in front of the camera (in the door
    demo's photo-attack test every such attack is denied); it does not reject a video replay on a screen or a
    photo that is bent while moved, and a person standing perfectly still is not "live" until they turn their
    head a little.
    """

    name = "keypoint_parallax"

    def __init__(self, min_nonrigid_residual: float = 0.05, min_frames: int = 12, smooth: int = 8):
        self.min_residual = float(min_nonrigid_residual)
        self.min_frames = max(int(min_frames), int(smooth))
        self.smooth = int(smooth)

    def check(self, keypoints_history: list[np.ndarray], image=None) -> LivenessResult:
        hist = list(keypoints_history)
        if len(hist) < self.min_frames:
            return LivenessResult(None, 0.0, f"need {self.min_frames} frames, have {len(hist)}")
        score = parallax_score(hist, self.smooth)
        if score >= self.min_residual:
            return LivenessResult(True, score, f"non-rigid keypoint motion {score:.3f}")
        return LivenessResult(None, score, f"keypoints move rigidly (parallax {score:.3f} < {self.min_residual})")


def make_liveness(cfg) -> LivenessCheck:
    """The check named by :class:`edgeface.device.config.LivenessConfig`."""
    if cfg.check == "none":
        return NoLiveness()
    if cfg.check == "keypoint_parallax":
        return KeypointParallaxLiveness(cfg.min_nonrigid_residual)
    raise ValueError(f"unknown liveness check {cfg.check!r}")
