"""``edgeface-hub``: the site hub.

    edgeface-hub init-site --site office --doors front,back --host broker.lan --out site/   # broker+hub+doors
    edgeface-hub passwd --hub site/hub                    # the web page's administrator password (stdin)
    edgeface-hub serve --hub site/hub --models models     # MQTT + web page on http://127.0.0.1:8080
    edgeface-hub enroll --hub site/hub --models models --name Ada ada1.jpg ada2.jpg

Exit status: 0 ok, 1 some input rejected, 2 cannot start.
"""
from __future__ import annotations

import argparse
import getpass
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from edgeface.errors import EdgefaceError

PROG = "edgeface-hub"


def _load(args):
    from .service import Hub, load_config

    cfg = load_config(Path(args.hub) / "hub.json")
    if args.models:
        cfg["models"] = [{"dir": m, "precision": args.precision} for m in args.models]
    if not cfg.get("models"):
        raise EdgefaceError("no models: give --models DIR (one per embedder space the doors run)")
    from edgeface import FaceRecognizer

    recs = []
    for m in cfg["models"]:
        rec = FaceRecognizer(m["dir"], precision=m.get("precision", "int8"))
        from ...app import manifest_threshold

        rec.min_cosine_similarity = manifest_threshold(rec.embedder, "far_0.001")
        recs.append(rec)
    return Hub(cfg, recs)


def cmd_init_site(args) -> int:
    from ..broker import make_site

    doors = [d for d in args.doors.split(",") if d]
    paths = make_site(args.out, args.site, doors, host=args.host, port=args.port, extra_hosts=args.extra_host,
                      bind=args.bind)
    print(f"site {args.site} written to {paths.root}:")
    print(f"  broker: mosquitto -c {paths.broker / 'mosquitto.conf'}   (chown -R mosquitto {paths.broker})")
    print(f"  hub:    edgeface-hub passwd --hub {paths.hub} && edgeface-hub serve --hub {paths.hub} --models MODELS")
    for d, folder in paths.doors.items():
        print(f"  door {d}: copy {folder} to the door; append site.toml to its device.toml")
    print(f"  Home Assistant MQTT user: {'homeassistant'} password {paths.passwords['homeassistant']}")
    return 0


def cmd_passwd(args) -> int:
    from .web import hash_password

    pw = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass("new hub password: ")
    if len(pw) < 8:
        print(f"{PROG}: error: the password needs at least 8 characters", file=sys.stderr)
        return 1
    path = Path(args.hub) / "admin_password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(hash_password(pw) + "\n")
    print(f"password set ({path})")
    return 0


def _secret(hub_dir: Path) -> str:
    path = hub_dir / "session.key"
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip()


def cmd_serve(args) -> int:
    import uvicorn

    from .web import create_app

    hub_dir = Path(args.hub)
    admin = hub_dir / "admin_password"
    if not admin.is_file():
        raise EdgefaceError(f"no administrator password: run {PROG} passwd --hub {hub_dir}")
    hub = _load(args).start()
    app = create_app(hub, admin.read_text(), _secret(hub_dir))
    bind = args.bind or hub.cfg.get("bind", "127.0.0.1")
    port = args.port or int(hub.cfg.get("http_port", 8080))
    logging.getLogger(__name__).info("web page on http://%s:%d", bind, port)
    try:
        uvicorn.run(app, host=bind, port=port, log_level="warning")
    finally:
        hub.close()
    return 0


def cmd_enroll(args) -> int:
    hub = _load(args).start()
    try:
        hub.wait_connected(10)
        images = [(Path(p).name, Path(p).read_bytes()) for p in args.photos]
        r = hub.enroll_images(args.name, images)
        hub.flush()
    finally:
        hub.close()
    for n, why in r.rejected:
        print(f"{PROG}: error: {n}: {why}", file=sys.stderr)
    print(f"enrolled {args.name} from {len(r.accepted)} photo(s)" if r.person_id else f"{args.name} not enrolled")
    return 0 if r.person_id and not r.rejected else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("init-site", help="write a site: Mosquitto config (TLS CA, passwords, ACL), hub, doors")
    sp.add_argument("--site", required=True, help="site name (MQTT topics edgeface/<site>/...)")
    sp.add_argument("--doors", required=True, help="comma-separated door ids (also their MQTT user names)")
    sp.add_argument("--host", default="127.0.0.1", help="the broker's host name or IP as doors reach it "
                                                        "(goes into its TLS certificate)")
    sp.add_argument("--extra-host", action="append", default=[], help="more names/IPs for the certificate")
    sp.add_argument("--port", type=int, default=8883, help="MQTT over TLS port")
    sp.add_argument("--bind", default="127.0.0.1", help="the broker listens here (0.0.0.0 for other machines)")
    sp.add_argument("--out", required=True, help="output folder")
    sp.set_defaults(fn=cmd_init_site)
    sp = sub.add_parser("passwd", help="set the web page's administrator password (read from stdin)")
    sp.add_argument("--hub", required=True, help="the hub folder (holds hub.json)")
    sp.set_defaults(fn=cmd_passwd)
    for name, fn, text in (("serve", cmd_serve, "run the hub: MQTT and the web page"),
                           ("enroll", cmd_enroll, "enroll a person from photos (published to every door)")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--hub", required=True, help="the hub folder (holds hub.json)")
        sp.add_argument("--models", action="append", help="models folder, once per embedder space the doors run "
                                                          "(default: hub.json 'models')")
        sp.add_argument("--precision", default="int8", choices=("int8", "float32"))
        if name == "serve":
            sp.add_argument("--bind", default="", help="web page address (default 127.0.0.1: this machine only)")
            sp.add_argument("--port", type=int, default=0, help="web page port (default hub.json http_port, 8080)")
        else:
            sp.add_argument("--name", required=True)
            sp.add_argument("photos", nargs="+")
        sp.set_defaults(fn=fn)
    return p


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)  # (uvicorn installs its own handlers while serving)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 0
    except (EdgefaceError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
