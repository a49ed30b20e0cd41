"""The door's threshold policy, in one place: which cosine similarity opens the door, and when to refuse it.

The threshold is ``[recognition] min_cosine_similarity`` when set, else the embedder manifest's calibrated
value for ``[recognition] operating_point``. Either way it must not be weaker (lower) than the manifest's
``far_0.01`` point - the threshold at which 1 in 100 different-person pairs already match. A lower threshold
opens the door to strangers (``min_cosine_similarity = -1.0`` matches everyone), so it is refused at start
unless ``[recognition] allow_weak_threshold = true`` says it is deliberate; then ``run`` and ``doctor``
print a warning line at every start. The manifest's own thresholds are checked too (finite and within
[-1, 1] by the core's manifest validation at load; stricter FAR = higher threshold here), so an edited manifest
cannot smuggle in a weak door.

Used by :mod:`edgeface.device.app` (start-up), :mod:`edgeface.device.loop` and ``doctor``.
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Optional

from edgeface.errors import EdgefaceError

log = logging.getLogger(__name__)

#: the operating point that is the floor of any door threshold
FLOOR_POINT = "far_0.01"


class ThresholdError(EdgefaceError, ValueError):
    """The door threshold is weak (below the manifest's far_0.01 point) or the manifest's thresholds are invalid."""


class DoorThreshold(NamedTuple):
    """The threshold the door uses and why."""
    value: float             #: min cosine similarity for a match
    source: str              #: where it comes from ("[recognition] min_cosine_similarity" or "manifest far_0.001")
    floor: Optional[float]   #: the manifest's far_0.01 threshold (the weakest accepted), None if not calibrated
    warning: Optional[str]   #: set when a weak threshold is allowed by allow_weak_threshold (print it every start)


def manifest_points(embedder) -> dict[str, float]:
    """The embedder manifest's thresholds by name (``accuracy``, ``far_0.01``, ...); the FAR points must get
    stricter (higher) as the FAR falls. Raises :class:`ThresholdError`.

    Each threshold's presence and range ([-1, 1]) is checked by the core when the manifest is loaded
    (:mod:`edgeface.manifest`); an edited manifest never gets this far.
    """
    section = embedder.section
    points = {"accuracy": float(section["min_cosine_similarity"])}
    fars = []
    for name, op in (section.get("operating_points") or {}).items():
        points[name] = float(op["min_cosine_similarity"])
        if name.startswith("far_"):
            try:
                fars.append((float(name[4:]), name))
            except ValueError:
                raise ThresholdError(f"manifest embedder.operating_points.{name}: "
                                     "not a FAR name (far_<rate>)") from None
    fars.sort()
    for (_, strict), (_, loose) in zip(fars, fars[1:]):
        if points[strict] < points[loose]:
            raise ThresholdError(f"manifest operating points are inconsistent: {strict} ({points[strict]}) must be "
                                 f">= {loose} ({points[loose]}) - a lower false accept rate needs a higher threshold")
    return points


def manifest_threshold(embedder, operating_point: str, gallery_size: Optional[int] = None) -> float:
    """The embedder manifest's calibrated ``min_cosine_similarity`` for an operating point.

    Open-set points (``fpir_0.01``: at most 1 in 100 strangers matched) are resolved for ``gallery_size``
    enrolled people (:func:`edgeface.embed.open_set_point`); an unknown size takes the largest calibrated
    gallery (the strictest threshold).
    """
    if operating_point.startswith("fpir_"):
        from edgeface.embed import open_set_point

        size = gallery_size if gallery_size is not None else 10 ** 9
        try:
            return open_set_point(embedder.section.get("operating_points") or {}, operating_point, size
                                  ).min_cosine_similarity
        except KeyError as exc:
            raise ThresholdError(f"{exc.args[0]}: rebuild the models with this edgeface (edgeface build)") from None
    points = manifest_points(embedder)
    if operating_point not in points:
        log.warning("the embedder manifest has no %s operating point; using its accuracy-optimal threshold %.4f",
                    operating_point, points["accuracy"])
        return points["accuracy"]
    return points[operating_point]


def door_threshold(cfg, embedder, gallery_size: Optional[int] = None) -> DoorThreshold:
    """The door threshold for ``cfg`` (a DeviceConfig) and an embedder, checked against the far_0.01 floor.

    ``gallery_size``: enrolled people, for open-set (``fpir_``) operating points (unknown: the strictest).

    Raises :class:`ThresholdError` when it is below the floor (or the floor is not calibrated) and
    ``[recognition] allow_weak_threshold`` is false.
    """
    r = cfg.recognition
    points = manifest_points(embedder)
    if r.min_cosine_similarity is not None:
        value, source = float(r.min_cosine_similarity), "[recognition] min_cosine_similarity"
    else:
        value, source = manifest_threshold(embedder, r.operating_point, gallery_size), f"manifest {r.operating_point}"
    floor = points.get(FLOOR_POINT)
    if floor is None:
        problem = (f"the embedder manifest has no calibrated {FLOOR_POINT} point, so the door threshold {value:.4f} "
                   "cannot be checked against it")
    elif value < floor:
        problem = (f"door threshold {value:.4f} ({source}) is below the manifest's {FLOOR_POINT} threshold "
                   f"{floor:.4f}: more than 1 in 100 strangers' faces would match an enrolled person")
    else:
        return DoorThreshold(value, source, floor, None)
    if not getattr(r, "allow_weak_threshold", False):
        raise ThresholdError(f"{problem}; raise it, or set [recognition] allow_weak_threshold = true if this is "
                             "deliberate")
    return DoorThreshold(value, source, floor, f"WEAK THRESHOLD allowed by allow_weak_threshold: {problem}")


def stranger_match_rate(far: float, comparisons: int) -> float:
    """Chance that one crop of a stranger matches *someone* in a gallery: ``1 - (1 - far) ** comparisons``.

    ``far`` is the pair false accept rate of the threshold (the manifest's ``far_0.001`` point: 1 in 1,000
    different-person pairs score above it) and ``comparisons`` the number of enrolled embeddings, because the
    gallery answers with the best of all of them. It assumes independent comparisons, so read it as the size
    of the effect, not a measurement: ``edgeface bench identify`` measures FPIR on LFW. 8 people x 5 photos at
    FAR 1e-3 gives about 4% per stranger crop; the k-of-n vote over a visit lowers it, a stricter
    ``operating_point`` (``far_0.0001``) lowers it about tenfold.

    >>> round(stranger_match_rate(0.001, 40), 3)
    0.039
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    if comparisons < 0:
        raise ValueError(f"comparisons must be >= 0, got {comparisons}")
    return 1.0 - (1.0 - far) ** comparisons


def operating_point_far(cfg) -> Optional[float]:
    """The pair FAR that the configured threshold was calibrated for (``far_0.001`` -> 0.001), if known."""
    r = cfg.recognition
    if r.min_cosine_similarity is not None or not r.operating_point.startswith("far_"):
        return None
    try:
        return float(r.operating_point[4:])
    except ValueError:
        return None


def gallery_risk_note(cfg, embeddings: int) -> Optional[str]:
    """One line on how likely a stranger's crop matches someone, for the start log and ``doctor``."""
    far = operating_point_far(cfg)
    if far is None or embeddings == 0:
        return None
    rate = stranger_match_rate(far, embeddings)
    return (f"{embeddings} enrolled embeddings at {cfg.recognition.operating_point}: a stranger's crop matches "
            f"someone with probability ~{100 * rate:.1f}% (1-(1-FAR)^N); the k-of-n vote must then agree"
            + ("; consider operating_point = \"far_0.0001\"" if rate > 0.01 and far > 1e-4 else ""))
