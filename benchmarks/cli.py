"""``edgeface bench``: reproducible benchmarks, each writing JSON, a markdown table and a PNG plot.

Every table in benchmarks/README.md comes from one of these commands. What each one measures by default is
data, in benchmarks/runs.json ("full"); ``--profile quick`` is the short version CI runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

EXAMPLES = """\
examples (a full run of everything takes about an hour on a 2-core x86 machine; run it with `nice`):
  edgeface bench latency  --models models                      # runtime x precision x threads, side by side
  edgeface bench latency  --models models --write-reference    # also save benchmarks/reference/<device>.json
  edgeface bench accuracy --models models --data ../shared/data/lfw
  edgeface bench identify --models models --data ../shared/data/lfw
  edgeface bench gallery  --models models --data ../shared/data/lfw
  edgeface bench preprocess --models models --data ../shared/data/lfw
  edgeface bench peers    --models models --data ../shared/data/lfw   # needs pip install 'edgeface[peers]'
  edgeface bench all      --models models --data ../shared/data/lfw   # every table and plot of the docs
  edgeface bench latency  --profile quick                       # the short CI version: proves it runs
outputs: <out>/<benchmark>.json, .md and .png (default --out benchmarks/results, not committed)
"""


def _data_default() -> str:
    root = os.environ.get("EDGEFACE_DATA")
    if root:
        return str(Path(root) / "lfw")
    return "../shared/data/lfw"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeface bench", description=__doc__.split("\n\n")[0] + "\n\n" +
                                     __doc__.split("\n\n")[1], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")

    def common_args(p):
        p.add_argument("--models", type=Path, default=Path(os.environ.get("EDGEFACE_MODELS", "models")),
                       help="models folder from `edgeface build` (default $EDGEFACE_MODELS or ./models)")
        p.add_argument("--data", type=Path, default=Path(_data_default()),
                       help="LFW folder with images_deepfunneled/ and the pairs files "
                            "(default $EDGEFACE_DATA/lfw or ../shared/data/lfw)")
        p.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                       help="results folder (default benchmarks/results/, gitignored)")
        p.add_argument("--profile", choices=["full", "quick"], default="full",
                       help="settings from benchmarks/runs.json: full (default) or quick (CI: few runs, few pairs)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("-v", "--verbose", action="store_true", help="log details")
        return p

    p = common_args(sub.add_parser(
        "latency", help="per-stage latency, runtime x precision x threads side by side",
        description="Per-stage time of decode, detect, crop, embed and match, and end to end per frame, for every "
                    "available runtime x precision x threads, interleaved in one run. Warm-up, then --runs timed "
                    "runs; median, p95, min; load and first-frame time and peak RSS from a fresh process each.",
        formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--bbt", type=Path, default=None, help="bbt folder with group/ (default: beside --data)")
    p.add_argument("--runs", type=int, help="timed runs per configuration (default 200 in the full profile)")
    p.add_argument("--warmup", type=int, help="untimed warm-up runs per configuration")
    p.add_argument("--threads", nargs="+", help="thread counts, e.g. 1 2 all")
    p.add_argument("--runtimes", nargs="+", help="litert tflite_runtime tensorflow onnxruntime (missing ones are "
                                                  "skipped with a note)")
    p.add_argument("--precisions", nargs="+", help="int8 float32 int8_pruned")
    p.add_argument("--scenes", nargs="+", help="only these scenes of runs.json (lfw_1face, group)")
    p.add_argument("--write-reference", action="store_true",
                   help="write benchmarks/reference/<device>.json (commit it: later runs are checked against it)")
    p.add_argument("--reference", type=Path, help="reference file to check against (default: this device's)")
    p.add_argument("--fail-on-drift", action="store_true", help="exit 3 if a median drifted beyond the tolerance")

    p = common_args(sub.add_parser(
        "accuracy", help="LFW 10-fold and DevTest accuracy, ROC AUC, TAR@FAR, ROC/DET plots, operating points",
        description="Every model variant (precision x detector): LFW 10-fold accuracy on pairs.txt, pairsDevTest "
                    "accuracy at the manifest's threshold (calibrated on DevTrain), ROC AUC, TAR at FAR 1e-3 and "
                    "1e-4 on a large impostor set, ROC and DET plots, and an operating-point table for installers."))
    p.add_argument("--precisions", nargs="+")
    p.add_argument("--detectors", nargs="+", help="short_range full_range")
    p.add_argument("--no-cache", action="store_true", help="do not reuse embeddings cached in <out>/cache")

    p = common_args(sub.add_parser(
        "identify", help="closed/open-set identification on LFW, vs linear SVM and k-NN",
        description="People with >= 10 LFW images form the gallery (k = 1, 3, 5 enrolled photos each), their other "
                    "photos are probes, single-photo people are distractors. Top-1 accuracy, per-identity "
                    "precision/recall/F1, confusion-matrix heatmap, open-set FPIR/FNIR, and nearest-gallery cosine "
                    "against scikit-learn linear SVM and k-NN on the same embeddings."))
    p.add_argument("--precisions", nargs="+")
    p.add_argument("--no-cache", action="store_true")

    p = common_args(sub.add_parser(
        "gallery", help="match latency and memory for 1k/10k/100k embeddings, float32 vs float16 vs int8",
        description="Gallery scaling: match latency (median/p95) and memory of the embedding store for growing "
                    "galleries, float32 against compact float16 and int8 stores, and their top-1 agreement with "
                    "float32. Real LFW embeddings seed a Gaussian model of the embedding space for large sizes."))
    p.add_argument("--sizes", nargs="+", type=int)

    p = common_args(sub.add_parser(
        "preprocess", help="CLAHE / equalization / gamma on dark and low-contrast LFW pairs",
        description="LFW pairs with brightness and contrast degraded, with and without equalization, CLAHE and "
                    "auto gamma: accuracy at the manifest threshold, best accuracy, TAR at FAR 1e-3 (DevTest-"
                    "sized sets resolve FAR down to ~2e-3), faces not found."))
    p.add_argument("--no-cache", action="store_true")

    p = common_args(sub.add_parser(
        "peers", help="edgeface int8 vs face_recognition (dlib) on the same LFW pairs, in one run",
        description="Peer comparison on the same LFW pairs and images, interleaved per image: cross-validated "
                    "accuracy, ROC AUC, TAR at FAR 1e-3, per-image time. Needs pip install 'edgeface[peers]' "
                    "(face_recognition, face-recognition-models, dlib-bin); never a core dependency."))

    p = common_args(sub.add_parser("all", help="every benchmark above, in order (the docs' tables and plots)"))
    p.add_argument("--bbt", type=Path, default=None)
    for name in ("runs", "warmup", "threads", "runtimes", "precisions", "detectors", "sizes", "reference", "scenes"):
        p.set_defaults(**{name: None})
    p.set_defaults(write_reference=False, fail_on_drift=False, no_cache=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .common import BenchmarkError

    names = ["latency", "accuracy", "identify", "gallery", "preprocess", "peers"] if args.bench == "all" \
        else [args.bench]
    status = 0
    for name in names:
        try:
            rc = RUNNERS[name](args)
        except BenchmarkError as exc:
            print(f"edgeface bench {name}: error: {exc}", file=sys.stderr)
            rc = 2
        status = max(status, rc)
    return status


def _settings(section: str, args, overrides: dict) -> dict:
    from .common import load_runs

    s = load_runs(section, args.profile)
    s.update({k: v for k, v in overrides.items() if v is not None})
    return s


def _report(paths: dict, md: str) -> None:
    print(md)
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))


def run_latency(args) -> int:
    from . import common, latency

    s = _settings("latency", args, {"runs": args.runs, "warmup": args.warmup, "threads": args.threads,
                                     "runtimes": args.runtimes, "precisions": args.precisions})
    if args.scenes:
        s["scenes"] = [sc for sc in s["scenes"] if sc["name"] in args.scenes]
        if not s["scenes"]:
            raise common.BenchmarkError(f"no scene named {args.scenes} in runs.json")
    bbt = args.bbt or args.data.parent / "bbt"
    result = latency.run(args.models, args.data, bbt, s, show_progress=not args.no_progress)
    info = result["machine"]
    ref_path = args.reference or common.REFERENCE_DIR / f"{common.device_slug(info)}.json"
    if ref_path.is_file():
        result["drift"] = latency.drift_check(result, json.loads(ref_path.read_text()),
                                              float(s.get("drift_tolerance", 0.5)))
    elif args.reference:
        raise common.BenchmarkError(f"reference file {ref_path} not found")
    paths = common.write_outputs(args.out, "latency", result, latency.markdown(result))
    paths["png"] = latency.plot(result, args.out / "latency.png")
    if args.write_reference:
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref_path.write_text(json.dumps(latency.reference_payload(result), indent=1) + "\n")
        paths["reference"] = ref_path
    _report(paths, latency.markdown(result))
    if args.fail_on_drift and result.get("drift", {}).get("drifted"):
        return 3
    return 0


def run_accuracy(args) -> int:
    from . import accuracy, common

    s = _settings("accuracy", args, {"precisions": args.precisions, "detectors": args.detectors})
    result = accuracy.run(args.models, args.data, s, args.out, cache=not args.no_cache,
                          show_progress=not args.no_progress)
    md = accuracy.markdown(result)
    paths = common.write_outputs(args.out, "accuracy", result, md)
    paths["png"] = accuracy.plot(result, args.out / "accuracy.png")
    _report(paths, md)
    return 0


def run_identify(args) -> int:
    from . import common, identify

    s = _settings("identify", args, {"precisions": args.precisions})
    result = identify.run(args.models, args.data, s, args.out, cache=not args.no_cache,
                          show_progress=not args.no_progress)
    md = identify.markdown(result)
    paths = common.write_outputs(args.out, "identify", result, md)
    paths.update(identify.plots(result, args.out))
    _report(paths, md)
    return 0


def run_gallery(args) -> int:
    from . import common, gallery_scaling

    s = _settings("gallery", args, {"sizes": args.sizes})
    result = gallery_scaling.run(args.models, args.data, s, show_progress=not args.no_progress)
    md = gallery_scaling.markdown(result)
    paths = common.write_outputs(args.out, "gallery", result, md)
    paths["png"] = gallery_scaling.plot(result, args.out / "gallery.png")
    _report(paths, md)
    return 0


def run_preprocess(args) -> int:
    from . import common, preprocess_study

    s = _settings("preprocess", args, {})
    result = preprocess_study.run(args.models, args.data, s, args.out, cache=not args.no_cache,
                                  show_progress=not args.no_progress)
    md = preprocess_study.markdown(result)
    paths = common.write_outputs(args.out, "preprocess", result, md)
    paths["png"] = preprocess_study.plot(result, args.out / "preprocess.png")
    _report(paths, md)
    return 0


def run_peers(args) -> int:
    from . import common, peers

    s = _settings("peers", args, {})
    result = peers.run(args.models, args.data, s, show_progress=not args.no_progress)
    md = peers.markdown(result)
    paths = common.write_outputs(args.out, "peers", result, md)
    if result.get("peers"):
        paths["png"] = peers.plot(result, args.out / "peers.png")
    _report(paths, md)
    return 0


RUNNERS = {"latency": run_latency, "accuracy": run_accuracy, "identify": run_identify, "gallery": run_gallery,
           "preprocess": run_preprocess, "peers": run_peers}


if __name__ == "__main__":
    sys.exit(main())
