"""Tests for edgeface.evaluate (synthetic scores + the real LFW pair lists)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from edgeface import evaluate as ev

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGEFACE_DATA", REPO.parent / "shared" / "data"))
LFW = DATA / "lfw"


def _lfw_file(name: str) -> Path:
    path = LFW / name
    if not path.is_file():
        pytest.skip(f"LFW data not found at {path} (set EDGEFACE_DATA)")
    return path


def _pairwise_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """P(random same pair scores above random different pair), ties = 1/2."""
    pos, neg = scores[same][:, None], scores[~same][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


# ---------------------------------------------------------------- metrics


def test_perfect_separation() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    same = np.array([True, True, True, False, False, False])
    thr = ev.best_threshold(scores, same)
    assert 0.3 < thr < 0.7
    assert ev.accuracy_at(scores, same, thr) == 1.0
    assert ev.roc_auc(scores, same) == 1.0
    assert ev.tar_at_far(scores, same, 0.0) == (1.0, 0.7)


def test_reversed_auc_zero() -> None:
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    same = np.array([True, True, False, False])
    assert ev.roc_auc(scores, same) == 0.0


def test_accuracy_threshold_is_inclusive() -> None:
    assert ev.accuracy_at([0.5, 0.4], [True, False], 0.5) == 1.0
    assert ev.accuracy_at([0.5, 0.4], [True, False], 0.50001) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_pairwise_probability(seed: int) -> None:
    rng = np.random.default_rng(seed)
    same = rng.random(400) < 0.5
    # rounding creates many ties, which must count one half
    scores = np.round(rng.normal(same * 0.7, 1.0), 1)
    assert abs(ev.roc_auc(scores, same) - _pairwise_auc(scores, same)) < 1e-9


def test_auc_with_nan_matches_pairwise_with_inf_mapping() -> None:
    rng = np.random.default_rng(3)
    same = rng.random(300) < 0.5
    scores = rng.normal(same * 1.0, 1.0)
    scores[rng.choice(300, 30, replace=False)] = np.nan
    mapped = np.where(np.isnan(scores), np.where(same, -np.inf, np.inf), scores)
    assert abs(ev.roc_auc(scores, same) - _pairwise_auc(mapped, same)) < 1e-9
    # failures are the worst case: filling them with any value can only raise AUC
    assert ev.roc_auc(scores, same) < ev.roc_auc(np.nan_to_num(scores, nan=0.5), same)


def test_nan_pairs_always_wrong() -> None:
    scores = np.array([0.9, np.nan, 0.1, np.nan])
    same = np.array([True, True, False, False])
    for thr in (-10.0, 0.0, 0.5, 0.95, 10.0):
        assert ev.accuracy_at(scores, same, thr) <= 0.5
    assert ev.accuracy_at(scores, same, ev.best_threshold(scores, same)) == 0.5
    pred = ev.predict_same(scores, same, 0.5)
    assert ev.confusion_counts(pred, same) == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    # ROC: NaN different pair is always accepted -> FAR never below 1/2
    far, tar, _ = ev.roc_curve(scores, same)
    assert far.min() == 0.5 and tar.max() == 1.0
    assert ev.tar_at_far(scores, same, 0.1) == (0.0, math.inf)
    summary = ev.summarize(scores, same)
    assert summary["failed_pairs"] == 2 and summary["accuracy_mean"] == 0.5
    assert summary["threshold_at_far_1e-3"] is None
    json.dumps(summary, allow_nan=False)


def test_all_nan_scores() -> None:
    scores = np.full(4, np.nan)
    same = np.array([True, False, True, False])
    assert ev.accuracy_at(scores, same, ev.best_threshold(scores, same)) == 0.0


def test_kfold_threshold_chosen_on_other_folds() -> None:
    # Folds 1 and 2 separate at 0.5; the larger fold 3 separates only at ~0.85,
    # which is also the best threshold on all data -- so fold 3 must be scored
    # with the threshold learnt on folds 1+2, not its own nor the global one.
    small = [0.6, 0.7, 0.3, 0.4]
    big = [0.9, 0.95, 0.92, 0.97, 0.88, 0.91, 0.8, 0.75, 0.78, 0.79, 0.81, 0.7]
    scores = np.array(small * 2 + big)
    same = np.array([1, 1, 0, 0] * 2 + [1] * 6 + [0] * 6, dtype=bool)
    folds = np.repeat([1, 2, 3], [4, 4, 12])
    f3 = folds == 3
    own = ev.best_threshold(scores[f3], same[f3])
    assert ev.accuracy_at(scores[f3], same[f3], own) == 1.0
    assert ev.best_threshold(scores, same) == own
    res = ev.kfold_accuracy(scores, same, folds)
    others = ev.best_threshold(scores[~f3], same[~f3])
    assert 0.4 < others < 0.6
    assert res.thresholds[2] == others
    assert res.fold_accuracies[2] == 0.5
    assert res.fold_accuracies[:2] == [0.5, 0.5]  # folds 1, 2 scored at ~0.85
    assert res.mean == pytest.approx(0.5)
    assert res.std == pytest.approx(0.0)


def test_kfold_needs_two_folds() -> None:
    with pytest.raises(ValueError, match="folds"):
        ev.kfold_accuracy([0.1, 0.9], [False, True], [0, 0])


def test_tar_at_far_monotonic() -> None:
    rng = np.random.default_rng(4)
    same = rng.random(2000) < 0.5
    scores = rng.normal(same * 1.5, 1.0)
    levels = [0.0, 1e-3, 1e-2, 0.05, 0.1, 0.3, 1.0]
    results = [ev.tar_at_far(scores, same, f) for f in levels]
    tars = [t for t, _ in results]
    thrs = [t for _, t in results]
    assert tars == sorted(tars) and thrs == sorted(thrs, reverse=True)
    assert tars[-1] == 1.0
    diff = scores[~same]
    for f, (tar, thr) in zip(levels, results):
        assert np.mean(diff >= thr) <= f
        assert tar == np.mean(scores[same] >= thr)
        # any observed score below thr would break the FAR bound
        lower = scores[scores < thr]
        if lower.size:
            assert np.mean(diff >= lower.max()) > f


def test_summarize_keys_and_modes() -> None:
    rng = np.random.default_rng(5)
    same = np.tile(np.repeat([True, False], 50), 4)
    scores = rng.normal(same * 2.0, 1.0)
    folds = np.repeat(np.arange(4), 100)
    k = ev.summarize(scores, same, folds)
    single = ev.summarize(scores, same)
    for s in (k, single):
        for key in ("pairs", "failed_pairs", "accuracy_mean", "accuracy_std", "roc_auc",
                    "tar_at_far_1e-3", "threshold_at_far_1e-3", "best_threshold"):
            assert key in s
        json.dumps(s, allow_nan=False)
    assert k["folds"] == 4 and "threshold" not in k
    res = ev.kfold_accuracy(scores, same, folds)
    assert k["accuracy_mean"] == res.mean == pytest.approx(np.mean(res.fold_accuracies))
    assert k["accuracy_std"] == pytest.approx(np.std(res.fold_accuracies)) and res.std > 0
    assert single["threshold"] == single["best_threshold"] and single["accuracy_std"] == 0.0
    assert ev.summarize(scores, same, np.zeros(400))["accuracy_std"] == 0.0


def test_precision_recall_f1() -> None:
    r = ev.precision_recall_f1([True, True, False, False], [True, False, True, False])
    assert r == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert ev.precision_recall_f1([False, False], [True, False])["f1"] == 0.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same"):
        ev.accuracy_at([0.1, 0.2], [True], 0.5)
    with pytest.raises(ValueError, match="same"):
        ev.roc_auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="far"):
        ev.tar_at_far([0.1, 0.2], [True, False], 2.0)


# ---------------------------------------------------------------- pair files


def test_read_pairs_real_10fold() -> None:
    pairs = ev.read_pairs(_lfw_file("pairs.txt"))
    assert len(pairs) == 6000
    assert sorted({p.fold for p in pairs}) == list(range(1, 11))
    assert sum(p.same for p in pairs) == 3000
    assert all((p.name1 == p.name2) for p in pairs if p.same)
    assert pairs[0] == ev.Pair("Abel_Pacheco", 1, "Abel_Pacheco", 4, True, 1)
    # errata in the README: Jim_OBrien 1-2 is in fold 5
    assert any(p.name1 == "Jim_OBrien" and (p.n1, p.n2) == (1, 2) and p.fold == 5 for p in pairs)


def test_read_pairs_real_dev_and_images_exist() -> None:
    pairs = ev.read_pairs(_lfw_file("pairsDevTest.txt"))
    assert len(pairs) == 1000
    assert sum(p.same for p in pairs) == 500 and {p.fold for p in pairs} == {0}
    missing = [
        path
        for p in pairs
        for path in (ev.lfw_image_path(LFW, p.name1, p.n1), ev.lfw_image_path(LFW, p.name2, p.n2))
        if not path.is_file()
    ]
    assert missing == []
    # the images folder itself is accepted as root
    p = pairs[0]
    assert ev.lfw_image_path(LFW / "images_deepfunneled", p.name1, p.n1) == \
        ev.lfw_image_path(LFW, p.name1, p.n1)


def test_lfw_image_path_format(tmp_path: Path) -> None:
    (tmp_path / "images_deepfunneled").mkdir()
    assert ev.lfw_image_path(tmp_path, "A_B", 7) == tmp_path / "images_deepfunneled/A_B/A_B_0007.jpg"
    with pytest.raises(ValueError, match="n"):
        ev.lfw_image_path(tmp_path, "A_B", 0)
    with pytest.raises(ValueError, match="name"):
        ev.lfw_image_path(tmp_path, "../x", 1)


def test_read_pairs_synthetic_formats(tmp_path: Path) -> None:
    f = tmp_path / "dev.txt"
    f.write_text("2\nA\t1\t2\nB\t3\t4\nA\t1\tC\t2\nB\t2\tD\t1\n")
    pairs = ev.read_pairs(f)
    assert [p.same for p in pairs] == [True, True, False, False]
    assert pairs[2] == ev.Pair("A", 1, "C", 2, False, 0)
    g = tmp_path / "folds.txt"
    g.write_text("2 1\nA 1 2\nA 1 C 2\nB 3 4\nB 2 D 1\n")
    assert [p.fold for p in ev.read_pairs(g)] == [1, 1, 2, 2]


@pytest.mark.parametrize(
    "text, line",
    [
        ("2\nA 1 2\nB 3 4 5\nA 1 C 2\nB 2 D 1\n", 3),   # same line with 4 fields
        ("2\nA 1 2\nB 3 4\nA 1 C\nB 2 D 1\n", 4),       # different line with 3 fields
        ("2\nA 1 x\nB 3 4\nA 1 C 2\nB 2 D 1\n", 2),     # non-integer image number
        ("2\nA 1 2\nB 3 4\nA 1 C 2\n", 4),              # too few lines
        ("1\nA 1 2\nA 1 C 2\nB 2 3\n", 4),               # extra line
        ("a b c\nA 1 2\n", 1),                          # bad header
    ],
)
def test_read_pairs_malformed(tmp_path: Path, text: str, line: int) -> None:
    f = tmp_path / "bad.txt"
    f.write_text(text)
    with pytest.raises(ValueError, match=rf"bad\.txt:{line}:"):
        ev.read_pairs(f)


def test_first_pairs_takes_both_kinds():
    pairs = [ev.Pair("a", 1, "a", 2, True, 1)] * 5 + [ev.Pair("a", 1, "b", 1, False, 1)] * 5
    picked = ev.first_pairs(pairs, 5)
    assert [p.same for p in picked] == [True, True, False, False, False]
    assert ev.first_pairs(pairs, None) == pairs
    with pytest.raises(ValueError, match="limit"):
        ev.first_pairs(pairs, 1)


def test_pair_scores_with_separate_second_image_embeddings(tmp_path) -> None:
    from edgeface.lfw import pair_scores

    pairs = [ev.Pair("A", 1, "A", 2, True, 0), ev.Pair("A", 1, "B", 1, False, 0)]
    path = lambda n, k: ev.lfw_image_path(tmp_path, n, k)  # noqa: E731 - a one-line local helper
    e = np.eye(3, dtype=np.float32)
    clean = {path("A", 1): e[0], path("A", 2): e[0], path("B", 1): e[1]}
    probe = {path("A", 2): e[1], path("B", 1): None}
    np.testing.assert_allclose(pair_scores(pairs, clean, tmp_path), [1.0, 0.0])
    same_probe = pair_scores(pairs, clean, tmp_path, second=probe)
    assert same_probe[0] == pytest.approx(0.0) and math.isnan(same_probe[1])  # the probe's face was not found


def test_read_people_skips_the_header_and_malformed_lines_and_names_an_unreadable_file(tmp_path):
    from edgeface.evaluate import PairsFileError, read_people

    p = tmp_path / "peopleDevTrain.txt"
    p.write_text("3\nAaron_Peirsol\t4\n\nbroken line here\nAbel_Pacheco 2\nNo_Count x\n")
    assert read_people(p) == [("Aaron_Peirsol", 4), ("Abel_Pacheco", 2)]
    with pytest.raises(PairsFileError, match="missing.txt: cannot read the people file"):
        read_people(tmp_path / "missing.txt")
