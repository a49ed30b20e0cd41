"""Verification accuracy of every model variant, beyond a single LFW accuracy number.

For each variant (precision x detector), with the real pipeline (detect, crop, embed; a photo whose face is not
found makes its pairs errors, as in ``edgeface eval``):

* LFW 10-fold accuracy on ``pairs.txt`` (threshold chosen on the other nine folds);
* ``pairsDevTest.txt`` accuracy at the manifest's thresholds, which were calibrated on ``pairsDevTrain.txt``
  (an honest held-out number), plus the best-threshold accuracy (optimistic, for reference);
* ROC AUC; TAR at FAR 1e-3 and 1e-4 with their thresholds. ``pairs.txt`` has only 3,000 impostor pairs, which
  cannot resolve FAR 1e-4, so impostor scores come from up to ``impostor_pairs`` random pairs of different
  people among the same images (faces found); genuine scores are the same-person pairs of ``pairs.txt``;
* an operating-point table (threshold -> TAR, FAR) a door installer can pick a threshold from;
* ROC and DET plots.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np

from . import common

log = logging.getLogger(__name__)


def variant_embeddings(variant: common.Variant, files: list[Path], out: Path, cache: bool,
                       show_progress: bool, tag: str = "plain") -> dict:
    rec = variant.recognizer()
    cache_file = out / "cache" / f"emb_{variant.key()}_{tag}.npz" if cache else None
    return common.embed_paths(rec, files, cache_file, desc=f"embed {variant.name}", show_progress=show_progress)


def impostor_scores(embeddings: dict, count: int, seed: int = 0) -> np.ndarray:
    """Cosine similarities of up to ``count`` random pairs of images of different people (faces found)."""
    items = [(p.parent.name, e) for p, e in sorted(embeddings.items()) if e is not None]
    if len(items) < 2:
        return np.zeros(0)
    ids = np.array([n for n, _ in items])
    mat = np.stack([e for _, e in items]).astype(np.float32)
    rng = np.random.default_rng(seed)
    n = len(items)
    total = n * (n - 1) // 2
    if total <= count:
        i, j = np.triu_indices(n, 1)
    else:
        i, j = rng.integers(0, n, size=(2, int(count * 1.05) + 16))
        keep = i != j
        i, j = i[keep], j[keep]
    keep = ids[i] != ids[j]
    i, j = i[keep][:count], j[keep][:count]
    out = np.empty(len(i), np.float32)
    for s in range(0, len(i), 200_000):
        out[s:s + 200_000] = np.einsum("ij,ij->i", mat[i[s:s + 200_000]], mat[j[s:s + 200_000]])
    return out


def operating_points(genuine: np.ndarray, impostor: np.ndarray, far_targets, manifest_points: dict) -> list[dict]:
    """Rows of (source, threshold, TAR, FAR, FRR). Genuine NaN (face not found) is a false reject."""
    from edgeface import evaluate

    scores = np.concatenate([genuine, impostor])
    same = np.concatenate([np.ones(len(genuine), bool), np.zeros(len(impostor), bool)])
    rows = []
    g = np.where(np.isnan(genuine), -np.inf, genuine)
    for far in far_targets:
        tar, thr = evaluate.tar_at_far(scores, same, far)
        measured = float(np.mean(impostor >= thr)) if math.isfinite(thr) else 0.0
        rows.append({"source": f"FAR target {far:g}", "threshold": thr if math.isfinite(thr) else None,
                     "tar": tar, "far": measured, "frr": 1 - tar,
                     "resolvable": bool(len(impostor) * far >= 10)})
    for name, thr in manifest_points.items():
        tar = float(np.mean(g >= thr))
        rows.append({"source": f"manifest {name}", "threshold": thr, "tar": tar,
                     "far": float(np.mean(impostor >= thr)), "frr": 1 - tar, "resolvable": True})
    return rows


def manifest_thresholds(embedder_manifest: dict) -> dict:
    sec = embedder_manifest["embedder"]
    points = {"accuracy (default)": float(sec["min_cosine_similarity"])}
    for name, op in sorted(sec.get("operating_points", {}).items()):
        points[name] = float(op["min_cosine_similarity"])
    return points


def run(models: Path, lfw: Path, settings: dict, out: Path, cache: bool = True, show_progress: bool = True) -> dict:
    from edgeface import evaluate
    from edgeface.lfw import pair_files, pair_scores
    from edgeface.manifest import read_manifest

    lfw = Path(lfw)
    out = Path(out)
    variants, notes = common.model_variants(models, settings["precisions"], settings["detectors"])
    if not variants:
        raise common.BenchmarkError(f"no model variants found in {models}")
    pairs10 = common.subset_pairs(evaluate.read_pairs(lfw / "pairs.txt"), settings.get("pairs_per_fold_class"))
    dev = evaluate.read_pairs(lfw / "pairsDevTest.txt")
    if settings.get("pairs_per_fold_class"):
        dev = common.subset_pairs(dev, settings["pairs_per_fold_class"] * 2)
    files = sorted(set(pair_files(pairs10, lfw)) | set(pair_files(dev, lfw)))
    results, embedded = [], {}
    for v in variants:
        emb = variant_embeddings(v, files, out, cache, show_progress)
        embedded[v.name] = emb
        s10 = pair_scores(pairs10, emb, lfw)
        y10 = np.array([p.same for p in pairs10])
        folds = np.array([p.fold for p in pairs10])
        k = evaluate.kfold_accuracy(s10, y10, folds)
        sdev = pair_scores(dev, emb, lfw)
        ydev = np.array([p.same for p in dev])
        mpoints = manifest_thresholds(read_manifest(v.embedder, verify_hash=False))
        found = {p: emb[p] for p in pair_files(pairs10, lfw)}
        imp = impostor_scores(found, int(settings["impostor_pairs"]))
        genuine = s10[y10]
        far_t = settings.get("far_targets", [0.1, 0.01, 0.001, 0.0001])
        ops = operating_points(genuine, imp, far_t, mpoints)
        tar3 = next(r for r in ops if r["source"] == "FAR target 0.001")
        tar4 = next((r for r in ops if r["source"] == "FAR target 0.0001"), None)
        results.append({
            "variant": v.name, "precision": v.precision, "detector": v.detector.name,
            "detector_models": [p.name for p in v.detector_files], "embedder": v.embedder.name,
            "images": len(files), "images_without_face": sum(e is None for e in emb.values()),
            "lfw_10fold": {"pairs": len(pairs10), "accuracy_mean": k.mean, "accuracy_std": k.std,
                           "roc_auc": evaluate.roc_auc(s10, y10), "failed_pairs": int(np.isnan(s10).sum())},
            "devtest": {"pairs": len(dev),
                        "accuracy_at_manifest_threshold": evaluate.accuracy_at(sdev, ydev,
                                                                               mpoints["accuracy (default)"]),
                        "manifest_threshold": mpoints["accuracy (default)"],
                        "best_threshold_accuracy_optimistic": evaluate.accuracy_at(
                            sdev, ydev, evaluate.best_threshold(sdev, ydev)),
                        "roc_auc": evaluate.roc_auc(sdev, ydev), "failed_pairs": int(np.isnan(sdev).sum())},
            "impostor_pairs": int(len(imp)), "genuine_pairs": int(len(genuine)),
            "tar_at_far_1e-3": tar3["tar"], "threshold_at_far_1e-3": tar3["threshold"],
            "tar_at_far_1e-4": tar4["tar"] if tar4 else None,
            "threshold_at_far_1e-4": tar4["threshold"] if tar4 else None,
            "operating_points": ops,
            "_curve": _curve(genuine, imp),
        })
    lazy = []
    for v in variants:  # a flipped variant and its _noflip twin: what flipping only near the threshold decides
        twin = next((w for w in variants if w.embedder == v.embedder and w.detector == v.detector
                     and w.flip is False and w.name.startswith(v.precision_name + common.NOFLIP)), None)
        manifest = read_manifest(v.embedder, verify_hash=False)["embedder"]
        if v.flip is None and manifest.get("flip") and twin is not None:
            lazy += lazy_flip_agreement(embedded[v.name], embedded[twin.name], pairs10, lfw,
                                        manifest_thresholds({"embedder": manifest}), manifest.get("flip_band"),
                                        v.name)
    return {"benchmark": "accuracy", "machine": common.machine_info(), "settings": settings, "notes": notes,
            "variants": results, "lazy_flip": lazy}


def lazy_flip_agreement(flipped: dict, single: dict, pairs, lfw: Path, thresholds: dict,
                        band: Optional[float], variant: str) -> list[dict]:
    """Decisions of the device's path (:func:`edgeface.recognizer.identify_crop`) on verification pairs, per
    manifest threshold: the first image enrolled flipped, the second judged on one model run and mirrored
    only within ``band`` of the threshold; against flipping both (what the thresholds were calibrated for)
    and flipping neither. Errors count missed faces as rejects."""
    from edgeface.gallery import Match
    from edgeface.lfw import pair_scores
    from edgeface.recognizer import needs_mirror

    band = float("inf") if band is None else float(band)
    same = np.array([p.same for p in pairs])
    full = pair_scores(pairs, flipped, lfw)
    one_run = pair_scores(pairs, flipped, lfw, second=single)
    neither = pair_scores(pairs, single, lfw)
    out = []
    for name, thr in thresholds.items():
        # the device's own rule (a verification pair has no runner-up): one place decides when to mirror
        mirrored = np.array([needs_mirror([Match(None, float(v))], thr, band) for v in one_run], bool)
        lazy = np.where(mirrored, full, one_run)

        def errors(s, thr=thr):
            return int(np.sum(np.where(np.isnan(s), False, s >= thr) != same))

        out.append({"variant": variant, "threshold_from": name, "threshold": thr, "band": band,
                    "pairs": len(pairs), "mirrored_share": float(np.mean(mirrored)),
                    "decisions_unlike_full_flip": int(np.sum((lazy >= thr) != (full >= thr))),
                    "errors_near_threshold_flip": errors(lazy), "errors_full_flip": errors(full),
                    "errors_no_flip": errors(neither)})
    return out


def _curve(genuine: np.ndarray, impostor: np.ndarray, points: int = 400) -> dict:
    """A downsampled ROC (FAR, TAR) for plots: thresholds at impostor-score quantiles on a log grid."""
    g = np.where(np.isnan(genuine), -np.inf, genuine)
    imp = np.sort(impostor)[::-1]
    if imp.size == 0:
        return {"far": [], "tar": []}
    fars = np.unique(np.concatenate([np.geomspace(1.0 / imp.size, 1.0, points)]))
    thr = imp[np.clip((fars * imp.size).astype(int) - 1, 0, imp.size - 1)]
    tar = [float(np.mean(g >= t)) for t in thr]
    far = [float(np.mean(imp >= t)) for t in thr]
    return {"far": far, "tar": tar}


def markdown(result: dict) -> str:
    lines = [common.header("Verification accuracy", result["machine"])]
    rows = []
    for r in result["variants"]:
        rows.append([r["variant"],
                     f"{100 * r['lfw_10fold']['accuracy_mean']:.2f} ± {100 * r['lfw_10fold']['accuracy_std']:.2f}",
                     round(r["lfw_10fold"]["roc_auc"], 4),
                     f"{100 * r['devtest']['accuracy_at_manifest_threshold']:.2f}",
                     f"{100 * r['devtest']['best_threshold_accuracy_optimistic']:.2f}",
                     r["tar_at_far_1e-3"], r["threshold_at_far_1e-3"], r["tar_at_far_1e-4"],
                     r["threshold_at_far_1e-4"], f"{r['images_without_face']}/{r['images']}"])
    lines.append(common.md_table(["variant", "LFW 10-fold %", "AUC", "DevTest % @ manifest thr",
                                  "DevTest % best thr (optimistic)", "TAR@FAR1e-3", "thr", "TAR@FAR1e-4", "thr",
                                  "no face"], rows))
    lines.append(f"\nTAR: the {result['variants'][0]['genuine_pairs']} same-person pairs of pairs.txt "
                 "(a missed face is "
                 f"a reject); FAR: {result['variants'][0]['impostor_pairs']:,} random different-person pairs of the "
                 "same images.\n")
    for r in result["variants"]:
        lines.append(f"\n### Operating points: {r['variant']} ({r['embedder']})\n")
        lines.append(common.md_table(
            ["threshold from", "min_cosine_similarity", "TAR", "FAR", "FRR"],
            [[o["source"] + ("" if o["resolvable"] else " (too few impostors)"),
              None if o["threshold"] is None else round(o["threshold"], 4), round(o["tar"], 4),
              f"{o['far']:.2e}", round(o["frr"], 4)] for o in r["operating_points"]]))
    if result.get("lazy_flip"):
        lines.append("\n### Test-time flip near the threshold only (the device's decision path)\n")
        lines.append("pairs.txt, the first image enrolled flipped, the second judged on one model run and mirrored "
                     "only when that score is within the manifest's `flip_band` of the threshold:\n")
        lines.append(common.md_table(
            ["variant", "threshold from", "threshold", "band", "mirrored", "decisions unlike full flip",
             "errors: near-threshold flip", "full flip", "no flip"],
            [[r["variant"], r["threshold_from"], round(r["threshold"], 4), r["band"],
              f"{100 * r['mirrored_share']:.1f} %", f"{r['decisions_unlike_full_flip']} of {r['pairs']}",
              r["errors_near_threshold_flip"], r["errors_full_flip"], r["errors_no_flip"]]
             for r in result["lazy_flip"]]))
    if result["notes"]:
        lines.append(common.notes_markdown(result["notes"]))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    from scipy.stats import norm

    plt = common.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for r in result["variants"]:
        far, tar = np.array(r["_curve"]["far"]), np.array(r["_curve"]["tar"])
        if far.size == 0:
            continue
        a.semilogx(np.maximum(far, 1e-7), tar, label=r["variant"])
        ok = (far > 0) & (far < 1) & (tar > 0) & (tar < 1)
        b.plot(norm.ppf(far[ok]), norm.ppf(1 - tar[ok]), label=r["variant"])
    a.set_xlabel("FAR (false accept rate)")
    a.set_ylabel("TAR")
    a.set_title("ROC on LFW", fontsize=9)
    a.grid(alpha=0.3)
    a.legend(fontsize=7)
    ticks = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]
    b.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    b.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    b.set_xlabel("FMR (false match rate)")
    b.set_ylabel("FNMR (false non-match rate)")
    b.set_title("DET", fontsize=9)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
