"""Cost of the device's encryption at rest (``[encryption]``, :mod:`edgeface.device.crypto`), plain vs encrypted,
side by side in one run:

* an access event with a snapshot (a real 160x160 LFW face crop, JPEG): :meth:`EventLog.log` end to end
  (SQLite commit with ``synchronous = FULL`` + the snapshot file), and the AES-GCM seal alone;
* opening the gallery for the door (plain SQLite vs decrypt into RAM + open) and one ``identify`` on it,
  for galleries of 100 and 1,000 people x 5 embeddings;
* one enrollment commit (plain: one transaction; encrypted: decrypt, enroll, seal, fsync, rename).

Gallery vectors are random unit vectors: the cost measured is of bytes, not of their meaning. Medians of
``--repeats`` runs; ratios are encrypted / plain.

    python -m edgeface.benchmarks.encryption --data ../shared/data --out /tmp/bench
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from . import common

DIM = 128
PER_PERSON = 5


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def _face_crop(data: Path) -> np.ndarray:
    from edgeface.preprocess import read_image

    img = read_image(data / "lfw" / "images_deepfunneled" / "Colin_Powell" / "Colin_Powell_0001.jpg")
    return np.ascontiguousarray(img[45:205, 45:205])  # the face region of a deep-funneled LFW photo, 160x160


def _gallery(path: Path, people: int, rng) -> None:
    from edgeface.gallery import Gallery

    with Gallery(path, "bench-embedder", DIM) as g:
        for i in range(people):
            g.enroll(f"person{i:05d}", rng.standard_normal((PER_PERSON, DIM)))


def run(data: Path, repeats: int = 30, sizes=(100, 1000)) -> dict:
    from edgeface.device.crypto import Cipher, SealedGallery, encrypt_gallery_file
    from edgeface.device.events import EventLog
    from edgeface.gallery import Gallery

    rng = np.random.default_rng(0)
    cipher = Cipher(os.urandom(32))
    crop = _face_crop(data)
    work = Path(tempfile.mkdtemp(prefix="edgeface-bench-crypto-"))
    rows = []
    try:
        for kind, c in (("plain", None), ("encrypted", cipher)):
            with EventLog(work / f"ev_{kind}.db", snapshot_dir=work / f"snaps_{kind}", cipher=c) as ev:
                ms = _median_ms(lambda: ev.log("access", track=1, identity="ada", score=0.8, decision="grant",
                                               snapshot=crop), repeats)
                size = statistics.median(p.stat().st_size for p in (work / f"snaps_{kind}").iterdir())
            rows.append({"operation": "access event + snapshot", "size": "160x160 crop", "store": kind,
                         "median_ms": ms, "bytes": int(size)})
        import cv2

        jpeg = cv2.imencode(".jpg", crop[:, :, ::-1])[1].tobytes()
        rows.append({"operation": "AES-GCM seal of the snapshot alone", "size": f"{len(jpeg)} B", "store": "encrypted",
                     "median_ms": _median_ms(lambda: cipher.seal(jpeg, b"name.jpg"), repeats * 10), "bytes": None})
        probe = rng.standard_normal(DIM).astype(np.float32)
        for people in sizes:
            plain = work / f"g{people}.db"
            _gallery(plain, people, rng)
            sealed = work / f"g{people}.sealed"
            shutil.copy(plain, sealed)
            encrypt_gallery_file(sealed, cipher)

            def open_plain(plain=plain):
                with Gallery.open(plain) as g:
                    g.identify(probe, 0.5)

            def open_sealed(sealed=sealed):
                with SealedGallery(sealed, cipher) as sg:
                    sg.open().identify(probe, 0.5)

            for kind, fn, path in (("plain", open_plain, plain), ("encrypted", open_sealed, sealed)):
                rows.append({"operation": "open gallery + first identify", "size": f"{people} people",
                             "store": kind, "median_ms": _median_ms(fn, max(5, repeats // 3)),
                             "bytes": path.stat().st_size})
            with Gallery.open(plain) as g:
                g.identify(probe, 0.5)
                rows.append({"operation": "identify (gallery open)", "size": f"{people} people", "store": "either",
                             "median_ms": _median_ms(lambda: g.identify(probe, 0.5), repeats * 10), "bytes": None})
            n = [0]

            def enroll_plain(plain=plain, n=n):
                n[0] += 1
                with Gallery.open(plain) as g:
                    g.enroll(f"new{n[0]}", rng.standard_normal((PER_PERSON, DIM)))

            def enroll_sealed(sealed=sealed, n=n):
                n[0] += 1
                with SealedGallery(sealed, cipher, write=True) as sg:
                    sg.open().enroll(f"new{n[0]}", rng.standard_normal((PER_PERSON, DIM)))

            for kind, fn in (("plain", enroll_plain), ("encrypted", enroll_sealed)):
                rows.append({"operation": "enroll one person (commit)", "size": f"{people} people", "store": kind,
                             "median_ms": _median_ms(fn, max(5, repeats // 3)), "bytes": None})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    by = {(r["operation"], r["size"], r["store"]): r["median_ms"] for r in rows}
    for r in rows:
        if r["store"] == "encrypted" and (r["operation"], r["size"], "plain") in by:
            r["ratio"] = round(r["median_ms"] / by[(r["operation"], r["size"], "plain")], 2)
    return {"machine": common.machine_info(), "repeats": repeats, "rows": rows}


def markdown(result: dict) -> str:
    rows = [[r["operation"], r["size"], r["store"], round(r["median_ms"], 3), r.get("ratio"), r["bytes"]]
            for r in result["rows"]]
    return (common.header("Encryption at rest: cost (edgeface.device.crypto)", result["machine"]) + "\n"
            + common.md_table(["operation", "size", "store", "median ms", "encrypted / plain", "bytes on disk"], rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeface.benchmarks.encryption", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("EDGEFACE_DATA", "../shared/data"), help="folder holding lfw/")
    p.add_argument("--out", default="bench-results", help="folder for encryption.json and encryption.md")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    result = run(Path(args.data), args.repeats)
    md = markdown(result)
    paths = common.write_outputs(Path(args.out), "encryption", result, md)
    print(md)
    print("\nwrote " + ", ".join(str(x) for x in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
