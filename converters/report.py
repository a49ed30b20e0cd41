"""``edgeface report``: what each model variant of a build loses and gains against float32.

For every variant listed in ``models.json`` (float32, float16, dynamic_int8, int8, pruned_int8, ...):

* **embedder**: cosine similarity of the variant's embedding to the float32 embedding of the same crop
  (mean, 1st percentile, min) on held-out crops (LFW ``peopleDevTest.txt`` identities, never used for
  calibration); LFW ``pairsDevTest.txt`` verification: accuracy at the best threshold (as ``edgeface eval``
  reports it), accuracy at the manifest's threshold (calibrated on DevTrain: the honest number), ROC AUC
  and TAR at FAR 1e-3. All embedder variants see the *same* crops (made by the float32 detector), so the
  numbers isolate the embedder;
* **detector**: on held-out DevTest photos, against the float32 detector of the same spec: recall (the
  subject's face found, IoU > 0.3), extra detections, median and 5th-percentile IoU, median keypoint error
  relative to the box width (the definitions of ``benchmarks/detector_fidelity.py``);
* sizes raw and gzip (pruning only shows in the compressed size), op histograms, Edge TPU readiness of the
  full-int8 models, optionally ONNX parity.

Written to ``OUT/report.json``, ``OUT/report.md`` and PNG plots (cosine histogram, ROC per variant).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from edgeface import evaluate
from edgeface.lfw import detector_fidelity
from edgeface.manifest import read_manifest

from . import common, heldout

log = logging.getLogger(__name__)
ORDER = ("float32", "float16", "dynamic_int8", "int8", "pruned_int8")


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """Attributes: lfw (LFW folder; default $EDGEFACE_DATA/lfw), pairs (pairs file inside it), pair_limit
    (first N/2 same + N/2 different pairs; None = all), heldout_crops, detector_images, plots, onnx,
    edgetpu, variants (None = every variant in the index), threads (per interpreter)."""
    lfw: Optional[str] = None
    pairs: str = "pairsDevTest.txt"
    pair_limit: Optional[int] = None
    heldout_crops: int = 300
    detector_images: int = 500
    plots: bool = True
    onnx: bool = False
    edgetpu: bool = True
    variants: Optional[tuple] = None
    threads: Optional[int] = None

    def __post_init__(self):
        if self.pair_limit is not None and self.pair_limit < 2:
            raise ValueError(f"pair_limit must be >= 2 (one same and one different pair), got {self.pair_limit}")
        if self.heldout_crops < 2:
            raise ValueError(f"heldout_crops must be >= 2, got {self.heldout_crops}")
        if self.detector_images < 1:
            raise ValueError(f"detector_images must be >= 1, got {self.detector_images}")
        if "/" in self.pairs and not Path(self.pairs).is_file():
            raise ValueError(f"pairs file {self.pairs!r} not found")


def _sorted_variants(names) -> list[str]:
    return sorted(names, key=lambda v: (ORDER.index(v) if v in ORDER else len(ORDER), v))


def file_sizes(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0))}


def op_histogram(path: Path) -> dict:
    from .edgetpu import analyze

    return analyze(path)["op_histogram"]


# --------------------------------------------------------------------------- embedder
def _embed_all(model: Path, crops, threads, desc: str) -> np.ndarray:
    from edgeface.embed import FaceEmbedder

    emb = FaceEmbedder(model, threads=threads)
    return np.stack([emb.embed_crop(c) for c in common.progress(crops, desc)])


def pair_crops(lfw: Path, pairs_file: Path, float_detector: Path, recipe: dict, limit: Optional[int]):
    """(pairs, {image path: crop or None}) with the float32 detector's crop of each pair image."""
    from edgeface.detect import FaceDetector
    from edgeface.lfw import crop_files, pair_files

    pairs = evaluate.read_pairs(pairs_file)
    pairs = evaluate.first_pairs(pairs, limit)
    det = FaceDetector(float_detector)
    crops = crop_files(det.detect, pair_files(pairs, lfw), recipe,
                       lambda files: common.progress(files, "LFW pair images: float32 detector"))
    return pairs, crops


def verification(pairs, crops: dict, embeddings: dict, lfw: Path, threshold: float) -> dict:
    from edgeface.lfw import pair_scores

    scores = pair_scores(pairs, embeddings, lfw)
    same = np.array([p.same for p in pairs])
    summary = evaluate.summarize(scores, same)
    return {"pairs": len(pairs), "different_pairs": int((~same).sum()), "failed_pairs": summary["failed_pairs"],
            "accuracy_best_threshold": round(float(summary["accuracy_mean"]), 4),
            "best_threshold": round(float(summary["best_threshold"]), 4),
            "accuracy_at_manifest_threshold": round(evaluate.accuracy_at(scores, same, threshold), 4),
            "manifest_threshold": threshold, "roc_auc": round(float(summary["roc_auc"]), 5),
            "tar_at_far_1e-3": round(float(summary["tar_at_far_1e-3"]), 4),
            "_scores": scores, "_same": same}


# --------------------------------------------------------------------------- detector
# --------------------------------------------------------------------------- the report
def make_report(models_dir: str | os.PathLike, out_dir: str | os.PathLike,
                options: ReportOptions = ReportOptions()) -> dict:
    """Measure every variant of ``models_dir`` and write ``report.json``, ``report.md`` and plots."""
    from .common import read_index, variant_table

    t0 = time.time()
    models_dir, out_dir = Path(models_dir), Path(out_dir)
    index = read_index(models_dir)
    table = variant_table(index)
    lfw = heldout.lfw_root(options.lfw)
    pairs_file = Path(options.pairs) if Path(options.pairs).is_file() else lfw / options.pairs
    if not pairs_file.is_file():
        raise FileNotFoundError(f"{pairs_file}: pairs file not found")
    wanted = set(options.variants) if options.variants else None
    report: dict = {"models_dir": str(models_dir), "lfw": str(lfw), "pairs_file": pairs_file.name,
                    "heldout": f"LFW {heldout.PEOPLE_FILE} identities", "embedder": {}, "detectors": {},
                    "models": {}}

    emb_variants = {v: f for v, f in table["embedder"].items() if wanted is None or v in wanted or v == "float32"}
    if "float32" not in emb_variants:
        raise ValueError(f"{models_dir}: no float32 embedder to compare against")
    float_det_default = models_dir / index["float32"]["detector"]
    fman = read_manifest(models_dir / emb_variants["float32"])
    recipe = fman["embedder"]["crop"]

    # held-out crops: the same crops for every variant
    files = heldout.devtest_images(lfw, options.heldout_crops + options.heldout_crops // 5 + 2)
    crops = heldout.face_crops(files, float_det_default, recipe)[: options.heldout_crops]
    pairs, pcrops = pair_crops(lfw, pairs_file, float_det_default, recipe, options.pair_limit)
    pair_keys = [f for f, c in pcrops.items() if c is not None]
    ref = None
    curves, cosines = {}, {}
    for variant in _sorted_variants(emb_variants):
        path = models_dir / emb_variants[variant]
        man = read_manifest(path)
        e = _embed_all(path, crops, options.threads, f"held-out crops {variant}")
        if variant == "float32":
            ref = e
        stats = evaluate.cosine_stats(ref, e)
        cosines[variant] = np.sum(ref * e, axis=1)
        pe = _embed_all(path, [pcrops[f] for f in pair_keys], options.threads, f"LFW pairs {variant}")
        ver = verification(pairs, pcrops, dict(zip(pair_keys, pe)), lfw,
                           float(man["embedder"]["min_cosine_similarity"]))
        curves[variant] = (ver.pop("_scores"), ver.pop("_same"))
        report["embedder"][variant] = {"file": path.name, **file_sizes(path), "cosine_to_float32": stats,
                                       "lfw": ver, "input_dtype": man["input"]["dtype"]}
        report["models"][path.name] = {"role": "embedder", "variant": variant, "ops": op_histogram(path)}

    files = heldout.devtest_images(lfw, options.detector_images)
    for spec, entries in table["detectors"].items():
        if "float32" not in entries:
            continue
        fpath = models_dir / entries["float32"]
        out = {}
        for variant in _sorted_variants(entries):
            if wanted is not None and variant not in wanted and variant != "float32":
                continue
            path = models_dir / entries[variant]
            row = {"file": path.name, **file_sizes(path)}
            if variant != "float32":
                row["fidelity"] = detector_fidelity(fpath, path, files, options.threads,
                                                       lambda it, d=f"detector {path.stem}": common.progress(it, d))
            out[variant] = row
            report["models"][path.name] = {"role": "detector", "variant": variant, "ops": op_histogram(path)}
        report["detectors"][spec] = out

    if options.edgetpu:
        from . import edgetpu

        report["edgetpu"] = {}
        for f in edgetpu.default_models(models_dir):
            r = edgetpu.analyze(f)
            report["edgetpu"][f.name] = {k: r[k] for k in ("ready", "problems", "warnings", "cut", "ops",
                                                            "op_histogram", "parameter_bytes")}
            report["edgetpu"][f.name]["compile_command"] = " ".join(edgetpu.compile_command(f))
    if options.onnx:
        from . import onnx_export

        report["onnx"] = onnx_export.export_models(models_dir, out_dir / "onnx",
                                                   onnx_export.OnnxOptions(lfw=str(lfw)))
    report["seconds"] = round(time.time() - t0, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    if options.plots:
        report["plots"] = _plots(out_dir, cosines, curves)
    common.atomic_write_bytes(out_dir / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    common.atomic_write_bytes(out_dir / "report.md", markdown(report).encode())
    log.info("report written to %s in %.0f s", out_dir, report["seconds"])
    return report


def _plots(out_dir: Path, cosines: dict, curves: dict) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(7, 4))
    lo = min(float(c.min()) for v, c in cosines.items() if v != "float32") if len(cosines) > 1 else 0.9
    bins = np.linspace(min(lo, 0.999) - 1e-4, 1.0 + 1e-6, 60)
    for v, c in cosines.items():
        if v != "float32":
            ax.hist(np.clip(c, bins[0], None), bins=bins, alpha=0.55, label=f"{v} (min {c.min():.4f})")
    ax.set_xlabel("cosine similarity to the float32 embedding (held-out LFW DevTest crops)")
    ax.set_ylabel("crops")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "cosine_hist.png", dpi=110)
    plt.close(fig)
    written.append("cosine_hist.png")
    fig, ax = plt.subplots(figsize=(6, 5))
    n_diff = max(1, int(np.sum(~next(iter(curves.values()))[1])))
    floor, low = 0.5 / n_diff, 1.0
    for v, (scores, same) in curves.items():
        far, tar, _ = evaluate.roc_curve(scores, same)
        ax.step(np.maximum(far, floor), tar, where="post", label=f"{v} (AUC {evaluate.roc_auc(scores, same):.4f})")
        left = far <= floor  # the TAR at the left edge of the plot
        low = min(low, float(tar[left].max()) if left.any() else float(tar[0]))
    ax.set_xscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(max(0.0, low - 0.02), 1.002)
    ax.set_xlabel(f"false accept rate ({n_diff} different pairs; FAR 0 drawn at {floor:.0e})")
    ax.set_ylabel("true accept rate")
    ax.set_title("LFW pairs ROC per embedder variant")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "roc.png", dpi=110)
    plt.close(fig)
    written.append("roc.png")
    return written


def _kb(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 10 * 2**20 else f"{n / 2**20:,.1f} MiB"


def markdown(r: dict) -> str:
    """The report as markdown tables."""
    lines = [f"# edgeface fidelity report: `{r['models_dir']}`", "",
             f"Held-out data: {r['heldout']}; verification on `{r['pairs_file']}`. Every embedder variant gets "
             "the same crops (float32 detector); cosine is to the float32 embedding of the same crop.", "",
             "## Embedder", "",
             "| variant | file | size | gzip | cos mean | cos p1 | cos min | acc (best thr) | acc @ manifest thr "
             "| TAR@FAR1e-3 | ROC AUC | failed pairs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v, e in r["embedder"].items():
        c, l_ = e["cosine_to_float32"], e["lfw"]
        lines.append(f"| {v} | `{e['file']}` | {_kb(e['bytes'])} | {_kb(e['gzip_bytes'])} | {c['mean']:.4f} | "
                     f"{c['p1']:.4f} | {c['min']:.4f} | {100 * l_['accuracy_best_threshold']:.2f}% | "
                     f"{100 * l_['accuracy_at_manifest_threshold']:.2f}% (thr {l_['manifest_threshold']:.3f}) | "
                     f"{l_['tar_at_far_1e-3']:.4f} | {l_['roc_auc']:.4f} | {l_['failed_pairs']}/{l_['pairs']} |")
    first = next(iter(r["embedder"].values())) if r["embedder"] else None
    n = first["cosine_to_float32"]["n"] if first else 0
    n_diff = first["lfw"].get("different_pairs", 0) if first else 0
    note = (f"TAR at FAR 1e-3 with {n_diff} different pairs means: no different pair accepted (FAR 1e-3 needs "
            ">= 1000 different pairs to be resolved; `edgeface bench accuracy` uses many more impostor pairs)."
            if n_diff < 1000 else "")
    lines += ["", f"Cosine statistics on {n} held-out crops. The threshold column is the manifest's (calibrated "
                  f"on LFW DevTrain, never on these pairs). {note}", ""]
    lines += ["## Detector (against float32 of the same spec)", "",
              "| spec | variant | file | size | gzip | images | recall vs float | extra detections | median IoU "
              "| p5 IoU | keypoint err / box |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for spec, rows in r["detectors"].items():
        for v, d in rows.items():
            f = d.get("fidelity")
            if f is None:
                lines.append(f"| {spec} | {v} | `{d['file']}` | {_kb(d['bytes'])} | {_kb(d['gzip_bytes'])} | "
                             "reference | | | | | |")
                continue
            fmt = lambda x, p=4: "n/a" if x is None else f"{x:.{p}f}"  # noqa: E731 - a one-line local helper
            kp = f["median_keypoint_error_rel_box"]
            lines.append(f"| {spec} | {v} | `{d['file']}` | {_kb(d['bytes'])} | {_kb(d['gzip_bytes'])} | "
                         f"{f['images']} | {100 * f['recall_vs_float']:.2f}% ({f['variant_found_where_float_did']}/"
                         f"{f['float_found']}) | {f['extra_detections']} | {fmt(f['median_iou'], 3)} | "
                         f"{fmt(f['p05_iou'], 3)} | {'n/a' if kp is None else f'{100 * kp:.2f}%'} |")
    if r.get("edgetpu"):
        lines += ["", "## Edge TPU readiness (full-int8 models)", "", "| model | ready | ops | partition | notes |",
                  "|---|---|---|---|---|"]
        for name, e in r["edgetpu"].items():
            notes = "; ".join(e["problems"] + e["warnings"]) or "-"
            lines.append(f"| `{name}` | {'yes' if e['ready'] else 'no'} | {e['ops']} | {e['cut']} | {notes} |")
        lines += ["", "Compile (edgetpu_compiler not run here): "
                  + "; ".join(f"`{e['compile_command']}`" for e in r["edgetpu"].values())]
    if r.get("onnx"):
        lines += ["", "## ONNX (tf2onnx, onnxruntime)", "", "| onnx | from | size | parity | bar | ok |",
                  "|---|---|---|---|---|---|"]
        for o in r["onnx"]:
            lines.append(f"| `{o['onnx']}` | `{o['source']}` | {_kb(o['bytes'])} | {o['parity']['summary']} | "
                         f">= {o['bar']} | {'yes' if o['ok'] else 'NO'} |")
    lines += ["", "## Op histograms", "", "| model | ops |", "|---|---|"]
    for name, m in r["models"].items():
        lines.append(f"| `{name}` | " + ", ".join(f"{k} {v}" for k, v in m["ops"].items()) + " |")
    if r.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in r["plots"]]
    lines += ["", f"Measured in {r['seconds']} s.", ""]
    return "\n".join(lines)
