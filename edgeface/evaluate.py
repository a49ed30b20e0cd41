"""Face-verification evaluation: LFW pair lists and threshold metrics.

Lean core module: standard library and numpy only, pure functions, no side
effects at import.

Scores are similarities (e.g. cosine): higher means "more likely the same
person". A pair whose face could not be found/embedded carries the score NaN,
and such a pair is **always counted as an error**, never dropped:

* in accuracy and the confusion helpers it is wrong at every threshold;
* for ROC / AUC / TAR@FAR a NaN same-person pair is treated as ``-inf``
  (never accepted) and a NaN different-person pair as ``+inf`` (always
  accepted).

A pair is predicted "same" iff ``score >= threshold``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from .errors import EdgefaceError

logger = logging.getLogger(__name__)

__all__ = [
    "Pair",
    "KFoldResult",
    "read_pairs",
    "lfw_image_path",
    "predict_same",
    "accuracy_at",
    "best_threshold",
    "kfold_accuracy",
    "roc_curve",
    "roc_auc",
    "tar_at_far",
    "confusion_counts",
    "precision_recall_f1",
    "summarize",
]

PathLike = Union[str, "os.PathLike[str]"]
ArrayLike = npt.ArrayLike

IMAGES_DIRNAME = "images_deepfunneled"


class PairsFileError(EdgefaceError, ValueError):
    """A missing, unreadable or malformed pairs file; the message names the file (and the line)."""


class Pair(NamedTuple):
    """One verification pair from an LFW pairs file.

    ``fold`` is 1-based (1..10) for the 10-fold ``pairs.txt`` -- matching the
    fold numbers used in the dataset's errata -- and 0 for the single-split
    development files (``pairsDevTrain.txt`` / ``pairsDevTest.txt``).
    """

    name1: str
    n1: int
    name2: str
    n2: int
    same: bool
    fold: int


class KFoldResult(NamedTuple):
    """Result of :func:`kfold_accuracy` (population std over folds)."""

    mean: float
    std: float
    fold_accuracies: list[float]
    thresholds: list[float]


# --------------------------------------------------------------------------- #
# Pair files
# --------------------------------------------------------------------------- #


def _parse_int(token: str, path: Path, lineno: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise PairsFileError(f"{path}:{lineno}: {what} must be an integer, got {token!r}") from None
    if value < 1:
        raise PairsFileError(f"{path}:{lineno}: {what} must be >= 1, got {value}")
    return value


def read_pairs(path: PathLike) -> list[Pair]:
    """Parse an LFW pairs file.

    Two formats are accepted, distinguished by the header line:

    * ``pairs.txt``: header ``<folds> <n>``; then for each fold ``n``
      same-person lines ``name n1 n2`` followed by ``n`` different-person lines
      ``name1 n1 name2 n2``. Folds are numbered 1..folds.
    * ``pairsDev*.txt``: header ``<n>``; then ``n`` same lines and ``n``
      different lines, all in fold 0.

    Blank lines are ignored.

    Raises:
        PairsFileError (a ValueError): naming the file and line number on a
            malformed header or pair line, when the number of pair lines does
            not match the header, or when the file cannot be read.
    """
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as fh:
            lines = [(i, ln.split()) for i, ln in enumerate(fh, start=1) if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else exc
        raise PairsFileError(f"{path}: cannot read the pairs file ({why})") from exc
    if not lines:
        raise PairsFileError(f"{path}: empty pairs file")

    head_no, head = lines[0]
    if len(head) == 2:
        n_folds = _parse_int(head[0], path, head_no, "fold count")
        per_fold = _parse_int(head[1], path, head_no, "pairs per fold")
        first_fold = 1
    elif len(head) == 1:
        n_folds, per_fold, first_fold = 1, _parse_int(head[0], path, head_no, "pair count"), 0
    else:
        raise PairsFileError(
            f"{path}:{head_no}: header must be '<folds> <n>' or '<n>', got {len(head)} fields"
        )

    body = lines[1:]
    expected = n_folds * 2 * per_fold
    if len(body) > expected:
        extra_no = body[expected][0]
        raise PairsFileError(
            f"{path}:{extra_no}: unexpected extra line; header promises {expected} pair lines"
        )

    pairs: list[Pair] = []
    for k, (lineno, f) in enumerate(body):
        fold = first_fold + k // (2 * per_fold)
        same = (k % (2 * per_fold)) < per_fold
        if same:
            if len(f) != 3:
                raise PairsFileError(
                    f"{path}:{lineno}: expected same-person line 'name n1 n2', got {len(f)} fields"
                )
            pairs.append(
                Pair(f[0], _parse_int(f[1], path, lineno, "n1"), f[0],
                     _parse_int(f[2], path, lineno, "n2"), True, fold)
            )
        else:
            if len(f) != 4:
                raise PairsFileError(
                    f"{path}:{lineno}: expected different-person line 'name1 n1 name2 n2', "
                    f"got {len(f)} fields"
                )
            pairs.append(
                Pair(f[0], _parse_int(f[1], path, lineno, "n1"), f[2],
                     _parse_int(f[3], path, lineno, "n2"), False, fold)
            )

    if len(pairs) < expected:
        last_no = body[-1][0] if body else head_no
        raise PairsFileError(
            f"{path}:{last_no}: file ends after {len(pairs)} pair lines; "
            f"header promises {expected}"
        )
    logger.debug("read %d pairs (%d folds) from %s", len(pairs), n_folds, path)
    return pairs


def read_people(path: PathLike) -> list[tuple[str, int]]:
    """``(name, number of images)`` for every person of an LFW people file (``peopleDevTrain.txt``,
    ``peopleDevTest.txt``), in file order. The header (a count) and lines that are not ``name count`` are
    skipped.

    Raises:
        PairsFileError (a ValueError): when the file cannot be read.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else exc
        raise PairsFileError(f"{path}: cannot read the people file ({why})") from exc
    return [(p[0], int(p[1])) for p in (ln.split() for ln in lines) if len(p) == 2 and p[1].isdigit()]


def lfw_image_path(lfw_root: PathLike, name: str, n: int) -> Path:
    """Path of LFW image ``n`` of person ``name``.

    ``lfw_root`` may be the dataset folder that holds ``images_deepfunneled``
    or the images folder itself. The file's existence is not checked.

    Raises:
        ValueError: if ``name`` is empty / contains a path separator or ``n``
            is not a positive integer.
    """
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"name must be a plain person name, got {name!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    root = Path(lfw_root)
    images = root / IMAGES_DIRNAME
    if root.name != IMAGES_DIRNAME and images.is_dir():
        root = images
    return root / name / f"{name}_{int(n):04d}.jpg"


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #


def _as_scores_labels(scores: ArrayLike, same: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"same must be 1-D with the shape of scores {s.shape}, got {y.shape}")
    if s.size == 0:
        raise ValueError("scores is empty")
    if y.dtype != np.bool_:
        if not np.all(np.isin(y, (0, 1))):
            raise ValueError("same must contain only booleans or 0/1")
        y = y.astype(bool)
    return s, y


def _require_both_classes(y: np.ndarray) -> None:
    if y.all() or not y.any():
        raise ValueError("same must contain both same (True) and different (False) pairs")


def _roc_scores(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """NaN same -> -inf (never accepted), NaN different -> +inf (always accepted)."""
    out = s.copy()
    nan = np.isnan(out)
    out[nan & y] = -np.inf
    out[nan & ~y] = np.inf
    return out


# --------------------------------------------------------------------------- #
# Threshold metrics
# --------------------------------------------------------------------------- #


def predict_same(scores: ArrayLike, same: ArrayLike, threshold: float) -> np.ndarray:
    """Predictions ``score >= threshold``, with NaN pairs forced to be wrong.

    The labels are needed only to make failed (NaN) pairs count as errors:
    their prediction is the opposite of the truth.
    """
    s, y = _as_scores_labels(scores, same)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    with np.errstate(invalid="ignore"):
        pred = s >= threshold
    nan = np.isnan(s)
    pred[nan] = ~y[nan]
    return pred


def first_pairs(pairs: Sequence[Pair], limit: Optional[int]) -> list[Pair]:
    """The first ``limit // 2`` same and ``limit - limit // 2`` different pairs (a quick check, not the
    protocol); all pairs when ``limit`` is None."""
    if limit is None:
        return list(pairs)
    if limit < 2:
        raise ValueError(f"limit must be >= 2, got {limit}")
    return [p for p in pairs if p.same][: limit // 2] + [p for p in pairs if not p.same][: limit - limit // 2]


def accuracy_at(scores: ArrayLike, same: ArrayLike, threshold: float) -> float:
    """Fraction of pairs classified correctly at ``threshold`` (NaN pairs wrong)."""
    s, y = _as_scores_labels(scores, same)
    return float(np.mean(predict_same(s, y, threshold) == y))


def _correct_counts(s: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Number of correct decisions at each threshold (vectorised, NaN never correct)."""
    fin = ~np.isnan(s)
    same_sorted = np.sort(s[fin & y])
    diff_sorted = np.sort(s[fin & ~y])
    same_ge = same_sorted.size - np.searchsorted(same_sorted, thresholds, side="left")
    diff_lt = np.searchsorted(diff_sorted, thresholds, side="left")
    return same_ge + diff_lt


def _candidate_thresholds(s: np.ndarray) -> np.ndarray:
    uniq = np.unique(s[~np.isnan(s)])
    if uniq.size == 0:
        return np.array([0.0])
    mids = (uniq[:-1] + uniq[1:]) / 2.0
    return np.concatenate(([uniq[0] - 1.0], mids, [uniq[-1] + 1.0]))


def best_threshold(scores: ArrayLike, same: ArrayLike) -> float:
    """Threshold maximising accuracy.

    Candidates are the midpoints between consecutive sorted unique finite
    scores, plus one below the minimum (accept all) and one above the maximum
    (reject all). Ties go to the lowest candidate. If every score is NaN,
    returns 0.0 (accuracy is 0 at any threshold).
    """
    s, y = _as_scores_labels(scores, same)
    cands = _candidate_thresholds(s)
    if np.isnan(s).all():
        logger.warning("best_threshold: all %d scores are NaN", s.size)
    return float(cands[int(np.argmax(_correct_counts(s, y, cands)))])


def kfold_accuracy(scores: ArrayLike, same: ArrayLike, folds: ArrayLike) -> KFoldResult:
    """Cross-validated accuracy.

    For each distinct fold value (sorted), the threshold is chosen with
    :func:`best_threshold` on all *other* folds and accuracy is measured on
    the held-out fold.

    Raises:
        ValueError: if ``folds`` has the wrong shape or fewer than 2 distinct
            values.
    """
    s, y = _as_scores_labels(scores, same)
    f = np.asarray(folds)
    if f.shape != s.shape:
        raise ValueError(f"folds must have the shape of scores {s.shape}, got {f.shape}")
    fold_ids = np.unique(f)
    if fold_ids.size < 2:
        raise ValueError(f"folds must contain at least 2 distinct values, got {fold_ids.size}")
    accs: list[float] = []
    thrs: list[float] = []
    for fid in fold_ids:
        test = f == fid
        thr = best_threshold(s[~test], y[~test])
        thrs.append(thr)
        accs.append(accuracy_at(s[test], y[test], thr))
    return KFoldResult(float(np.mean(accs)), float(np.std(accs)), accs, thrs)


def roc_curve(scores: ArrayLike, same: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve as ``(far, tar, thresholds)``, thresholds decreasing.

    ``far[i]`` / ``tar[i]`` are the fractions of different / same pairs with
    (NaN-mapped) score ``>= thresholds[i]``. The first threshold is ``+inf``
    and the last is the minimum score, so the curve ends at (1, 1); it starts
    at (0, 0) unless failed different pairs (always accepted) exist.

    Raises:
        ValueError: if both classes are not present.
    """
    s, y = _as_scores_labels(scores, same)
    _require_both_classes(y)
    r = _roc_scores(s, y)
    thr = np.unique(r)[::-1]
    if thr[0] != np.inf:
        thr = np.concatenate(([np.inf], thr))
    same_sorted = np.sort(r[y])
    diff_sorted = np.sort(r[~y])
    tar = (same_sorted.size - np.searchsorted(same_sorted, thr, side="left")) / same_sorted.size
    far = (diff_sorted.size - np.searchsorted(diff_sorted, thr, side="left")) / diff_sorted.size
    return far, tar, thr


def roc_auc(scores: ArrayLike, same: ArrayLike) -> float:
    """Area under the ROC curve (trapezoid rule, curve closed at (0, 0)).

    Equals the probability that a random same pair scores above a random
    different pair, ties counting one half (NaN mapped as for the ROC).
    """
    far, tar, _ = roc_curve(scores, same)
    far = np.concatenate(([0.0], far))
    tar = np.concatenate(([0.0], tar))
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2.0))


def tar_at_far(scores: ArrayLike, same: ArrayLike, far: float) -> tuple[float, float]:
    """Highest TAR whose FAR ``<= far``, with the threshold achieving it.

    The threshold is the smallest observed score (or ``+inf``) at which the
    fraction of different pairs with score ``>= threshold`` is at most
    ``far``. If no threshold qualifies (more failed different pairs than
    ``far`` allows), returns ``(0.0, inf)``.

    Raises:
        ValueError: if ``far`` is outside [0, 1] or both classes are not present.
    """
    if not (0.0 <= far <= 1.0):
        raise ValueError(f"far must be in [0, 1], got {far!r}")
    fars, tars, thrs = roc_curve(scores, same)
    ok = np.flatnonzero(fars <= far)
    if ok.size == 0:
        logger.warning("tar_at_far: no threshold reaches FAR <= %g (failed different pairs)", far)
        return 0.0, math.inf
    i = int(ok[-1])  # thresholds decrease, so the last qualifying one is the smallest
    return float(tars[i]), float(thrs[i])


# --------------------------------------------------------------------------- #
# Confusion helpers
# --------------------------------------------------------------------------- #


def confusion_counts(pred_same: ArrayLike, same: ArrayLike) -> dict[str, int]:
    """Counts ``tp, fp, tn, fn`` with "same person" as the positive class.

    Build ``pred_same`` with :func:`predict_same` so failed pairs count as errors.
    """
    p = np.asarray(pred_same)
    y = np.asarray(same)
    if p.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"pred_same {p.shape} and same {y.shape} must be 1-D of equal length")
    for label, arr in (("pred_same", p), ("same", y)):
        if arr.dtype != np.bool_ and not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{label} must contain only booleans or 0/1")
    p, y = p.astype(bool), y.astype(bool)
    return {
        "tp": int(np.sum(p & y)),
        "fp": int(np.sum(p & ~y)),
        "tn": int(np.sum(~p & ~y)),
        "fn": int(np.sum(~p & y)),
    }


def precision_recall_f1(pred_same: ArrayLike, same: ArrayLike) -> dict[str, float]:
    """Precision, recall and F1 for the "same person" class (0.0 where undefined)."""
    c = confusion_counts(pred_same, same)
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# --------------------------------------------------------------------------- #
# Summary
# --------------------------------------------------------------------------- #


def _json_float(x: float) -> float | None:
    """Finite floats as-is; NaN / inf become None (strict JSON)."""
    return float(x) if math.isfinite(x) else None


def summarize(
    scores: ArrayLike, same: ArrayLike, folds: ArrayLike | None = None
) -> dict[str, object]:
    """JSON-ready summary of a verification run.

    Keys: ``pairs``, ``failed_pairs`` (NaN scores), ``accuracy_mean``,
    ``accuracy_std``, ``roc_auc``, ``tar_at_far_1e-3``,
    ``threshold_at_far_1e-3``, ``best_threshold`` (on all pairs). With
    ``folds`` holding >= 2 distinct values the accuracy is k-fold
    (``folds`` key gives their number); otherwise it is the single
    best-threshold accuracy on all pairs, std 0, and ``threshold`` is added.
    Non-finite floats are reported as ``None``.
    """
    s, y = _as_scores_labels(scores, same)
    failed = int(np.isnan(s).sum())
    if failed:
        logger.info("summarize: %d of %d pairs failed (counted as errors)", failed, s.size)
    best = best_threshold(s, y)
    out: dict[str, object] = {"pairs": int(s.size), "failed_pairs": failed}
    if folds is not None and np.unique(np.asarray(folds)).size >= 2:
        k = kfold_accuracy(s, y, folds)
        out.update(accuracy_mean=k.mean, accuracy_std=k.std, folds=len(k.fold_accuracies))
    else:
        out.update(accuracy_mean=accuracy_at(s, y, best), accuracy_std=0.0, threshold=best)
    tar, thr = tar_at_far(s, y, 1e-3)
    out.update(
        {
            "roc_auc": roc_auc(s, y),
            "tar_at_far_1e-3": tar,
            "threshold_at_far_1e-3": _json_float(thr),
            "best_threshold": best,
        }
    )
    return out


def cosine_stats(a: npt.ArrayLike, b: npt.ArrayLike) -> dict:
    """Row-wise cosine similarity of two embedding sets (each row L2-normalized here): how closely a
    converted model reproduces its reference.

    Returns ``{"mean", "p1" (1st percentile: the worst 1% of faces), "min", "n"}``, rounded to 5 digits.
    """
    from .embed import l2_normalize

    cos = np.sum(l2_normalize(np.asarray(a, np.float64)) * l2_normalize(np.asarray(b, np.float64)), axis=-1)
    return {"mean": round(float(cos.mean()), 5), "p1": round(float(np.percentile(cos, 1)), 5),
            "min": round(float(cos.min()), 5), "n": int(cos.size)}
