"""``edgeface bench``: reproducible benchmarks, each writing JSON, a markdown table and a PNG plot.

Every table in benchmarks/README.md comes from one of these commands. What each one measures by default is
data, in benchmarks/runs.json ("full"); ``--profile quick`` is the short version CI runs.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from edgeface.errors import run_cli

EXAMPLES = """\
examples (a full run of everything takes about an hour on a 2-core x86 machine; run it with `nice`):
  edgeface bench latency  --models models                      # runtime x precision x threads, side by side
  edgeface bench latency  --models models --detectors short_range auto  # the single model vs the default
  edgeface bench latency  --models models --write-reference    # also save benchmarks/reference/<device>.json
  edgeface bench accuracy --models models --data ../shared/data/lfw
  edgeface bench identify --models models --data ../shared/data/lfw
  edgeface bench gallery  --models models --data ../shared/data/lfw
  edgeface bench face_sizes --models models --data ../shared/data/lfw  # detection recall by face size, latency
  edgeface bench preprocess --models models --data ../shared/data/lfw
  edgeface bench peers    --models models --data ../shared/data/lfw   # needs pip install 'edgeface[peers]'
  edgeface bench all      --models models --data ../shared/data/lfw   # every table and plot of the docs
  edgeface bench latency  --profile quick                       # the short CI version: proves it runs
outputs: <out>/<benchmark>.json, .md and .png (default --out benchmarks/results, not committed)
"""


def _data_default() -> str:
    from edgeface.paths import data_root

    return str(data_root() / "lfw")


def _opt(*flags: str, **kwargs) -> tuple:
    """One command-line option: its flags and its ``add_argument`` keywords."""
    return flags, kwargs


def _dest(flags: tuple) -> str:
    return flags[0].lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Benchmark:
    """One ``edgeface bench`` subcommand, as data: :func:`build_parser` and :func:`main` are driven by these.

    ``name`` is the subcommand, its section of runs.json and the stem of its output files; ``module`` the
    benchmarks module that does the work (``run``, ``markdown``, ``plot`` or ``plots``). ``options`` are its own
    options besides the common ones (--models, --data, --out, --profile, --no-progress, -v); ``overrides``
    names those that replace the runs.json setting of the same name. ``cached``: ``run`` also takes the
    output folder and ``cache=`` (embeddings kept in <out>/cache between runs, off with --no-cache).
    ``plots``: ``module.plots`` draws several PNGs, else ``module.plot`` draws <name>.png, only when
    ``result[plot_if]`` is non-empty if ``plot_if`` is set. ``raw_description``: --help prints the description
    as written, unwrapped (as latency's always has). ``runner`` replaces :func:`run_benchmark` for a
    benchmark that needs more (latency: scenes, reference file, drift check).
    """
    name: str
    module: str
    help: str
    description: Optional[str] = None
    options: tuple = ()
    overrides: tuple = ()
    cached: bool = False
    plots: bool = False
    plot_if: Optional[str] = None
    raw_description: bool = False
    runner: Optional[Callable[..., int]] = None


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

    for bench in BENCHMARKS:
        extra = {"formatter_class": argparse.RawDescriptionHelpFormatter} if bench.raw_description else {}
        p = common_args(sub.add_parser(bench.name, help=bench.help, description=bench.description, **extra))
        for flags, kwargs in bench.options:
            p.add_argument(*flags, **kwargs)

    # "all" takes only the common options and --bbt; every other benchmark's option keeps its default
    p = common_args(sub.add_parser("all", help="every benchmark above, in order (the docs' tables and plots)"))
    p.add_argument("--bbt", type=Path, default=None,
                   help="bbt folder with group/ for the latency group scene (default: beside --data)")
    p.set_defaults(**{_dest(flags): kwargs.get("default", False if kwargs.get("action") == "store_true" else None)
                      for bench in BENCHMARKS for flags, kwargs in bench.options if _dest(flags) != "bbt"})
    return parser


def register(sub) -> None:
    """``edgeface bench``: entry point of the ``edgeface.commands`` group (setup.cfg). The benchmarks keep
    their own parser, so the subcommand takes its arguments raw (sklearn/pandas/matplotlib load only here)."""
    p = sub.add_parser("bench", add_help=False,
                       help="benchmarks: latency, accuracy, identify, gallery, preprocess, peers "
                            "(edgeface bench --help)")
    p.set_defaults(argv=True, func=run)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli("edgeface bench", run, argv)


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and run the benchmarks it names (errors propagate; :func:`main` reports them)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .common import BenchmarkError

    benches = [b for b in BENCHMARKS if args.bench in ("all", b.name)]
    status = 0
    for bench in benches:
        try:
            rc = (bench.runner or run_benchmark)(bench, args)
        except BenchmarkError as exc:
            print(f"edgeface bench {bench.name}: error: {exc}", file=sys.stderr)
            rc = 2
        status = max(status, rc)
    return status


def _settings(bench: Benchmark, args) -> dict:
    """The runs.json settings of ``bench`` for ``--profile``, with the options given on the command line."""
    from .common import load_runs

    s = load_runs(bench.name, args.profile)
    given = {k: getattr(args, k) for k in bench.overrides}
    s.update({k: v for k, v in given.items() if v is not None})
    return s


def _report(paths: dict, md: str) -> None:
    print(md)
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))


def run_benchmark(bench: Benchmark, args) -> int:
    """Run ``bench`` with its settings, write <out>/<name>.json, .md and its plots, print the table."""
    from . import common

    module = importlib.import_module(f".{bench.module}", __package__)
    s = _settings(bench, args)
    if bench.cached:
        result = module.run(args.models, args.data, s, args.out, cache=not args.no_cache,
                            show_progress=not args.no_progress)
    else:
        result = module.run(args.models, args.data, s, show_progress=not args.no_progress)
    md = module.markdown(result)
    paths = common.write_outputs(args.out, bench.name, result, md)
    if bench.plots:
        paths.update(module.plots(result, args.out))
    elif bench.plot_if is None or result.get(bench.plot_if):
        paths["png"] = module.plot(result, args.out / f"{bench.name}.png")
    _report(paths, md)
    return 0


def run_latency(bench: Benchmark, args) -> int:
    from . import common, latency

    s = _settings(bench, args)
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


_PRECISIONS = _opt("--precisions", nargs="+")

# Every subcommand but "all", in the order "all" runs them; what each measures by default is in runs.json.
BENCHMARKS = (
    Benchmark(
        "latency", "latency", runner=run_latency, raw_description=True,
        help="per-stage latency, runtime x precision x threads x detector side by side",
        description="Per-stage time of decode, detect, crop, embed and match, and end to end per frame, for every "
                    "available runtime x precision x threads x detector, interleaved in one run. Warm-up, then "
                    "--runs timed runs; median, p95, min; load and first-frame time and peak RSS from a fresh "
                    "process each. The detector is by default the models folder's default_detector (what users "
                    "get: auto in a current build, several models and tiles in large frames); --detectors "
                    "short_range times the single short-range model.",
        options=(
            _opt("--bbt", type=Path, default=None, help="bbt folder with group/ (default: beside --data)"),
            _opt("--runs", type=int, help="timed runs per configuration (default 200 in the full profile)"),
            _opt("--warmup", type=int, help="untimed warm-up runs per configuration"),
            _opt("--threads", nargs="+", help="thread counts, e.g. 1 2 all"),
            _opt("--runtimes", nargs="+", help="litert tflite_runtime tensorflow onnxruntime (missing ones are "
                                               "skipped with a note)"),
            _opt("--precisions", nargs="+", help="int8 int8_io float32 int8_pruned, or any <precision>_<tag> entry "
                                                 "of models.json (e.g. int8_facenet: another embedder, same run; "
                                                 "int8_io: build it with `edgeface variants --variants int8_io`); "
                                                 "a _noflip / _flip suffix (int8_noflip, int8_flip) turns the "
                                                 "manifest's test-time flip off / on (on: latency mirrors a face "
                                                 "only near the threshold, as the door does)"),
            _opt("--detectors", nargs="+", metavar="NAME",
                 help="detector configurations of the models folder's models.json (its detector_configs and "
                      "detectors, e.g. auto short_range full_range; default: the folder's default_detector, "
                      "also named by 'default'); every configuration runs each one"),
            _opt("--scenes", nargs="+", help="only these scenes of runs.json (lfw_1face, group)"),
            _opt("--write-reference", action="store_true",
                 help="write benchmarks/reference/<device>.json (commit it: later runs are checked against it)"),
            _opt("--reference", type=Path, help="reference file to check against (default: this device's)"),
            _opt("--fail-on-drift", action="store_true", help="exit 3 if a median drifted beyond the tolerance"),
        ),
        overrides=("runs", "warmup", "threads", "runtimes", "precisions", "detectors")),
    Benchmark(
        "accuracy", "accuracy", cached=True,
        help="LFW 10-fold and DevTest accuracy, ROC AUC, TAR@FAR, ROC/DET plots, operating points",
        description="Every model variant (precision x detector): LFW 10-fold accuracy on pairs.txt, pairsDevTest "
                    "accuracy at the manifest's threshold (calibrated on DevTrain), ROC AUC, TAR at FAR 1e-3 and "
                    "1e-4 on a large impostor set, ROC and DET plots, and an operating-point table for installers.",
        options=(_PRECISIONS, _opt("--detectors", nargs="+", metavar="NAME",
                                          help="detector names of models.json, e.g. short_range full_range "
                                               "auto (default: 'default', the folder's default_detector, "
                                               "what users get)"),
                 _opt("--no-cache", action="store_true", help="do not reuse embeddings cached in <out>/cache")),
        overrides=("precisions", "detectors")),
    Benchmark(
        "identify", "identify", cached=True, plots=True,
        help="closed/open-set identification on LFW, vs linear SVM and k-NN",
        description="People with >= 10 LFW images form the gallery (k = 1, 3, 5 enrolled photos each), their other "
                    "photos are probes, single-photo people are distractors. Top-1 accuracy, per-identity "
                    "precision/recall/F1, confusion-matrix heatmap, open-set FPIR/FNIR, and nearest-gallery cosine "
                    "against scikit-learn linear SVM and k-NN on the same embeddings.",
        options=(_PRECISIONS, _opt("--no-cache", action="store_true",
                                   help="do not reuse embeddings cached in <out>/cache")),
        overrides=("precisions",)),
    Benchmark(
        "face_sizes", "face_sizes",
        help="detection recall by face size (20 px to the whole frame), false detections, latency per config",
        description="Labelled group photos, shrunk collages and LFW mosaics (benchmarks/face_size_labels.json, "
                    "built from ../shared/data at run time): recall of faces >= 20 px by size, large faces lost, "
                    "false detections and median detection time per image of the default detector against "
                    "short_range alone (and its --tiles 3, and full_range), interleaved in one run.",
        options=(_PRECISIONS, _opt("--runs", type=int, help="timed runs per scene and configuration")),
        overrides=("precisions", "runs")),
    Benchmark(
        "gallery", "gallery_scaling",
        help="match latency and memory for 1k/10k/100k embeddings, float32 vs float16 vs int8",
        description="Gallery scaling: match latency (median/p95) and memory of the embedding store for growing "
                    "galleries, float32 against compact float16 and int8 stores, and their top-1 agreement with "
                    "float32. Real LFW embeddings seed a Gaussian model of the embedding space for large sizes.",
        options=(_opt("--sizes", nargs="+", type=int),),
        overrides=("sizes",)),
    Benchmark(
        "preprocess", "preprocess_study", cached=True,
        help="CLAHE / equalization / gamma on dark and low-contrast LFW pairs",
        description="LFW pairs with brightness and contrast degraded, with and without equalization, CLAHE and "
                    "auto gamma: accuracy at the manifest threshold, best accuracy, TAR at FAR 1e-3 (DevTest-"
                    "sized sets resolve FAR down to ~2e-3), faces not found.",
        options=(_opt("--no-cache", action="store_true",
                      help="do not reuse embeddings cached in <out>/cache"),)),
    Benchmark(
        "peers", "peers", plot_if="peers",
        help="edgeface int8 vs face_recognition (dlib) on the same LFW pairs, in one run",
        description="Peer comparison on the same LFW pairs and images, interleaved per image: cross-validated "
                    "accuracy, ROC AUC, TAR at FAR 1e-3, per-image time. Needs pip install 'edgeface[peers]' "
                    "(face_recognition, face-recognition-models, dlib-bin); never a core dependency."),
)

if __name__ == "__main__":
    sys.exit(main())
