"""Closed- and open-set identification on LFW: who is this, among N enrolled people, or nobody?

* Gallery: every person with at least ``min_images`` LFW photos, enrolled from their first k photos (sorted
  file names; k = 1, 3, 5). A photo without a detected face enrolls nothing.
* Probes: their other photos (a probe whose face is not found is a miss: it names nobody).
* Distractors (open set): one photo each of people with a single LFW photo; they must be rejected.

Closed set: top-1 and top-5 accuracy of nearest-gallery cosine (a person's score is the best of their enrolled
embeddings, exactly as :meth:`edgeface.Gallery.match`), against scikit-learn classifiers trained on the same
enrolled embeddings (linear SVM, k-NN with cosine distance); per-identity precision / recall / F1 and a
confusion-matrix heatmap of the identities with most probes. Open set: FPIR (distractors accepted as someone)
and FNIR (enrolled probes not named correctly) at the manifest's thresholds and at FPIR targets.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import common
from .accuracy import manifest_thresholds, variant_embeddings

log = logging.getLogger(__name__)
NO_FACE = "<no face>"
UNKNOWN = "<unknown>"


def split(people: dict[str, list[Path]], settings: dict) -> tuple[dict, list[Path]]:
    enrolled = {n: f for n, f in people.items() if len(f) >= settings["min_images"]}
    singles = [f[0] for n, f in people.items() if len(f) == 1]
    limit = settings.get("distractors")
    if limit:
        singles = singles[:: max(1, len(singles) // limit)][:limit]
    return enrolled, singles


def nearest(templates: np.ndarray, owners: np.ndarray, names: list[str],
            query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: people sorted by their best template similarity (indices into ``names``) and those scores."""
    sims = query @ templates.T                                        # (q, t)
    per_person = np.full((len(query), len(names)), -np.inf, np.float32)
    for p in range(len(names)):
        cols = owners == p
        if cols.any():
            per_person[:, p] = sims[:, cols].max(axis=1)
    order = np.argsort(-per_person, axis=1, kind="stable")
    return order, np.take_along_axis(per_person, order, axis=1)


def run(models: Path, lfw: Path, settings: dict, out: Path, cache: bool = True, show_progress: bool = True) -> dict:
    from sklearn.metrics import precision_recall_fscore_support
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC

    from edgeface.manifest import read_manifest

    variants, notes = common.model_variants(models, settings["precisions"])
    if not variants:
        raise common.BenchmarkError(f"no models of {settings['precisions']} in {models}")
    enrolled, distractors = split(common.lfw_people(lfw), settings)
    if len(enrolled) < 2:
        raise common.BenchmarkError(f"fewer than 2 LFW people have >= {settings['min_images']} images")
    max_probes = settings.get("max_probes_per_person")
    kmax = max(settings["enroll_k"])
    files = list(distractors)
    for fs in enrolled.values():
        files += fs[:kmax + max_probes] if max_probes else fs
    results = []
    for v in variants:
        emb = variant_embeddings(v, sorted(set(files)), Path(out), cache, show_progress)
        thresholds = manifest_thresholds(read_manifest(v.embedder, verify_hash=False))
        names = sorted(enrolled)
        dim = next(e for e in emb.values() if e is not None).shape[0]
        d_emb = np.stack([emb[f] for f in distractors if emb[f] is not None]) if distractors else np.zeros((0, dim))
        per_k = []
        for k in settings["enroll_k"]:
            t_emb, t_own, p_emb, p_true, p_ok = [], [], [], [], []
            for i, n in enumerate(names):
                fs = enrolled[n]
                probes = fs[kmax:kmax + max_probes] if max_probes else fs[kmax:]  # same probes for every k
                for f in fs[:k]:
                    if emb[f] is not None:
                        t_emb.append(emb[f])
                        t_own.append(i)
                for f in probes:
                    p_true.append(i)
                    p_ok.append(emb[f] is not None)
                    p_emb.append(emb[f] if emb[f] is not None else np.zeros(dim, np.float32))
            T, own = np.stack(t_emb), np.array(t_own)
            P, y, ok = np.stack(p_emb), np.array(p_true), np.array(p_ok)
            order, score = nearest(T, own, names, P)
            top1 = np.where(ok, order[:, 0], -1)
            correct1 = (top1 == y)
            top5 = ok & (order[:, :5] == y[:, None]).any(axis=1)
            svm = LinearSVC(C=1.0, max_iter=5000).fit(T, own)
            knn = KNeighborsClassifier(n_neighbors=min(3, k), weights="distance", metric="cosine").fit(T, own)
            svm_pred = np.where(ok, svm.predict(P), -1)
            knn_pred = np.where(ok, knn.predict(P), -1)
            # open set
            d_best = nearest(T, own, names, d_emb)[1][:, 0] if len(d_emb) else np.zeros(0)
            g_best = np.where(ok, score[:, 0], -np.inf)
            ths = dict(thresholds)
            for target in settings.get("fpir_targets", []):
                if len(d_best):
                    ths[f"FPIR target {target:g}"] = float(np.quantile(d_best, 1 - target, method="higher")) + 1e-6
            open_rows = [{"threshold_from": name, "threshold": round(t, 4),
                          "fpir": float(np.mean(d_best >= t)) if len(d_best) else None,
                          "fnir": float(np.mean(~(correct1 & (g_best >= t))))} for name, t in ths.items()]
            curve_t = np.linspace(0.2, 0.9, 71)
            per_k.append({
                "k": k, "people": len(names), "templates": len(T), "probes": int(len(P)),
                "probes_without_face": int((~ok).sum()), "distractors": int(len(d_best)),
                "closed_set": {"nearest_gallery_top1": float(correct1.mean()),
                               "nearest_gallery_top5": float(top5.mean()),
                               "linear_svm_top1": float(np.mean(svm_pred == y)),
                               "knn_top1": float(np.mean(knn_pred == y))},
                "open_set": open_rows,
                "_curve": {"threshold": curve_t.tolist(),
                           "fpir": [float(np.mean(d_best >= t)) if len(d_best) else None for t in curve_t],
                           "fnir": [float(np.mean(~(correct1 & (g_best >= t)))) for t in curve_t]},
                "_pred": top1, "_true": y,
            })
        # per-identity table and confusion matrix at the largest k
        last = per_k[-1]
        labels = list(range(len(names)))
        p, r, f1, sup = precision_recall_fscore_support(last["_true"], last["_pred"], labels=labels, zero_division=0)
        per_identity = [{"name": names[i], "probes": int(sup[i]), "precision": round(float(p[i]), 4),
                         "recall": round(float(r[i]), 4), "f1": round(float(f1[i]), 4)} for i in labels]
        for x in per_k:
            x["_pred"], x["_true"] = x["_pred"].tolist(), x["_true"].tolist()
        results.append({"variant": v.name, "embedder": v.embedder.name, "names": names, "per_k": per_k,
                        "per_identity_at_k": last["k"], "per_identity": per_identity,
                        "macro_f1": round(float(np.mean(f1)), 4)})
    return {"benchmark": "identify", "machine": common.machine_info(), "settings": settings, "notes": notes,
            "variants": results}


def markdown(result: dict) -> str:
    import pandas as pd

    s = result["settings"]
    lines = [common.header("Identification on LFW", result["machine"],
                           f"Gallery: people with >= {s['min_images']} photos; probes: their other photos; "
                           "distractors: people with one photo.")]
    for v in result["variants"]:
        lines.append(f"\n### {v['variant']}: closed set (top-1 / top-5 accuracy)\n")
        lines.append(common.md_table(
            ["k enrolled", "people", "probes (no face)", "nearest-gallery top-1", "top-5", "linear SVM top-1",
             "k-NN top-1"],
            [[x["k"], x["people"], f"{x['probes']} ({x['probes_without_face']})",
              round(x["closed_set"]["nearest_gallery_top1"], 4), round(x["closed_set"]["nearest_gallery_top5"], 4),
              round(x["closed_set"]["linear_svm_top1"], 4), round(x["closed_set"]["knn_top1"], 4)]
             for x in v["per_k"]]))
        lines.append(f"\n### {v['variant']}: open set ({v['per_k'][0]['distractors']} distractors)\n")
        rows = []
        for x in v["per_k"]:
            for o in x["open_set"]:
                rows.append([x["k"], o["threshold_from"], o["threshold"], o["fpir"], round(o["fnir"], 4)])
        lines.append(common.md_table(["k", "threshold from", "min_cosine_similarity", "FPIR", "FNIR"], rows))
        df = pd.DataFrame(v["per_identity"]).sort_values(["f1", "probes"], ascending=[True, False])
        lines.append(f"\n### {v['variant']}: per identity at k = {v['per_identity_at_k']} (macro F1 "
                     f"{v['macro_f1']}), the 8 hardest\n")
        lines.append(df.head(8).to_markdown(index=False) if _has_tabulate() else
                     common.md_table(list(df.columns), df.head(8).values.tolist()))
    if result["notes"]:
        lines.append(common.notes_markdown(result["notes"]))
    return "\n".join(lines)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401 - imported only to probe that the optional package is installed
        return True
    except ImportError:
        return False


def plots(result: dict, out: Path) -> dict:
    import pandas as pd
    from sklearn.metrics import confusion_matrix

    plt = common.pyplot()
    out = Path(out)
    paths = {}
    v = result["variants"][0]
    n_top = int(result["settings"].get("heatmap_identities", 20))
    last = v["per_k"][-1]
    y, pred = np.array(last["_true"]), np.array(last["_pred"])
    top = [i for i, _ in sorted(((i, int((y == i).sum())) for i in range(len(v["names"]))),
                                key=lambda t: -t[1])][:n_top]
    other = len(v["names"])
    y2 = np.where(np.isin(y, top), y, other)
    p2 = np.where(np.isin(pred, top), pred, np.where(pred < 0, other + 1, other))
    labels = top + [other, other + 1]
    cm = confusion_matrix(y2, p2, labels=labels)
    keep = np.isin(y, top)
    cm = confusion_matrix(y2[keep], p2[keep], labels=labels)[: len(top)]
    names = [v["names"][i].replace("_", " ")[:18] for i in top] + ["other person", "no face"]
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(top)), names[: len(top)], fontsize=6)
    ax.set_xlabel("predicted (nearest gallery)")
    ax.set_ylabel("true")
    ax.set_title(f"{v['variant']}, k = {last['k']}: row-normalized confusion, {len(top)} identities with most probes",
                 fontsize=8)
    fig.colorbar(im, fraction=0.04)
    fig.tight_layout()
    paths["confusion_png"] = out / "identify_confusion.png"
    fig.savefig(paths["confusion_png"], dpi=70)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for x in v["per_k"]:
        c = x["_curve"]
        if c["fpir"][0] is None:
            continue
        ax.semilogx(np.maximum(c["fpir"], 1e-4), c["fnir"], label=f"k = {x['k']}")
    ax.set_xlabel("FPIR (distractor named as someone)")
    ax.set_ylabel("FNIR (enrolled probe not named)")
    ax.set_title(f"open-set identification, {v['variant']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["open_set_png"] = out / "identify_open_set.png"
    fig.savefig(paths["open_set_png"], dpi=80)
    plt.close(fig)
    paths["per_identity_csv"] = out / "identify_per_identity.csv"
    pd.DataFrame(v["per_identity"]).to_csv(paths["per_identity_csv"], index=False)
    return paths
