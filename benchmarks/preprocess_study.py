"""Does histogram equalization, CLAHE or gamma correction help on dark or low-contrast faces?

LFW pairs are degraded synthetically on the *second* image of every pair (the probe at the door; the first
stands for the enrollment photo, taken in good light), then an enhancement is applied to *both* images, as a
pipeline option would. Measured per (degradation, enhancement): accuracy at the manifest's threshold
(calibrated on clean DevTrain pairs: what a device would use), best-threshold accuracy (optimistic), ROC AUC,
and probes whose face was not found.

Degradations: ``dark`` (gamma 2.2 then x0.35: an unlit hallway), ``low_contrast`` (pixel values squeezed to 30%
around 128: haze, backlight), both together. Enhancements: ``equalize`` (histogram equalization of the luma),
``clahe`` (contrast-limited adaptive equalization of the LAB lightness, clip 2, 8x8 tiles), ``gamma`` (automatic
gamma that brings the mean luma to 0.5).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import common

log = logging.getLogger(__name__)


def degrade(image: np.ndarray, kind: str) -> np.ndarray:
    x = image.astype(np.float32) / 255.0
    if kind in ("dark", "dark_low_contrast"):
        x = 0.35 * x ** 2.2
    if kind in ("low_contrast", "dark_low_contrast"):
        x = x.mean() + 0.3 * (x - x.mean())
    if kind not in ("none", "dark", "low_contrast", "dark_low_contrast"):
        raise ValueError(f"unknown degradation {kind!r}")
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def enhance(image: np.ndarray, kind: str) -> np.ndarray:
    """The pipeline's own option (:func:`edgeface.preprocess.enhance`): the study measures what devices run."""
    from edgeface.preprocess import enhance as core_enhance

    return core_enhance(image, kind)


def run(models: Path, lfw: Path, settings: dict, out: Path, cache: bool = True, show_progress: bool = True) -> dict:
    from edgeface import evaluate
    from edgeface.lfw import pair_scores
    from edgeface.manifest import read_manifest

    lfw = Path(lfw)
    pairs = evaluate.read_pairs(lfw / settings["pairs_file"])
    if settings.get("pairs"):
        n = settings["pairs"]
        pairs = [p for p in pairs if p.same][:n] + [p for p in pairs if not p.same][:n]
    variants, notes = common.model_variants(models, [settings["precision"]])
    if not variants:
        raise common.BenchmarkError(f"no {settings['precision']} models in {models}")
    v = variants[0]
    rec = v.recognizer()
    thr = float(read_manifest(v.embedder, verify_hash=False)["embedder"]["min_cosine_similarity"])
    same = np.array([p.same for p in pairs])
    firsts = sorted({evaluate.lfw_image_path(lfw, p.name1, p.n1) for p in pairs})
    seconds = sorted({evaluate.lfw_image_path(lfw, p.name2, p.n2) for p in pairs})
    rows = []
    for enh in settings["enhancements"]:
        cache_dir = Path(out) / "cache" if cache else None
        key = v.key()
        clean = common.embed_paths(rec, firsts, cache_dir / f"emb_{key}_none_{enh}.npz" if cache_dir else None,
                                   transform=lambda im, e=enh: enhance(im, e), desc=f"{enh} clean",
                                   show_progress=show_progress)
        for deg in settings["degradations"]:
            probe = common.embed_paths(rec, seconds, cache_dir / f"emb_{key}_{deg}_{enh}.npz" if cache_dir else None,
                                       transform=lambda im, d=deg, e=enh: enhance(degrade(im, d), e),
                                       desc=f"{enh} {deg}", show_progress=show_progress)
            s = pair_scores(pairs, clean, lfw, second=probe)
            rows.append({"degradation": deg, "enhancement": enh,
                         "accuracy_at_manifest_threshold": evaluate.accuracy_at(s, same, thr),
                         "best_accuracy_optimistic": evaluate.accuracy_at(s, same, evaluate.best_threshold(s, same)),
                         "roc_auc": evaluate.roc_auc(s, same),
                         "probes_without_face": sum(e is None for e in probe.values()), "probes": len(seconds)})
    helps = {}
    for deg in settings["degradations"]:
        base = next(r for r in rows if r["degradation"] == deg and r["enhancement"] == "none")
        best = max((r for r in rows if r["degradation"] == deg), key=lambda r: r["accuracy_at_manifest_threshold"])
        helps[deg] = {"best": best["enhancement"],
                      "gain_points": round(100 * (best["accuracy_at_manifest_threshold"]
                                                  - base["accuracy_at_manifest_threshold"]), 2)}
    return {"benchmark": "preprocess", "machine": common.machine_info(), "settings": settings, "notes": notes,
            "pairs": len(pairs), "threshold": thr, "variant": v.name, "rows": rows, "best_per_degradation": helps}


def markdown(result: dict) -> str:
    lines = [common.header("Pre-processing study: degraded LFW probes", result["machine"],
                           f"{result['pairs']} pairs of {result['settings']['pairs_file']}, "
                           f"{result['variant']} models, "
                           f"manifest threshold {result['threshold']}.")]
    lines.append(common.md_table(
        ["degradation", "enhancement", "accuracy % @ manifest thr", "best-thr accuracy % (optimistic)", "ROC AUC",
         "probes without face"],
        [[r["degradation"], r["enhancement"], f"{100 * r['accuracy_at_manifest_threshold']:.2f}",
          f"{100 * r['best_accuracy_optimistic']:.2f}", round(r["roc_auc"], 4),
          f"{r['probes_without_face']}/{r['probes']}"] for r in result["rows"]]))
    lines.append("\nBest enhancement per degradation (accuracy at the manifest threshold): " + "; ".join(
        f"{d}: {h['best']} ({h['gain_points']:+.2f} points)" for d, h in result["best_per_degradation"].items()))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    plt = common.pyplot()
    degs = list(dict.fromkeys(r["degradation"] for r in result["rows"]))
    enhs = list(dict.fromkeys(r["enhancement"] for r in result["rows"]))
    fig, ax = plt.subplots(figsize=(6, 3))
    w = 0.8 / len(enhs)
    for j, e in enumerate(enhs):
        vals = [100 * next(r["accuracy_at_manifest_threshold"] for r in result["rows"]
                           if r["degradation"] == d and r["enhancement"] == e) for d in degs]
        ax.bar(np.arange(len(degs)) + j * w, vals, w, label=e)
    ax.set_xticks(np.arange(len(degs)) + w * (len(enhs) - 1) / 2, degs, fontsize=8)
    ax.set_ylabel("accuracy % at manifest threshold")
    ax.set_ylim(50, 100)
    ax.legend(fontsize=7, ncol=len(enhs))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
