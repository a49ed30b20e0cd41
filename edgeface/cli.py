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

from .errors import EdgefaceError, message, run_cli
from .progress import progress

EXAMPLES = """\
examples:
  edgeface build --out models                      # int8 + float models from upstream weights (~5 min)
  edgeface detect photo.jpg                        # faces, scores and keypoints
  edgeface verify a.jpg b.jpg --json               # same person?
  edgeface enroll --gallery people.db --name ada ada1.jpg ada2.jpg
  edgeface identify --gallery people.db group.jpg
  edgeface eval lfw --data ../shared/data/lfw --pairs pairsDevTest.txt
  edgeface report --models models                  # fidelity of every variant against float32

environment (the complete list; every one is optional):
  EDGEFACE_MODELS   models folder (default ./models)
  EDGEFACE_DATA     data root holding lfw/ and bbt/ (default ../shared/data from the working directory)
  EDGEFACE_CACHE    the one cache root: downloads, calibration and pruning caches, the tests' models
                    (default ~/.cache/edgeface; nothing is ever written into the installed package)
  EDGEFACE_RUNTIME  litert | tflite_runtime | tensorflow (default: the first that imports)
  EDGEFACE_KERNELS  optimized | reference: the runtime's portable reference kernels, bit-exact across
                    platforms and several times slower; for cross-platform checks, not for deployment
  EDGEFACE_DEVICE_CONFIG  edgeface-device's TOML configuration
  tests only: EDGEFACE_TEST_MODELS (a prebuilt models folder), EDGEFACE_ARM64_PROOF=1 (run the arm64 proof)
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
                          enhance=getattr(args, "enhance", "none"), detector=args.detector,
                          min_face=args.min_face, flip=False if getattr(args, "no_flip", False) else None)


def _read(path: str):
    from .preprocess import read_image

    return read_image(path)


def _each_image(args, analyse, describe) -> int:
    """Run ``analyse(image)`` on every file of ``args.images`` and print ``describe(path, result)``.

    ``describe`` returns the (JSON payload, text line) pair for :func:`_emit`. A file that cannot be used as an
    image gets a one-line error and the run goes on with the others; the exit status is 1 when any file failed,
    else 0. Any other error (a corrupt gallery, a broken model) is not the file's fault: it stops the run.
    """
    from .preprocess import ImageError

    failed = 0
    for path in args.images:
        try:
            result = analyse(_read(path))
        except ImageError as exc:
            _error(message(exc))
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
    except EdgefaceError as exc:
        _error(message(exc))
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


def _gallery(args, rec=None, create=False):
    """The gallery of ``--gallery``; only enrollment creates a missing one (a typo is an error, not a new file)."""
    from .gallery import Gallery

    if rec is None:
        return Gallery.open(args.gallery)
    return Gallery(args.gallery, rec.embedder_id, rec.embedder.dim, create=create)


def _name(name: str) -> str:
    """A person's name as printed: non-printable characters escaped, long names cut (older galleries)."""
    from .gallery import escape_name

    return escape_name(name)


def cmd_enroll(args) -> int:
    from .enroll import EnrollResult, embed_photos
    from .gallery import check_name

    args.name = check_name(args.name)  # before the models load: a bad name is refused at once
    rec = _recognizer(args)
    embeddings, accepted, rejected = embed_photos(rec, args.images)
    for source, reason in rejected:
        _error(f"{source}: {reason}")
    total, created = 0, False
    if embeddings:  # a gallery is created only when someone is enrolled into it
        import numpy as np

        with _gallery(args, rec, create=True) as g:
            total = g.enroll(args.name, np.stack(embeddings), accepted if args.keep_source else None)
            created = g.created
    result = EnrollResult(args.name, accepted, rejected, total)
    _emit(args, dict(result.to_json(), created_gallery=created),
          (f"created gallery {args.gallery} (readable by its owner only)\n" if created else "")
          + f"enrolled {len(accepted)} photo(s) of {_name(args.name)} ({total} in the gallery), "
            f"{len(rejected)} rejected")
    return 0 if accepted and not rejected else 1


def cmd_identify(args) -> int:
    from .gallery import Gallery

    Gallery.read_meta(args.gallery)  # a missing or wrong gallery fails before the models load
    rec = _recognizer(args)

    def describe(path, ids):
        payload = {"image": path, "threshold": rec.min_cosine_similarity, "faces": [
            dict(i.face.to_json(), name=i.name, similarity=round(i.similarity, 4)) for i in ids]}
        text = f"{path}: {len(ids)} face(s)" + "".join(
            f"\n  {_name(i.name) if i.name else 'unknown':20} similarity {i.similarity:.3f} box "
            f"{[round(float(v)) for v in i.face.box]}" for i in ids)
        return payload, text

    with _gallery(args, rec) as g:
        return _each_image(args, lambda image: rec.identify(image, g), describe)


GALLERY_ACTIONS = {  # action: (min names, max names, usage)
    "list": (0, 0, "gallery list"), "check": (0, 0, "gallery check"),
    "remove": (1, None, "gallery remove NAME [NAME ...]"), "forget": (1, None, "gallery forget NAME [NAME ...]"),
    "rename": (2, 2, "gallery rename OLD NEW"),
}


def cmd_gallery(args) -> int:
    low, high, usage = GALLERY_ACTIONS[args.action]
    if not low <= len(args.names) <= (high if high is not None else len(args.names)):
        _error(f"{usage}: expected {low if low == high else f'at least {low}'} name(s), got {len(args.names)}")
        return 2
    if args.action == "check":
        from .gallery import Gallery, check_gallery

        Gallery.read_meta(args.gallery)  # not a gallery at all: one error line
        problems = check_gallery(args.gallery)
        _emit(args, {"gallery": args.gallery, "ok": not problems, "problems": problems},
              f"{args.gallery}: ok" if not problems else "\n".join(f"{args.gallery}: {p}" for p in problems))
        return 0 if not problems else 1
    with _gallery(args) as g:
        if args.action == "list":
            people = g.people()
            _emit(args, {"people": [p._asdict() for p in people]},
                  "\n".join(f"{_name(p.name):24} {p.num_embeddings:3} embedding(s)  since {p.created}"
                            for p in people) or "(empty gallery)")
        elif args.action in ("remove", "forget"):
            done = g.forget(*args.names) if args.action == "forget" else g.remove(*args.names)
            lines = []
            for f in done:
                lines.append(f"{'forgot' if args.action == 'forget' else 'removed'} {_name(f.name)}: "
                             f"{f.embeddings} embedding(s)"
                             + (f", {len(f.sources)} stored photo path(s)" if f.sources else ""))
            if args.action == "forget":
                lines.append(f"{g.path}: deleted rows overwritten and write-ahead log truncated; this CLI keeps "
                             "no events or snapshots (a door's event log and snapshots are erased by the "
                             "edgeface-device equivalent)")
            _emit(args, {args.action + ("" if args.action == "forget" else "d"): [f._asdict() for f in done]},
                  "\n".join(lines))
        elif args.action == "rename":
            g.rename(args.names[0], args.names[1])
            _emit(args, {"renamed": args.names}, f"renamed {_name(args.names[0])} to {_name(args.names[1])}")
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
        r = evaluate_lfw(rec, data, pairs, limit=args.limit,
                         progress=lambda it, d=f"LFW {pairs.name} {precision}": progress(it, d))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeface", description=__doc__.split("\n")[0],
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .preprocess import ENHANCEMENTS

    def common(p, precisions=("int8", "float32", "float")):
        p.add_argument("--json", action="store_true", help="print JSON (one object per line)")
        p.add_argument("--models", default=os.environ.get("EDGEFACE_MODELS", "models"),
                       help="models folder from `edgeface build` (default: $EDGEFACE_MODELS or ./models)")
        p.add_argument("--precision", choices=list(precisions), default="int8",
                       help="model precision: int8 (default) or float32 (alias: float)"
                            + (", or both side by side" if "both" in precisions else ""))
        p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
        p.add_argument("--accelerator", choices=["cpu", "edgetpu"], default=None,
                       help="run on a Coral Edge TPU (needs libedgetpu and compiled models)")
        p.add_argument("--min-score", type=float, default=None,
                       help="minimum detection score in (0,1) (default: the detector manifest's)")
        p.add_argument("--detector", default=None, metavar="NAME",
                       help="detector from the models folder's models.json (default: its default_detector, "
                            "'auto' in a current build: faces from --min-face pixels to the whole frame; "
                            "'short_range': one fast pass for faces filling much of the frame; 'full_range')")
        p.add_argument("--min-face", type=int, default=None, metavar="PX",
                       help="smallest face to find, in pixels (default: the detector's; auto: 20, or 1/64 of "
                            "the longer side of photos over 1280 px); large frames are also searched on tiles "
                            "for faces this small, ~4x the tiles per halving; 0 = whole-frame passes only")
        p.add_argument("--tiles", type=int, default=1,
                       help="also detect on a fixed grid of N x N overlapping tiles, for very large photos "
                            "(tile faces never replace a whole-frame face)")
        p.add_argument("--no-flip", action="store_true",
                       help="embed each face crop once, never also its mirror image (the default build averages "
                            "both: LFW int8 99.32%% instead of 99.15%%; verify and eval embed twice per face, "
                            "identify only for a face scored near the threshold)")
        p.add_argument("--enhance", choices=list(ENHANCEMENTS), default="none",
                       help="brighten dark or backlit images before detection: equalize recovers dark, "
                            "hazy photos (82%% -> 98.7%% on degraded LFW pairs) and costs nothing on good ones; "
                            "enroll with the same setting")
        return p

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
    p.add_argument("--gallery", required=True,
                   help="SQLite gallery file (created if missing, readable by its owner only)")
    p.add_argument("--name", required=True, help="the person's name: 1-64 printable characters on one line")
    p.add_argument("--keep-source", action="store_true",
                   help="also store each photo's path in the gallery (default: only the embeddings are stored)")
    p.add_argument("images", nargs="+", metavar="IMG")
    p.set_defaults(func=cmd_enroll)

    p = common(sub.add_parser("identify", help="name the faces in photos", description="Match every face against "
                                                                                     "a gallery."))
    p.add_argument("--gallery", required=True)
    p.add_argument("--threshold", type=float, default=None, help="min_cosine_similarity for a positive match")
    p.add_argument("images", nargs="+", metavar="IMG")
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("gallery", help="list, check, remove, forget or rename enrolled people",
                       description="list: who is enrolled. check: SQLite integrity check of the file. "
                                   "remove NAME...: delete people and their embeddings (all named people or "
                                   "none). forget NAME...: remove, then truncate the write-ahead log so no copy "
                                   "is left in the gallery files, and print what was erased. rename OLD NEW.")
    p.add_argument("action", choices=list(GALLERY_ACTIONS))
    p.add_argument("names", nargs="*", help="remove|forget NAME [NAME ...] | rename OLD NEW")
    p.add_argument("--gallery", required=True, help="an existing gallery file (never created here)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gallery)

    p = common(sub.add_parser("eval", help="accuracy on LFW pairs",
                              description="LFW verification: 10-fold accuracy (threshold chosen on the other nine "
                                          "folds), ROC AUC, TAR at FAR 1e-3. Pairs whose face is not found count "
                                          "as errors and are reported."),
               precisions=("int8", "float32", "float", "both"))
    p.add_argument("dataset", choices=["lfw"])
    p.add_argument("--data", required=True, help="LFW folder (holding images_deepfunneled/ and pairs files)")
    p.add_argument("--pairs", default=None, help="pairs file (default pairs.txt; pairsDevTest.txt for the dev split)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs (quick check)")
    p.add_argument("--out", help="also write the JSON results here")
    p.set_defaults(func=cmd_eval)
    _add_plugins(sub)
    return parser


PLUGIN_GROUP = "edgeface.commands"
# commands that live in optional parts of the distribution, and what to install when they are missing
EXTRA_COMMANDS = {"build": "convert", "prune": "convert", "variants": "convert", "onnx": "convert",
                  "edgetpu": "convert", "metadata": "convert", "report": "convert", "bench": "dev"}


def _add_plugins(sub) -> None:
    """Let installed parts add their subcommands: every entry point of the group ``edgeface.commands``
    (setup.cfg) is a function ``register(subparsers)``. The core never imports them by name.

    A plug-in command sets ``argv=True`` in its defaults to get the raw arguments after its name instead of
    parsed options (``bench`` has its own parser). A known command whose plug-in is missing says what to
    install.
    """
    from importlib.metadata import entry_points

    eps = entry_points()
    eps = eps.select(group=PLUGIN_GROUP) if hasattr(eps, "select") else eps.get(PLUGIN_GROUP, [])  # 3.9: a dict
    for ep in sorted(eps, key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # a broken optional part must not take the core commands down
            logging.getLogger(__name__).warning("edgeface plug-in %s (%s) does not import: %s", ep.name, ep.value, exc)
            continue
        register(sub)
    for name, extra in EXTRA_COMMANDS.items():
        if name not in sub.choices:
            p = sub.add_parser(name, add_help=False, help=f"(needs: pip install 'edgeface[{extra}]')")
            p.set_defaults(argv=True, func=lambda argv, name=name, extra=extra: _missing(name, extra))


def _missing(name: str, extra: str) -> int:
    _error(f"`edgeface {name}` is not installed: pip install 'edgeface[{extra}]'")
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "argv", False):  # the plug-in parses its own arguments
        return run_cli("edgeface", args.func, argv[argv.index(args.command) + 1:])
    if unknown:
        parser.parse_args(argv)  # exits with the subcommand's own usage line and error
    if getattr(args, "threads", None) is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return run_cli("edgeface", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
