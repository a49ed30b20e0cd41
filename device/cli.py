"""``edgeface-device``: the door access controller / Coral kiosk on a Raspberry Pi.

    edgeface-device --print-config > /etc/edgeface/device.toml
    edgeface-device -c device.toml doctor
    edgeface-device -c device.toml enroll --name ada photo1.jpg photo2.jpg      # or --camera
    edgeface-device -c device.toml run                  # --dry-run: mock relay; --kiosk: overlay
    edgeface-device -c device.toml events --limit 20
    edgeface-device -c device.toml gallery forget ada     # erase a person: embeddings, events, snapshots
    edgeface-device demo --models models --lfw ../shared/data/lfw/images_deepfunneled --work /tmp/door-demo

Exit status: 0 ok, 1 some input rejected / demo criteria not met, 2 cannot start (the door stays locked).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from edgeface.errors import run_cli
from edgeface.gallery import escape_name

from . import config as config_mod


def _error(msg: str) -> None:
    print(f"edgeface-device: error: {msg}", file=sys.stderr)


def _load_config(args) -> config_mod.DeviceConfig:
    cfg = config_mod.load(args.config)
    over = {}
    if getattr(args, "models", None):
        over.setdefault("models", {})["dir"] = args.models
    if getattr(args, "gallery", None):
        over.setdefault("gallery", {})["path"] = args.gallery
    if getattr(args, "events_db", None):
        over.setdefault("events", {})["path"] = args.events_db
    if getattr(args, "source", None):
        over.setdefault("source", {})["uri"] = args.source
    if getattr(args, "source_kind", None):
        over.setdefault("source", {})["kind"] = args.source_kind
    if getattr(args, "dry_run", False):
        over.setdefault("door", {})["pin_factory"] = "mock"
    return cfg.replace(**over) if over else cfg


def cmd_run(args) -> int:
    from .app import DoorApp

    cfg = _load_config(args)
    if args.kiosk and args.no_door:
        cfg = cfg.replace(door={"enabled": False})
    elif args.no_door:
        cfg = cfg.replace(door={"enabled": False})
    video = cfg.source.kind in ("video", "folder") and not cfg.source.realtime
    app = DoorApp(cfg, clock="frame" if video else "wall")  # logs the weak-threshold warning, if any
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    display = None
    if args.kiosk:
        from .kiosk import KioskDisplay

        display = KioskDisplay(cfg.kiosk.display, cfg.kiosk.window_title)

    def on_frame(frame, loop, decisions):
        if display is not None:
            display(frame, loop, decisions)
        for d in decisions:
            print(json.dumps(d.to_json()) if args.json else
                  f"frame {d.frame:6d} track {d.track:4d} {d.decision:8} {escape_name(d.identity or 'unknown'):24} "
                  f"{d.score:.3f}  {escape_name(d.detail, 400)}", flush=True)

    try:
        loop = app.run(max_frames=args.max_frames, stop=lambda: bool(stopping) or bool(display and display.quit),
                       on_frame=on_frame)
    except KeyboardInterrupt:
        loop = app.loop
    finally:
        app.close()
        if display is not None:
            display.close()
    stats = dict(loop.stats)
    if args.json:
        print(json.dumps({"stats": stats, "latency": loop.timer.summary()}))
    else:
        print(f"\n{stats.get('frames', 0)} frames, {stats.get('bad_frames', 0)} bad frames skipped, "
              f"{stats.get('embeddings', 0)} embeddings, decisions: "
              + ", ".join(f"{k[9:]} {v}" for k, v in sorted(stats.items()) if k.startswith("decision_")))
        print("per-stage latency:\n" + loop.timer.table())
    return 0


def cmd_enroll(args) -> int:
    from .app import load_recognizer
    from .crypto import gallery_file, make_cipher
    from .enroll import enroll_from_camera, enroll_photos
    from .sources import Backoff, ReconnectingSource, make_source

    cfg = _load_config(args)
    rec = load_recognizer(cfg)
    if not args.camera and not args.photos:
        _error("give photos, or --camera to enroll from the camera")
        return 2
    with gallery_file(cfg.gallery.path, make_cipher(cfg.encryption), rec.embedder_id, rec.embedder.dim,
                      write=True) as g:
        if args.camera:
            src = ReconnectingSource(make_source(cfg.source), Backoff(cfg.source.reopen_initial_seconds,
                                                                      cfg.source.reopen_max_seconds))
            result = enroll_from_camera(rec, g, args.name, src, cfg.enroll, cfg.quality,
                                        on_progress=lambda m: print(m, flush=True), keep_source=args.keep_source)
        else:
            result = enroll_photos(rec, g, args.name, args.photos, None if args.no_quality_gates else cfg.quality,
                                   keep_source=args.keep_source)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        for source, reason in result.rejected:
            _error(f"{escape_name(source, 400)}: {reason}")
        print(f"enrolled {len(result.accepted)} crop(s) of {escape_name(args.name)} ({result.total_embeddings} in "
              f"{cfg.gallery.path}), {len(result.rejected)} rejected")
    return 0 if result.accepted and not result.rejected else 1


def cmd_events(args) -> int:
    from .events import EventLog

    cfg = _load_config(args)
    with EventLog(cfg.events.path, readonly=True) as ev:  # reads only: never creates or changes the file
        rows = ev.events(limit=args.limit, kind=args.kind)
    for e in rows:
        if args.json:
            print(json.dumps(e.to_json()))
        else:
            score = "" if e.score is None else f"{e.score:.3f}"
            who = escape_name(e.identity) if e.identity is not None else "unknown" if e.kind == "access" else ""
            print(f"{escape_name(e.time)}  {escape_name(e.kind):15} {escape_name(e.decision or ''):8} {who:24}"
                  f" {score:6} {escape_name(e.detail or '', 400)}")
    return 0


def cmd_gallery(args) -> int:
    from .crypto import Cipher, encrypt_gallery_file, gallery_file, key_path, make_cipher, read_key
    from .privacy import forget_person, rename_person

    cfg = _load_config(args)
    if args.action == "encrypt":  # a plain gallery -> sealed with the [encryption] key
        if not (cfg.encryption.key_file or cfg.encryption.credential):
            _error("gallery encrypt needs [encryption] key_file or credential")
            return 2
        size = encrypt_gallery_file(cfg.gallery.path, Cipher(read_key(key_path(cfg.encryption))))
        print(f"encrypted {cfg.gallery.path} ({size} bytes); set [encryption] enabled = true")
        return 0
    cipher = make_cipher(cfg.encryption)
    if args.action == "list":
        with gallery_file(cfg.gallery.path, cipher) as g:
            people = g.people()
        for p in people:
            print(json.dumps(p._asdict()) if args.json else f"{escape_name(p.name):40} {p.num_embeddings:3d} embeddings"
                                                             f"  enrolled {p.created}")
        return 0
    if args.action == "forget":
        if len(args.names) != 1:
            _error("gallery forget takes one NAME")
            return 2
        r = forget_person(args.names[0], cfg.gallery.path, cfg.events.path, cfg.events.snapshot_dir or None, cipher)
        if args.json:
            print(json.dumps(r.to_json()))
        else:
            print(f"forgot {escape_name(r.name)}: {r.embeddings} embedding(s) from {cfg.gallery.path}, {r.events} "
                  f"event(s) from {cfg.events.path}, {r.snapshots} snapshot file(s)")
        if not (r.embeddings or r.events or r.snapshots):
            _error(f"nothing stored about {escape_name(r.name)}")
            return 1
        return 0
    if len(args.names) != 2:
        _error("gallery rename takes OLD NEW")
        return 2
    old, new = args.names
    n = rename_person(old, new, cfg.gallery.path, cfg.events.path, cipher)
    print(json.dumps({"old": old, "new": new, "events": n}) if args.json else
          f"renamed {escape_name(old)} to {escape_name(new)} in {cfg.gallery.path} and in {n} event(s)")
    return 0


def cmd_key(args) -> int:
    from .crypto import new_key

    path = new_key(args.path)
    print(f"wrote a new 256-bit key to {path} (mode 600). Keep a copy somewhere safe: without it the encrypted "
          "gallery and snapshots cannot be read")
    return 0


def cmd_decrypt(args) -> int:
    from .crypto import Cipher, key_path, read_key

    cfg = _load_config(args)
    if not (cfg.encryption.key_file or cfg.encryption.credential):
        _error("decrypt needs [encryption] key_file or credential")
        return 2
    src = Path(args.file)
    data = Cipher(read_key(key_path(cfg.encryption))).open(src.read_bytes(), src.name.encode(), f"snapshot {src}")
    from edgeface.private import write_private

    write_private(args.output, data)
    print(f"wrote {args.output} ({len(data)} bytes, mode 600)")
    return 0


def doctor(cfg) -> list[dict]:
    """Checks of runtime, delegate, models, gallery, camera, relay and display: [{check, ok, detail}]
    (``warning: True`` on a passing check that must be read, e.g. an allowed weak threshold)."""
    out = []

    def add(check, ok, detail, warn=False):
        out.append({"check": check, "ok": bool(ok), "detail": detail, **({"warning": True} if warn else {})})

    from edgeface import runtime
    try:
        rt = runtime.get_runtime()
    except runtime.RuntimeNotFoundError as exc:
        add("runtime", False, str(exc))
        rt = None
    if rt is not None:
        try:
            kernels = runtime.get_kernels()
            problem = None if kernels == "optimized" else (
                f"EDGEFACE_KERNELS={kernels}: reference kernels are several times slower (for proofs, not the door)")
        except ValueError as exc:
            problem = str(exc)
        add("runtime", problem is None, f"{rt.name} {rt.version}" + ("" if problem is None else f"; {problem}"))
        try:
            runtime.load_edgetpu_delegate(rt)
            add("edgetpu", True, f"{runtime.EDGETPU_LIBRARY} loads (Coral present)")
        except Exception as exc:  # noqa: BLE001 - doctor reports any failure as a failed check
            needed = cfg.models.accelerator == "edgetpu" and not cfg.models.allow_cpu_fallback
            add("edgetpu", not needed, f"no Edge TPU ({str(exc).splitlines()[0][:120]})"
                                       + ("; REQUIRED by [models] accelerator" if needed else "; CPU is used"))
    rec = None
    try:
        from .app import load_recognizer, precision_label

        rec = load_recognizer(cfg)
        add("models", True, f"{Path(rec.detector.manifest['model_file']).name} + "
                            f"{rec.embedder.manifest['model_file']} ({precision_label(cfg, rec)}); sha256 verified; "
                            f"threshold min_cosine_similarity {rec.min_cosine_similarity:.4f} "
                            f"({rec.door_threshold.source})")
        if cfg.models.precision == "auto":
            add("precision", True, f"auto: {rec.precision} ({rec.precision_choice.reason})")
        if rec.door_threshold.warning:
            add("threshold", True, rec.door_threshold.warning, warn=True)
        alignment = rec.embedder.alignment
        fallback = "fallback" in alignment
        add("alignment", True, f"embedder crops aligned on {alignment}"
            + (": the embedder's recipe wants five-point landmarks and the models folder has no landmark model; "
               "rebuild with `edgeface build` for the calibrated accuracy" if fallback else
               f" ({Path(rec.embedder.landmarker.manifest['model_file']).name})"
               if rec.embedder.landmarker is not None else ""), warn=fallback)
        manifest_flip = bool(rec.embedder.section.get("flip", False))
        add("flip", True, f"test-time flip {'on' if rec.embedder.flip else 'off'} (the manifest's thresholds were "
            f"calibrated {'with' if manifest_flip else 'without'} it)"
            + ("" if rec.embedder.flip == manifest_flip else "; [models] flip differs from the calibration"),
            warn=rec.embedder.flip != manifest_flip)
    except Exception as exc:  # noqa: BLE001 - doctor reports any failure as a failed check
        add("models", False, f"{cfg.models.dir}: {exc}")
    try:
        from edgeface.gallery import CorruptGalleryError, check_gallery

        from .crypto import gallery_file, make_cipher

        cipher = make_cipher(cfg.encryption)
        with gallery_file(cfg.gallery.path, cipher) as g:
            problems = check_gallery(g.path)  # PRAGMA quick_check and every embedding (g.path: the RAM copy if sealed)
            if problems:
                raise CorruptGalleryError(f"{cfg.gallery.path} is corrupt ({'; '.join(problems[:3])}): restore a "
                                          "backup or re-enroll")
            meta = g.read_meta(g.path)
            people = len(g)
            embeddings = sum(p.num_embeddings for p in g.people())
        ok = rec is None or (meta.embedder_id, meta.dim) == (rec.embedder_id, rec.embedder.dim)
        add("gallery", ok and people > 0, f"{cfg.gallery.path}: {people} people, embedder {meta.embedder_id}"
            + (", encrypted" if cipher is not None else "")
            + ("" if ok else f" - DOES NOT MATCH the models' {rec.embedder_id}: re-enroll")
            + ("" if people else " - empty: enroll people first"))
        from .app import gallery_risk_note

        note = gallery_risk_note(cfg, embeddings)
        if note:
            add("threshold", True, note)  # advice, not a fault
        op = cfg.recognition.operating_point
        if rec is not None and op.startswith("fpir_") and cfg.recognition.min_cosine_similarity is None:
            from edgeface.embed import open_set_point

            try:
                point = open_set_point(rec.embedder.section.get("operating_points") or {}, op, people)
                add("threshold", "higher than" not in point.reason,
                    f"{op} for {people} enrolled people: using {point.name}, min_cosine_similarity "
                    f"{point.min_cosine_similarity:.4f} ({point.reason})")
            except KeyError as exc:
                add("threshold", False, f"{exc.args[0]}: rebuild the models")
    except Exception as exc:  # noqa: BLE001 - doctor reports any failure as a failed check
        add("gallery", False, str(exc))
    if cfg.encryption.enabled:
        try:
            from .crypto import key_path, make_cipher

            make_cipher(cfg.encryption)
            add("crypto", True, f"AES-256-GCM at rest (gallery, snapshots), key {key_path(cfg.encryption)}")
        except Exception as exc:  # noqa: BLE001 - doctor reports any failure as a failed check
            add("crypto", False, str(exc))
    from .events import check_event_log

    add("events", *check_event_log(cfg.events.path, cfg.events.snapshot_dir or None))
    from .sources import SourceError, make_source, picamera2_available

    src = make_source(cfg.source)
    try:
        src.open()
        frame = src.read()
        src.close()
        add("camera", frame is not None, f"{src.name}: " + (f"frame {frame.image.shape[1]}x{frame.image.shape[0]}"
                                                             if frame is not None else "opened but no frame"))
    except (SourceError, Exception) as exc:  # noqa: BLE001 - doctor reports any failure as a failed check
        add("camera", False, f"{src.name}: {exc}" + ("" if picamera2_available() else
                                                    " (picamera2 not importable: sudo apt install python3-picamera2,"
                                                    " venv with --system-site-packages)"))
    if cfg.door.enabled:
        try:
            from .door import DoorController

            with DoorController(cfg.door, relock_timer=False) as door:
                add("door", True, f"relay on GPIO{cfg.door.gpio_pin} via {type(door.pin_factory or 'default').__name__}"
                                  f" ({cfg.door.pin_factory}), locked")
        except Exception as exc:  # noqa: BLE001 - doctor reports any failure as a failed check
            add("door", False, str(exc))
    else:
        add("door", True, "relay disabled in [door]")
    if cfg.site.enabled:  # the site link: broker reachable, TLS, auth, gallery version vs hub
        from .site.link import doctor_checks

        for check, ok, detail in doctor_checks(cfg.site, cfg.gallery.path):
            add(check, ok, detail)
    from .app import has_display

    add("display", True, "display available (kiosk overlay)" if has_display() else "headless (no display or no GUI)")
    return out


def cmd_doctor(args) -> int:
    cfg = _load_config(args)
    checks = doctor(cfg)
    for c in checks:
        status = "BAD" if not c["ok"] else "WRN" if c.get("warning") else "ok "
        print(json.dumps(c) if args.json else f"{status} {c['check']:8} {c['detail']}")
    return 0 if all(c["ok"] for c in checks) else 1


def cmd_demo(args) -> int:
    from .demo import run_demo

    cfg = _load_config(args)
    result = run_demo(cfg.models.dir, args.lfw, args.work, base_cfg=cfg, n_enrolled=args.enrolled,
                      n_strangers=args.strangers, visits_per_person=args.visits, photo_attacks=args.photo_attacks,
                      seed=args.seed, rebuild=args.rebuild)
    if args.json:
        result.pop("latency_table")
        print(json.dumps(result))
    else:
        for v in result["visits"]:
            print(f"{v['kind']:12} {v['person']:28} frames {v['frames'][0]:4d}-{v['frames'][1]:4d} "
                  f"{'UNLOCKED' if v['unlocked'] else 'locked  '}  {', '.join(v['decisions'])}")
        print(json.dumps(result["summary"], indent=1))
        print(f"{result['frames']} frames; threshold min_cosine_similarity {result['threshold']:.4f}; "
              f"{result['events_logged']} events logged")
        print("per-stage latency:\n" + result["latency_table"])
    return 0 if result["summary"]["done"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeface-device", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=os.environ.get("EDGEFACE_DEVICE_CONFIG"),
                   help="TOML configuration (default $EDGEFACE_DEVICE_CONFIG, else built-in defaults)")
    p.add_argument("--print-config", action="store_true", help="print the full commented default configuration")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp):
        sp.add_argument("--models", help="override [models] dir")
        sp.add_argument("--gallery", help="override [gallery] path")
        sp.add_argument("--json", action="store_true", help="JSON output")
        return sp

    sp = common(sub.add_parser("run", help="run the door controller (or the kiosk with --kiosk)"))
    sp.add_argument("--source", help="override [source] uri")
    sp.add_argument("--source-kind", choices=["auto", "picamera2", "opencv", "video", "folder"])
    sp.add_argument("--events-db", help="override [events] path")
    sp.add_argument("--dry-run", action="store_true", help="mock relay pin (nothing is switched)")
    sp.add_argument("--no-door", action="store_true", help="no relay at all: only report decisions")
    sp.add_argument("--kiosk", action="store_true", help="overlay window when a display exists")
    sp.add_argument("--max-frames", type=int, help="stop after N frames")
    sp.set_defaults(func=cmd_run)

    sp = common(sub.add_parser("enroll", help="enroll a person from photos or the camera"))
    sp.add_argument("--name", required=True)
    sp.add_argument("--camera", action="store_true", help="collect [enroll] samples good crops from the camera")
    sp.add_argument("--source", help="override [source] uri (with --camera)")
    sp.add_argument("--source-kind", choices=["auto", "picamera2", "opencv", "video", "folder"])
    sp.add_argument("--no-quality-gates", action="store_true", help="accept photos that fail the quality gates")
    sp.add_argument("--keep-source", action="store_true",
                    help="also store each photo's path (or camera frame label) in the gallery "
                         "(default: only the embeddings are stored)")
    sp.add_argument("photos", nargs="*")
    sp.set_defaults(func=cmd_enroll)

    sp = sub.add_parser("events", help="show the access-event log")
    sp.add_argument("--events-db", help="override [events] path")
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--kind", help="only this kind (access, camera_lost, error, ...)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_events)

    sp = sub.add_parser("key", help="create a key for [encryption]: key new PATH")
    sp.add_argument("action", choices=["new"])
    sp.add_argument("path")
    sp.set_defaults(func=cmd_key)

    sp = sub.add_parser("decrypt", help="decrypt one encrypted snapshot (*.jpg.aesgcm) to a JPEG file")
    sp.add_argument("file")
    sp.add_argument("-o", "--output", required=True, help="JPEG to write (created 0600; never overwritten)")
    sp.set_defaults(func=cmd_decrypt)

    sp = common(sub.add_parser(
        "gallery", help="list, forget (erase) or rename enrolled people on the device",
        description="list: enrolled people. forget NAME: erase a person - their embeddings, every access event "
                    "naming them and those events' snapshots - and print what was removed (exit 1 if nothing was "
                    "stored). rename OLD NEW: in the gallery and in every event, so the old name is not kept. "
                    "encrypt: seal a plain gallery in place with the [encryption] key."))
    sp.add_argument("action", choices=["list", "forget", "rename", "encrypt"])
    sp.add_argument("names", nargs="*", metavar="NAME")
    sp.add_argument("--events-db", help="override [events] path")
    sp.set_defaults(func=cmd_gallery)

    sp = common(sub.add_parser("doctor", help="what runtime, delegate, camera, models and gallery are found"))
    sp.add_argument("--source", help="override [source] uri")
    sp.add_argument("--source-kind", choices=["auto", "picamera2", "opencv", "video", "folder"])
    sp.add_argument("--dry-run", action="store_true", help="check the relay with a mock pin")
    sp.set_defaults(func=cmd_doctor)

    sp = sub.add_parser("demo", help="door demo on a video built from LFW photos (no camera needed)",
                        description="Builds a video of people walking up to a door from LFW photos, enrolls some "
                                    "of them from other photos, runs the real door loop on it (detect, align, "
                                    "embed, k-of-n decision, liveness check, relay, event log) and counts "
                                    "unlocks per kind of visit. The larger setting of the docs: --enrolled 10 "
                                    "--strangers 10 --visits 2 --photo-attacks 10.")
    sp.add_argument("--models", help="override [models] dir")
    sp.add_argument("--lfw", required=True, help="LFW images folder (images_deepfunneled)")
    sp.add_argument("--work", required=True, help="folder for the video, gallery and event log")
    sp.add_argument("--enrolled", type=int, default=6, help="people enrolled in the gallery (default 6)")
    sp.add_argument("--strangers", type=int, default=6,
                    help="people who walk up but are not enrolled: each unlock is a failure (default 6)")
    sp.add_argument("--visits", type=int, default=2, help="visits per enrolled person (default 2)")
    sp.add_argument("--photo-attacks", type=int, default=6,
                    help="visits with an enrolled person's photo moved rigidly, as a printed photo held up "
                         "would be; the liveness check should refuse them (default 6)")
    sp.add_argument("--seed", type=int, default=4, help="which LFW people and photos are drawn (default 4)")
    sp.add_argument("--rebuild", action="store_true", help="rebuild the video and gallery")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.print_config:
        print(config_mod.default_toml())
        return 0
    if not args.command:
        parser.print_help()
        return 2
    return run_cli("edgeface-device", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
