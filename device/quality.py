"""Quality gates: which face crops are worth embedding (pure functions).

A crop is embedded only if the face is large enough, sharp enough (variance of the Laplacian), well exposed
and roughly frontal (from the detector's keypoints: right eye, left eye, nose tip, mouth, right ear, left ear).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import cv2
import numpy as np

#: side of the grey face patch the sharpness and brightness are measured on (makes them scale-free)
PATCH = 112


class Quality(NamedTuple):
    face_pixels: float        #: shorter side of the detector box
    laplacian_variance: float  #: sharpness of the face patch
    brightness: float          #: mean grey level of the face patch
    yaw_ratio: float           #: nose offset from the eye midpoint / eye distance (0 = frontal)
    roll_degrees: float        #: tilt of the eye line
    ok: bool
    reason: Optional[str]      #: why the gate failed (None when ok)
    score: float               #: higher is better; used to decide whether a crop is "clearly better"


def face_patch(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Grey PATCH x PATCH patch of the detector box (clipped to the image)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = [int(round(float(v))) for v in box]
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return np.zeros((PATCH, PATCH), np.uint8)
    grey = cv2.cvtColor(np.ascontiguousarray(image[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (PATCH, PATCH), interpolation=cv2.INTER_AREA)


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the Laplacian: high for sharp edges, low for a blurred or flat patch."""
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def pose_from_keypoints(keypoints: np.ndarray) -> tuple[float, float]:
    """(yaw ratio, roll degrees) from BlazeFace keypoints.

    Yaw ratio: horizontal offset of the nose tip from the eye midpoint, measured along the eye line, divided
    by the eye distance (about 0 for a frontal face, about 0.5 at a strong profile). Roll: angle of the eye
    line from horizontal (the subject's right eye is on the image's left for a frontal face).
    """
    kp = np.asarray(keypoints, np.float64)
    right_eye, left_eye, nose = kp[0], kp[1], kp[2]
    axis = left_eye - right_eye
    dist = float(np.hypot(*axis))
    if dist < 1e-6:
        return math.inf, 0.0
    unit = axis / dist
    yaw = float(np.dot(nose - (right_eye + left_eye) / 2, unit)) / dist
    roll = math.degrees(math.atan2(axis[1], axis[0]))
    return yaw, roll


def assess(image: np.ndarray, box: np.ndarray, keypoints: np.ndarray, cfg) -> Quality:
    """Measure one face and apply the gates of ``cfg`` (:class:`edgeface.device.config.QualityConfig`)."""
    face_px = float(min(box[2] - box[0], box[3] - box[1]))
    grey = face_patch(image, box)
    lap = laplacian_variance(grey)
    bright = float(grey.mean())
    yaw, roll = pose_from_keypoints(keypoints)
    reason = None
    if face_px < cfg.min_face_pixels:
        reason = f"face {face_px:.0f} px < {cfg.min_face_pixels}"
    elif not cfg.min_brightness <= bright <= cfg.max_brightness:
        reason = f"brightness {bright:.0f} outside [{cfg.min_brightness:.0f}, {cfg.max_brightness:.0f}]"
    elif lap < cfg.min_laplacian_variance:
        reason = f"blurred (Laplacian variance {lap:.1f} < {cfg.min_laplacian_variance})"
    elif abs(yaw) > cfg.max_yaw_ratio:
        reason = f"turned (yaw ratio {yaw:+.2f})"
    elif abs(roll) > cfg.max_roll_degrees:
        reason = f"tilted (roll {roll:+.0f} deg)"
    # score: size (saturating at 3x the minimum), sharpness (saturating), frontality
    size_term = min(1.0, face_px / (3.0 * max(cfg.min_face_pixels, 1)))
    sharp_term = min(1.0, lap / max(4.0 * cfg.min_laplacian_variance, 1.0))
    pose_term = max(0.0, 1.0 - abs(yaw) / max(cfg.max_yaw_ratio, 1e-6) * 0.5) if math.isfinite(yaw) else 0.0
    score = size_term * (0.5 + 0.5 * sharp_term) * pose_term
    return Quality(face_px, lap, bright, yaw, roll, reason is None, reason, float(score))
