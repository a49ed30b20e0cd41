"""Issue 12, core half: hostile images, names, erasure, permissions, broken galleries and manifests.

One test (or a few) per numbered class of the issue, named ``test_<n>_...``; real LFW/BBT images, real
SQLite files, real ``edgeface`` processes. Bombs and mutated images are built here from real images.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface import imageheader, preprocess
from edgeface.preprocess import ImageError, read_image

from conftest import BBT, lfw_image

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore::ResourceWarning")
RSS_LIMIT_MB = 300


def edgeface(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeface.cli", *map(str, args)], capture_output=True, text=True,
                          env=kw.pop("env", ENV), timeout=timeout, **kw)


def peak_rss(args, timeout=600) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``args`` in a child and return (result, its peak RSS in MB) measured by getrusage in a wrapper."""
    wrapper = ("import resource, subprocess, sys, json\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "print(json.dumps([r.returncode, r.stdout, r.stderr, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))\n")
    out = subprocess.run([sys.executable, "-c", wrapper, *map(str, args)], capture_output=True, text=True,
                         env=ENV, timeout=timeout, check=True)
    code, stdout, stderr, rss = json.loads(out.stdout)
    return subprocess.CompletedProcess(args, code, stdout, stderr), rss


def cli(*args):
    return [sys.executable, "-m", "edgeface.cli", *map(str, args)]


def assert_one_line_errors(r: subprocess.CompletedProcess, count: int | None = None) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert all(ln.startswith("edgeface: error: ") for ln in lines), r.stderr
    if count is not None:
        assert len(lines) == count, r.stderr


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def encoded(rgb: np.ndarray, ext: str, *params) -> bytes:
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), list(params))
    assert ok
    return buf.tobytes()


def exif_block(orientation: int) -> bytes:
    """A big-endian TIFF structure with one IFD0 entry: Orientation (274) = ``orientation``."""
    return (b"MM\x00*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
            + b"\x00\x00\x00\x00")


def with_app_segments(jpeg: bytes, segments: list[bytes]) -> bytes:
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def app_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def riff_webp(chunks: list[bytes]) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, i = [], 12
    while i + 8 <= len(data):
        kind, n = data[i:i + 4], struct.unpack("<I", data[i + 4:i + 8])[0]
        out.append((kind, data[i + 8:i + 8 + n]))
        i += 8 + n + (n & 1)
    return out


def vp8x(width: int, height: int, flags: int = 0) -> bytes:
    return webp_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little")
                      + (height - 1).to_bytes(3, "little"))


def tiff_with(data: bytes, values: dict[int, int], pad: int = 0) -> bytes:
    """A copy of a little-endian TIFF whose IFD0 moved ``pad`` bytes past the end, with SHORT/LONG tags set
    or added (``values``); strip offsets stay valid because the pixel data does not move."""
    assert data[:4] == b"II*\x00"
    off = struct.unpack("<I", data[4:8])[0]
    n = struct.unpack("<H", data[off:off + 2])[0]
    entries = {}
    for k in range(n):
        e = data[off + 2 + 12 * k: off + 14 + 12 * k]
        entries[struct.unpack("<H", e[:2])[0]] = e
    for tag, value in values.items():
        entries[tag] = struct.pack("<HHII", tag, 4, 1, value) if tag in (256, 257) else \
            struct.pack("<HHIHH", tag, 3, 1, value, 0)
    new_off = len(data) + pad
    new_off += new_off & 1
    ifd = struct.pack("<H", len(entries)) + b"".join(entries[t] for t in sorted(entries)) + b"\x00" * 4
    return data[:4] + struct.pack("<I", new_off) + data[8:] + b"\x00" * (new_off - len(data)) + ifd


@pytest.fixture(scope="module")
def face_rgb(data_root) -> np.ndarray:
    return read_image(lfw_image("Colin_Powell", 1))


@pytest.fixture(scope="module")
def bombs(tmp_path_factory, face_rgb) -> dict[str, Path]:
    """One decompression bomb per accepted format: a small real image whose size field claims far more pixels,
    with the size field pushed past 128 KB where the format allows it."""
    d = tmp_path_factory.mktemp("bombs")
    small = cv2.resize(face_rgb, (64, 64))
    out = {}

    j = bytearray(with_app_segments(jpeg_bytes(small), [app_segment(0xE2, b"\x00" * 65533)] * 2))
    sof = j.find(b"\xff\xc0")
    j[sof + 5:sof + 9] = struct.pack(">HH", 20000, 20000)
    out["jpeg_after_128k_of_app"] = bytes(j)
    j = bytearray(with_app_segments(encoded(small, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
                                    [app_segment(0xE1, b"Exif\x00\x00" + exif_block(1) + b"\x00" * 60000)] * 3))
    sof = j.find(b"\xff\xc2")
    j[sof + 5:sof + 9] = struct.pack(">HH", 30000, 9000)
    out["jpeg_progressive"] = bytes(j)
    j = bytearray(with_app_segments(jpeg_bytes(small), [app_segment(0xE2, b"\x00" * 65533)] * 2))
    sof = j.find(b"\xff\xc0")
    j[sof + 5:sof + 9] = struct.pack(">HH", 7000, 7000)  # within the pixel limit, but 338 pixels per byte
    out["jpeg_under_the_pixel_limit"] = bytes(j)

    p = bytearray(encoded(small, ".png"))
    p[16:24] = struct.pack(">II", 60000, 60000)
    p[29:33] = struct.pack(">I", zlib.crc32(bytes(p[12:29])))
    out["png_ihdr"] = bytes(p)

    lossy = encoded(small, ".webp", cv2.IMWRITE_WEBP_QUALITY, 80)
    w = bytearray(lossy)
    vp8 = w.find(b"VP8 ") + 8
    w[vp8 + 6:vp8 + 10] = struct.pack("<HH", 16383, 16383)
    out["webp_vp8"] = bytes(w)
    lossless = encoded(small, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101)
    w = bytearray(lossless)
    vp8l = w.find(b"VP8L") + 8
    bits = struct.unpack("<I", w[vp8l + 1:vp8l + 5])[0]
    bits = (bits & ~((1 << 28) - 1)) | 16383 | (16383 << 14)
    w[vp8l + 1:vp8l + 5] = struct.pack("<I", bits)
    out["webp_vp8l"] = bytes(w)
    out["webp_vp8x_canvas"] = riff_webp([vp8x(20000, 20000), webp_chunk(b"EXIF", b"\x00" * 140000)]
                                        + [webp_chunk(k, v) for k, v in webp_chunks(lossy)])

    b = bytearray(encoded(small, ".bmp"))
    b[18:26] = struct.pack("<ii", 20000, -20000)
    out["bmp"] = bytes(b)

    t = encoded(small, ".tiff")
    out["tiff_ifd_after_128k"] = tiff_with(t, {256: 20000, 257: 20000}, pad=140000)

    g = bytearray(encoded(small, ".gif"))
    g[6:10] = struct.pack("<HH", 65535, 65535)
    out["gif_screen"] = bytes(g)
    out["pnm"] = b"P6\n# comment\n20000 20000\n255\n" + b"\x00" * 1000
    out["sunraster"] = struct.pack(">8I", 0x59A66A95, 20000, 20000, 24, 3 * 20000 * 20000 & 0xFFFFFFFF, 1, 0, 0) \
        + b"\x00" * 1000
    suffix = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "tiff": ".tiff", "gif": ".gif",
              "pnm": ".ppm", "sunraster": ".ras"}
    paths = {}
    for name, data in out.items():
        paths[name] = d / (name + suffix[name.split("_")[0]])
        paths[name].write_bytes(data)
    return paths


# -- 1. decompression bombs -----------------------------------------------------------------------------
def test_1_bomb_headers_are_found_wherever_they_are(bombs):
    for name, path in bombs.items():
        header = imageheader.probe(path.read_bytes())
        assert header.pixels > min(preprocess.MAX_PIXELS, preprocess.MAX_PIXELS_PER_BYTE * path.stat().st_size), \
            (name, header)
        with pytest.raises(ImageError, match="refused before decoding") as err:
            read_image(path)
        assert str(path) in str(err.value)


def test_1_formats_whose_size_is_not_checked_are_refused(tmp_path, face_rgb):
    files = {"x.jp2": encoded(face_rgb, ".jp2"), "x.hdr": encoded(face_rgb, ".hdr"),
             "x.avif": encoded(face_rgb, ".avif"), "x.bin": b"\x00\x01garbage" * 10}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match="not accepted|unknown image format"):
            read_image(tmp_path / name)


def test_1_endless_headers_are_refused_not_walked(tmp_path, face_rgb):
    """Millions of empty segments or fill bytes before the size field: refused, not walked for seconds."""
    jpeg = jpeg_bytes(face_rgb)
    files = {"segments.jpg": with_app_segments(jpeg, [b"\xff\xfe\x00\x02"] * 200_000),
             "fill.jpg": jpeg[:2] + b"\xff" * 1_000_000 + jpeg[2:],
             "chunks.webp": riff_webp([webp_chunk(b"JUNK", b"")] * 5000
                                      + [webp_chunk(k, v) for k, v in webp_chunks(encoded(face_rgb, ".webp"))])}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match="more than"):
            read_image(tmp_path / name)


def test_1_real_images_of_every_accepted_format_still_read(tmp_path, face_rgb):
    for ext in (".jpg", ".png", ".webp", ".bmp", ".tiff", ".gif", ".ppm", ".pam", ".ras"):
        (tmp_path / f"x{ext}").write_bytes(encoded(face_rgb, ext))
        image = read_image(tmp_path / f"x{ext}")
        assert image.shape == face_rgb.shape and image.dtype == np.uint8, ext
        if ext in (".png", ".bmp", ".tiff", ".ppm", ".pam", ".ras"):  # lossless
            assert np.array_equal(image, face_rgb), ext


@pytest.mark.slow
def test_1_detect_on_every_bomb_stays_small(bombs, models_dir):
    r, rss = peak_rss(cli("detect", "--models", models_dir, *bombs.values()), timeout=300)
    assert r.returncode != 0
    assert_one_line_errors(r, count=len(bombs))
    assert all("refused before decoding" in ln for ln in r.stderr.splitlines()), r.stderr
    assert rss < RSS_LIMIT_MB, f"peak RSS {rss:.0f} MB"


def test_1_folder_source_reads_bombs_cheaply(bombs):
    """The device's folder source reads through read_image: every bomb is a skipped frame, memory stays low."""
    code = ("import sys\nfrom edgeface.device.sources import ImageFolderSource\n"
            "s = ImageFolderSource(sys.argv[1]); s.open(); n = 0\n"
            "while (f := s.read()) is not None:\n    assert f.image.size == 0; n += 1\nprint(n)\n")
    from edgeface.device.sources import IMAGE_SUFFIXES

    r, rss = peak_rss([sys.executable, "-c", code, next(iter(bombs.values())).parent])
    expected = sum(p.suffix in IMAGE_SUFFIXES for p in bombs.values())
    assert expected >= 8 and r.returncode == 0 and r.stdout.strip() == str(expected), r.stderr
    assert rss < RSS_LIMIT_MB, f"peak RSS {rss:.0f} MB"


# -- 9. EXIF orientation --------------------------------------------------------------------------------
def _stored_for(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for an upright scene when it tags ``orientation``."""
    inverse = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}[orientation]
    return np.ascontiguousarray(imageheader.apply_orientation(upright, inverse))


def test_9_exif_orientation_is_applied_for_every_format(tmp_path, face_rgb):
    upright = np.ascontiguousarray(face_rgb[:200])  # not square: a missed rotation changes the shape
    for o in range(1, 9):
        stored = _stored_for(upright, o)
        jpg = tmp_path / f"o{o}.jpg"
        jpg.write_bytes(with_app_segments(jpeg_bytes(stored, 97),
                                          [app_segment(0xE1, b"Exif\x00\x00" + exif_block(o))]))
        image = read_image(jpg)
        assert image.shape == upright.shape, o
        assert np.abs(image.astype(int) - upright).mean() < 3, o
    stored = _stored_for(upright, 6)
    png = encoded(stored, ".png")
    (tmp_path / "o6.png").write_bytes(png[:33] + png_chunk(b"eXIf", exif_block(6)) + png[33:])
    lossless = encoded(stored, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101)
    h, w = stored.shape[:2]
    (tmp_path / "o6.webp").write_bytes(riff_webp([vp8x(w, h, flags=0x08)]
                                                 + [webp_chunk(k, v) for k, v in webp_chunks(lossless)]
                                                 + [webp_chunk(b"EXIF", exif_block(6))]))
    (tmp_path / "o6.tiff").write_bytes(tiff_with(encoded(stored, ".tiff"), {274: 6}))
    for name in ("o6.png", "o6.webp", "o6.tiff"):
        assert np.array_equal(read_image(tmp_path / name), upright), name


@pytest.mark.slow
def test_9_rotated_phone_photo_verifies_as_the_same_person(tmp_path, models_dir):
    upright = read_image(lfw_image("Colin_Powell", 1))
    (tmp_path / "upright.jpg").write_bytes(jpeg_bytes(upright, 95))
    (tmp_path / "phone.jpg").write_bytes(with_app_segments(jpeg_bytes(_stored_for(upright, 6), 95),
                                                           [app_segment(0xE1, b"Exif\x00\x00" + exif_block(6))]))
    r = edgeface("verify", "--models", models_dir, "--json", tmp_path / "upright.jpg", tmp_path / "phone.jpg")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["same"] and result["similarity"] > 0.95, result


# -- galleries: shared helpers --------------------------------------------------------------------------
from edgeface.gallery import (  # noqa: E402
    CorruptGalleryError,
    Gallery,
    GalleryError,
    InvalidNameError,
    UnknownPersonError,
    check_gallery,
    check_name,
    escape_name,
)

PEOPLE = {"Colin_Powell": (1, 2), "George_W_Bush": (1, 2)}


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory, models_dir) -> Path:
    """A real gallery made by `edgeface enroll`: Colin_Powell and George_W_Bush, two photos each."""
    path = tmp_path_factory.mktemp("enrolled") / "people.db"
    for name, ns in PEOPLE.items():
        r = edgeface("enroll", "--models", models_dir, "--gallery", path, "--name", name,
                     *[lfw_image(name, n) for n in ns])
        assert r.returncode == 0, r.stderr
    return path


def copy_gallery(src: Path, dst_dir: Path) -> Path:
    with Gallery.open(src) as g:  # checkpoint: everything in the main file
        g._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    os.chmod(dst, 0o600)
    return dst


def names_in(path: Path) -> list[str]:
    with Gallery.open(path) as g:
        return [p.name for p in g.people()]


def raw_sql(path: Path, sql: str, params=()) -> list:
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# -- 4. names -------------------------------------------------------------------------------------------
BAD_NAMES = ["Mallory\nINFO door: granted to Alice", "\x1b[2J\x1b[31mroot", "x" * 10_000, "Eve\u202eecilA",
             "zero\u200bwidth", "tab\tname", "", "   "]


def test_4_names_are_checked_on_enroll_and_rename(tmp_path):
    with Gallery(tmp_path / "g.db", "e", 4) as g:
        for bad in BAD_NAMES:
            with pytest.raises(InvalidNameError):
                g.enroll(bad, [1.0, 0, 0, 0])
        for good in ("Zoë Ådams", "李雷", "O'Brien-Smith Jr.", "  padded  ", "x" * 64):
            g.enroll(good, [1.0, 0, 0, 0])
        assert "padded" in g and len(g) == 5
        with pytest.raises(InvalidNameError, match="non-printable"):
            g.rename("padded", "new\nline")
        assert issubclass(InvalidNameError, GalleryError) and issubclass(InvalidNameError, ValueError)
    assert check_name(" Ada ") == "Ada"


def test_4_escape_name_is_one_safe_line():
    assert escape_name("Ada") == "Ada"
    assert escape_name("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    assert escape_name("a\\nb") == "a\\\\nb"  # a typed backslash cannot pass for an escape
    assert escape_name("Eve\u202e") == "Eve\\u202e"
    long = escape_name("x" * 10_000)
    assert len(long) == 80 and long.endswith("…")


@pytest.mark.slow
def test_4_cli_refuses_bad_names_and_escapes_old_ones(tmp_path, enrolled, models_dir):
    g = copy_gallery(enrolled, tmp_path)
    r = edgeface("enroll", "--gallery", tmp_path / "new.db", "--name", "Mallory\nINFO granted",
                 lfw_image("Colin_Powell", 1))
    assert r.returncode == 2 and not (tmp_path / "new.db").exists()
    assert_one_line_errors(r, count=1)
    # a gallery written before names were checked
    forged = "George\n  Alice                similarity 0.990 box [1, 2, 3, 4]\x1b[2K"
    raw_sql(g, "UPDATE people SET name = ? WHERE name = 'George_W_Bush'", (forged,))
    raw_sql(g, "INSERT INTO people (name, created) VALUES (?, '2020-01-01')", ("y" * 10_000,))
    listing = edgeface("gallery", "list", "--gallery", g)
    assert listing.returncode == 0 and "\x1b" not in listing.stdout
    assert len(listing.stdout.splitlines()) == 3 and max(map(len, listing.stdout.splitlines())) < 200
    ident = edgeface("identify", "--models", models_dir, "--gallery", g,
                     lfw_image("George_W_Bush", 3))
    assert ident.returncode == 0, ident.stderr
    lines = ident.stdout.splitlines()
    assert "\x1b" not in ident.stdout and len(lines) == 2, ident.stdout
    assert "George\\n" in lines[1] and "Alice" in lines[1]
    # the old name can still be removed, by its exact stored value
    with Gallery.open(g) as gal:
        gal.remove(forged)
        assert forged not in gal


# -- 5. erasure -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_5_remove_is_all_or_nothing(tmp_path, enrolled):
    g = copy_gallery(enrolled, tmp_path)
    r = edgeface("gallery", "remove", "Colin_Powell", "Nobody", "--gallery", g)
    assert r.returncode != 0 and "Nobody" in r.stderr
    assert_one_line_errors(r, count=1)
    assert names_in(g) == ["Colin_Powell", "George_W_Bush"]
    r = edgeface("gallery", "remove", "Colin_Powell", "George_W_Bush", "--gallery", g)
    assert r.returncode == 0, r.stderr
    assert names_in(g) == []
    with Gallery(tmp_path / "api.db", "e", 2) as gal:
        gal.enroll("a", [1.0, 0])
        with pytest.raises(UnknownPersonError):
            gal.remove("a", "b")
        assert "a" in gal


@pytest.mark.slow
def test_5_forget_erases_the_embeddings_from_every_gallery_file(tmp_path, enrolled):
    g = copy_gallery(enrolled, tmp_path)
    blobs = [b for (b,) in raw_sql(g, "SELECT e.vector FROM embeddings e JOIN people p ON p.id = e.person_id "
                                      "WHERE p.name = 'Colin_Powell'")]
    assert len(blobs) == 2
    with Gallery.open(g) as keep_open:  # another reader holding the WAL open, as a door would
        assert len(keep_open) == 2
        r = edgeface("gallery", "forget", "Colin_Powell", "--gallery", g)
    assert r.returncode == 0, r.stderr
    assert "forgot Colin_Powell: 2 embedding(s)" in r.stdout and "write-ahead log truncated" in r.stdout
    assert names_in(g) == ["George_W_Bush"]
    with Gallery.open(g) as gal:
        gal._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    files = [p for p in tmp_path.iterdir() if p.name.startswith(g.name)]
    for f in files:
        content = f.read_bytes()
        for blob in blobs:
            assert blob not in content, f"{f.name} still holds an embedding of the forgotten person"
    r = edgeface("gallery", "forget", "Colin_Powell", "--gallery", g)
    assert r.returncode != 0
    assert_one_line_errors(r, count=1)


# -- 6. permissions and stored photo paths ---------------------------------------------------------------
@pytest.mark.slow
def test_6_gallery_files_are_private_and_photo_paths_opt_in(tmp_path, models_dir):
    os.umask(0o022)
    g = tmp_path / "new" / "site" / "people.db"
    r = edgeface("enroll", "--models", models_dir, "--gallery", g, "--name", "Colin_Powell",
                 lfw_image("Colin_Powell", 1))
    assert r.returncode == 0, r.stderr
    assert "created gallery" in r.stdout
    for p in [f for f in g.parent.iterdir() if f.name.startswith("people.db")]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    for d in (g.parent, g.parent.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert raw_sql(g, "SELECT source FROM embeddings") == [(None,)]
    r = edgeface("enroll", "--models", models_dir, "--gallery", g, "--name", "George_W_Bush", "--keep-source",
                 lfw_image("George_W_Bush", 1))
    assert r.returncode == 0, r.stderr
    kept = raw_sql(g, "SELECT source FROM embeddings WHERE source IS NOT NULL")
    assert kept == [(str(lfw_image("George_W_Bush", 1)),)]
    os.chmod(g, 0o644)
    r = edgeface("gallery", "list", "--gallery", g)
    assert r.returncode == 0 and "accessible to other users (mode 0644); now 0600" in r.stderr
    assert stat.S_IMODE(g.stat().st_mode) == 0o600


# -- 10. read-only, full disk, corrupt gallery, bad argument counts ---------------------------------------
def _as_unprivileged(args: list) -> list:
    """Root ignores file modes; drop the capabilities that let it (CAP_DAC_OVERRIDE...) for this child."""
    if os.geteuid() != 0:
        return args
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to test a read-only gallery as root"
    return [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", *args]


@pytest.mark.slow
def test_10_read_only_gallery_is_one_line(tmp_path, enrolled, models_dir):
    g = copy_gallery(enrolled, tmp_path)
    os.chmod(g, 0o400)
    r = subprocess.run(_as_unprivileged(cli("gallery", "remove", "Colin_Powell", "--gallery", g)),
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2 and "read-only" in r.stderr, r.stderr
    assert_one_line_errors(r, count=1)
    r = subprocess.run(_as_unprivileged(cli("enroll", "--models", models_dir, "--gallery", g, "--name", "Ada",
                                            lfw_image("Aaron_Peirsol", 1))),
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 2 and "read-only" in r.stderr, r.stderr
    assert_one_line_errors(r, count=1)
    r = subprocess.run(_as_unprivileged(cli("identify", "--models", models_dir, "--gallery", g,
                                            lfw_image("Colin_Powell", 3))),
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0 and "Colin_Powell" in r.stdout, r.stderr  # reading a read-only gallery works
    assert names_in(g) == ["Colin_Powell", "George_W_Bush"]


@pytest.mark.slow
def test_10_disk_full_during_enroll_commit(tmp_path, enrolled, models_dir):
    import resource

    g = copy_gallery(enrolled, tmp_path)
    before = g.read_bytes()

    def small_disk():  # a write past 32 KiB fails with EFBIG (Python ignores SIGXFSZ): the -shm file (32 KiB)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768))  # fits, a large commit's WAL does not

    photos = sorted((lfw_image("George_W_Bush", 1).parent).glob("*.jpg"))[10:90]
    r = subprocess.run(cli("enroll", "--models", models_dir, "--gallery", g, "--name", "Aaron_Peirsol",
                           "--keep-source", *photos), capture_output=True, text=True, timeout=300,
                       env=dict(ENV, PYTHONDONTWRITEBYTECODE="1"), preexec_fn=small_disk)
    assert r.returncode == 2, (r.stdout, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if "cannot enroll" in ln]  # (other lines: rejected photos)
    assert_one_line_errors(r)
    assert len(errors) == 1 and "disk full" in errors[0] and "nothing was changed" in errors[0], r.stderr
    assert names_in(g) == ["Colin_Powell", "George_W_Bush"] and check_gallery(g) == []
    assert g.read_bytes() == before


def _corrupt_gallery(path: Path, people: int = 300) -> Path:
    with Gallery.open(path) as g:
        rng = np.random.default_rng(0)
        for i in range(people):
            g.enroll(f"person {i:03d}", rng.normal(size=g.dim))
        g._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 30 * page
    data[20 * page:21 * page] = bytes(random.Random(1).getrandbits(8) for _ in range(page))  # a damaged sector
    path.write_bytes(bytes(data))
    return path


@pytest.mark.slow
def test_10_corrupt_gallery_is_reported_and_never_written(tmp_path, enrolled, models_dir):
    g = _corrupt_gallery(copy_gallery(enrolled, tmp_path))
    damaged = g.read_bytes()
    problems = check_gallery(g)
    assert problems
    r = edgeface("gallery", "check", "--gallery", g)
    assert r.returncode == 1 and "ok" not in r.stdout.split(":")[-1], r.stdout
    r = edgeface("identify", "--models", models_dir, "--gallery", g, lfw_image("Colin_Powell", 3))
    assert r.returncode == 2 and "corrupt" in r.stderr, (r.stdout, r.stderr)
    assert_one_line_errors(r, count=1)
    r = edgeface("enroll", "--models", models_dir, "--gallery", g, "--name", "Aaron_Peirsol",
                 lfw_image("Aaron_Peirsol", 1))
    assert r.returncode == 2 and "corrupt" in r.stderr and "refused" in r.stderr, r.stderr
    assert_one_line_errors(r, count=1)
    for action in (["list"], ["remove", "person 001"], ["rename", "Colin_Powell", "Colin"]):
        r = edgeface("gallery", *action, "--gallery", g)
        assert_one_line_errors(r)
        if action != ["list"]:
            assert r.returncode == 2 and "corrupt" in r.stderr, r.stderr
    assert g.read_bytes() == damaged
    with Gallery.open(g) as gal, pytest.raises(CorruptGalleryError):
        gal.enroll("x", np.ones(gal.dim))


def test_10_gallery_argument_counts_are_one_line(tmp_path):
    with Gallery(tmp_path / "g.db", "e", 2) as g:
        g.enroll("a", [1.0, 0])
    for args in (["remove"], ["forget"], ["rename", "a"], ["rename", "a", "b", "c"], ["list", "a"]):
        r = edgeface("gallery", *args, "--gallery", tmp_path / "g.db")
        assert r.returncode == 2, args
        assert_one_line_errors(r, count=1)
    assert names_in(tmp_path / "g.db") == ["a"]


# -- 11. only enrollment creates a gallery ---------------------------------------------------------------
@pytest.mark.slow
def test_11_a_typo_never_creates_a_gallery(tmp_path, models_dir):
    typo = tmp_path / "typo.db"
    runs = [edgeface("identify", "--models", models_dir, "--gallery", typo, lfw_image("Colin_Powell", 1))]
    runs += [edgeface("gallery", *a, "--gallery", typo) for a in (["list"], ["remove", "x"], ["forget", "x"],
                                                                    ["rename", "x", "y"], ["check"])]
    for r in runs:
        assert r.returncode != 0 and "no such gallery file" in r.stderr, r.stderr
        assert_one_line_errors(r, count=1)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(GalleryError, match="no such gallery file"):
        Gallery(typo, "e", 2, create=False)
    assert not typo.exists()


# -- 12. manifests checked against the model and sane ranges ----------------------------------------------
def _models_copy(models_dir: Path, dst: Path) -> tuple[Path, Path, Path]:
    """A models folder whose manifests can be edited: the .tflite files linked, JSON copied."""
    dst.mkdir()
    index = json.loads((models_dir / "models.json").read_text())
    for f in models_dir.iterdir():
        if f.suffix == ".tflite":
            (dst / f.name).symlink_to(f)
        elif f.suffix == ".json":
            shutil.copy(f, dst / f.name)
    return dst, dst / Path(index["int8"]["detector"]).with_suffix(".json").name, \
        dst / Path(index["int8"]["embedder"]).with_suffix(".json").name


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _set(keys: str, value):
    def change(data):
        *parents, last = keys.split(".")
        node = data
        for k in parents:
            node = node[k]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return change


MANIFEST_DAMAGE = [  # (which manifest, edit, words the one-line error must contain)
    ("embedder", _set("input.shape", [1, 128, 128, 3]), "crop.size is 112 but input.shape"),
    ("embedder", lambda d: (_set("input.shape", [1, 128, 128, 3])(d), _set("embedder.crop.size", 128)(d)),
     "input.shape is [1, 128, 128, 3] but the model's input tensor is [1, 112, 112, 3]"),
    ("embedder", _set("embedder.crop.size", 96), "embedder.crop.size is 96"),
    ("embedder", _set("input.std", 0), "input.std must be non-zero"),
    ("embedder", _set("input.mean", float("nan")), "input.mean must be a finite number"),
    ("embedder", _set("embedder.crop", KeyError), "embedder.crop is missing (the crop recipe"),
    ("embedder", _set("embedder.crop.template", KeyError), "embedder.crop.template"),
    ("embedder", _set("embedder.min_cosine_similarity", 1.5), "embedder.min_cosine_similarity must be in [-1, 1]"),
    ("embedder", lambda d: d["embedder"]["operating_points"].update({"far_0.01": {"min_cosine_similarity": -3}}),
     "operating_points.far_0.01.min_cosine_similarity must be in [-1, 1]"),
    ("embedder", _set("embedder.embedding_size", 512),
     "embedding_size is 512 but the model's embedding output has 192"),
    ("embedder", _set("outputs.embedding", "nope"), "outputs.embedding names tensor 'nope'"),
    ("embedder", _set("input.dtype", "float32"), "input.dtype is 'float32' but the model's input tensor is"),
    ("detector", _set("input.shape", [1, 192, 192, 3]), "does not fit detector.spec"),
    ("detector", _set("detector.spec", "huge_range"), "detector.spec 'huge_range' is not a known detector"),
    ("detector", _set("detector.min_score", 0), "detector.min_score must be in (0, 1)"),
    ("detector", _set("detector", KeyError), "needs a 'detector' section"),
]


@pytest.mark.slow
def test_12_manifest_fields_are_checked_at_load(tmp_path, models_dir):
    from edgeface import FaceRecognizer
    from edgeface.manifest import ManifestError

    for i, (which, change, words) in enumerate(MANIFEST_DAMAGE):
        folder, det, emb = _models_copy(models_dir, tmp_path / f"m{i}")
        _edit(emb if which == "embedder" else det, change)
        with pytest.raises(ManifestError) as err:
            FaceRecognizer(folder)
        assert words in str(err.value), (words, str(err.value))
        assert (emb if which == "embedder" else det).name in str(err.value)
    # one CLI run: one line, exit 2, no KeyError
    r = edgeface("detect", "--models", folder, lfw_image("Colin_Powell", 1))
    assert r.returncode == 2 and "detector" in r.stderr
    assert_one_line_errors(r, count=1)


@pytest.mark.slow
def test_12_missing_optional_keys_are_not_key_errors(tmp_path, models_dir):
    from edgeface import FaceRecognizer

    folder, det, emb = _models_copy(models_dir, tmp_path / "m")
    for key in ("upstream", "calibration", "license", "description", "quantized_ranges"):
        _edit(emb, _set(key, KeyError) if key in json.loads(emb.read_text()) else (lambda d: None))
        _edit(det, _set(key, KeyError) if key in json.loads(det.read_text()) else (lambda d: None))
    _edit(emb, _set("embedder.operating_points", KeyError))
    rec = FaceRecognizer(folder)
    assert rec.embedder_id.startswith("mobilefacenet") and len(rec.embed(read_image(lfw_image("Colin_Powell", 1)))) == 1


# -- 14. clear messages ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_14_wrong_kinds_of_paths_get_clear_lines(tmp_path, models_dir, face_rgb):
    (tmp_path / "folder.db").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [
        (["gallery", "list", "--gallery", tmp_path / "folder.db"], "is a directory, not a gallery file"),
        (["identify", "--models", models_dir, "--gallery", tmp_path / "folder.db", lfw_image("Colin_Powell", 1)],
         "is a directory, not a gallery file"),
        (["enroll", "--models", models_dir, "--gallery", tmp_path / "afile" / "g.db", "--name", "Ada",
          lfw_image("Colin_Powell", 1)], "is a file, not a folder"),
        (["detect", "--models", tmp_path / "afile", lfw_image("Colin_Powell", 1)], "is a file; --models"),
        (["detect", "--models", models_dir, tmp_path / "folder.db"], "not a file"),
    ]
    for args, words in cases:
        r = edgeface(*args)
        assert r.returncode != 0 and words in r.stderr, (args, r.stderr)
        assert_one_line_errors(r, count=1)
    # a float TIFF with NaN: read without a numpy warning or an OpenCV log line
    f = np.full((40, 50, 3), 0.5, np.float32)
    f[0, 0] = np.nan
    assert cv2.imwrite(str(tmp_path / "nan.tiff"), f)
    r = subprocess.run([sys.executable, "-W", "error", "-c", "from edgeface.preprocess import read_image; "
                        f"im = read_image({str(tmp_path / 'nan.tiff')!r}); "
                        "print(im.shape, im[0, 0].tolist(), im[5, 5].tolist())"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.strip() == "(40, 50, 3) [0, 0, 0] [127, 127, 127]"


# -- fuzz: mutated real images through read_image, the folder source and `edgeface detect` -----------------
def _size_fields(fmt: str, data: bytes) -> list[tuple[int, int, str]]:
    """(offset, length, byte order) of the size fields of a real file of ``fmt``."""
    if fmt == "jpeg":
        sof = data.find(b"\xff\xc0")
        return [(sof + 5, 2, "big"), (sof + 7, 2, "big")]
    if fmt == "png":
        return [(16, 4, "big"), (20, 4, "big")]
    if fmt == "webp":
        vp8 = data.find(b"VP8")
        return [(vp8 + 14, 2, "little"), (vp8 + 16, 2, "little")] if data[vp8 + 3:vp8 + 4] == b" " \
            else [(vp8 + 9, 4, "little")]
    return [(18, 4, "little"), (22, 4, "little")]  # bmp


def mutate(data: bytes, fmt: str, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["truncate", "bitflip", "bitflip", "header", "size", "splice"])
    b = bytearray(data)
    if kind == "truncate":
        return kind, bytes(b[:rng.randrange(1, len(b))])
    if kind == "bitflip":
        for _ in range(rng.randint(1, 30)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "header":
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(min(len(b), 64))] = rng.randrange(256)
    elif kind == "size":
        off, n, order = rng.choice(_size_fields(fmt, data))
        value = rng.choice([0, 1, 7, 2000, 7000, 16383, 65535, 2 ** (8 * n) - 1, rng.randrange(2 ** (8 * n))])
        b[off:off + n] = value.to_bytes(n, order)
    else:  # a chunk of the file repeated or cut out
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b = b[:i] + b[j:] if rng.random() < 0.5 else b[:j] + b[i:j] + b[j:]
    return kind, bytes(b)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, data_root) -> dict[str, list[Path]]:
    """60 mutated files per format (JPEG, PNG, WebP, BMP) from real LFW and BBT photos: 240 files."""
    rng = random.Random(12)
    root = tmp_path_factory.mktemp("fuzz")
    lfw = [read_image(lfw_image(n, 1)) for n in ("Colin_Powell", "George_W_Bush", "Aaron_Peirsol")]
    bbt = sorted(BBT.glob("*/*.png"))[:3]
    sources = {
        "jpeg": [lfw_image(n, 1).read_bytes() for n in ("Colin_Powell", "George_W_Bush", "Aaron_Peirsol")],
        "png": [p.read_bytes() for p in bbt],
        "webp": [encoded(im, ".webp", cv2.IMWRITE_WEBP_QUALITY, q) for im, q in zip(lfw, (80, 101, 60))],
        "bmp": [encoded(im, ".bmp") for im in lfw],
    }
    out = {}
    for fmt, originals in sources.items():
        folder = root / fmt
        folder.mkdir()
        out[fmt] = []
        for k in range(60):
            kind, data = mutate(originals[k % len(originals)], fmt, rng)
            path = folder / f"{k:02d}_{kind}.{'jpg' if fmt == 'jpeg' else fmt}"
            path.write_bytes(data)
            out[fmt].append(path)
    return out


def test_fuzz_read_image_and_folder_source_never_crash(fuzzed):
    from edgeface.device.sources import ImageFolderSource

    read = refused = 0
    for paths in fuzzed.values():
        for path in paths:
            try:
                image = read_image(path)
            except ImageError as exc:
                assert str(path) in str(exc)
                refused += 1
            else:
                assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                assert image.shape[0] * image.shape[1] <= preprocess.MAX_PIXELS
                read += 1
    assert read + refused == 240 and read > 20 and refused > 20, (read, refused)
    source = ImageFolderSource(next(iter(fuzzed.values()))[0].parent)
    source.open()
    frames = 0
    while source.read() is not None:
        frames += 1
    assert frames == 60


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "bmp"])
def test_fuzz_detect_on_mutated_images(fuzzed, models_dir, fmt):
    paths = fuzzed[fmt]
    r, rss = peak_rss(cli("detect", "--models", models_dir, *paths), timeout=600)
    assert "Traceback" not in r.stderr and r.returncode in (0, 1), r.stderr[-3000:]
    answered = [ln.split(": ")[0] for ln in r.stdout.splitlines() if not ln.startswith("  ")]
    failed = [ln[len("edgeface: error: "):].split(": ")[0] for ln in r.stderr.splitlines()
              if ln.startswith("edgeface: error: ")]
    assert sorted(answered + failed) == sorted(map(str, paths)), "every file gets an answer or one error line"
    assert rss < RSS_LIMIT_MB, f"peak RSS {rss:.0f} MB"
