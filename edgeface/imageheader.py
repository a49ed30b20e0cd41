"""Image dimensions and EXIF orientation read from the file's headers, without decoding a pixel.

:func:`edgeface.preprocess.read_image` calls :func:`probe` before it lets OpenCV decode anything, so a
*decompression bomb* (a small file declaring 20000 x 20000 pixels) is refused before it costs memory. The
headers are walked wherever they are: a JPEG's frame header (SOFn) after any number of APP segments, a PNG's
IHDR, every WebP size field (VP8X canvas, VP8, VP8L), BMP, TIFF's first IFD, GIF's logical screen, PNM/PAM
and Sun raster headers. Formats OpenCV could decode but whose size is not checked here (JPEG 2000, AVIF,
Radiance HDR, PFM, OpenEXR) and anything unrecognised are refused: the check never passes by default.

The EXIF orientation (1-8, 1 = as stored) is read from a JPEG's APP1 ``Exif`` segment, a PNG ``eXIf``
chunk, a WebP ``EXIF`` chunk or a TIFF's own tag 274; :func:`apply_orientation` turns the decoded pixels
upright (``read_image`` does so for JPEG, PNG and WebP; OpenCV's TIFF decoder already applies tag 274).

Pure functions over ``bytes``; only the standard library and numpy.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import EdgefaceError

#: Formats whose dimensions :func:`probe` reads (the ones :func:`edgeface.preprocess.read_image` accepts).
FORMATS = ("jpeg", "png", "webp", "bmp", "tiff", "gif", "pnm", "pam", "sunraster")


class HeaderError(EdgefaceError, ValueError):
    """The file's header is missing, truncated, inconsistent or of a format that is not accepted."""


class ImageHeader(NamedTuple):
    """What the headers declare: ``format`` (one of :data:`FORMATS`), ``width`` and ``height`` in pixels
    (for formats with several size fields, the largest), and the EXIF ``orientation`` (1 when absent)."""
    format: str
    width: int
    height: int
    orientation: int = 1
    #: bytes per sample once decoded at full depth (TIFF: 2 for 16-bit, 4 for float; 1 for every other format)
    sample_bytes: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height


_REFUSED = (  # (signature test, name): decodable by OpenCV, but not size-checked here
    (lambda b: b[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or b[:4] == b"\xff\x4f\xff\x51", "JPEG 2000"),
    (lambda b: b[4:8] == b"ftyp" and b[8:12] in (b"avif", b"avis", b"mif1", b"msf1", b"heic", b"heix"), "AVIF/HEIF"),
    (lambda b: b[:6] == b"#?RGBE" or b[:10] == b"#?RADIANCE", "Radiance HDR"),
    (lambda b: b[:3] in (b"PF\n", b"Pf\n", b"PF\r", b"Pf\r"), "PFM"),
    (lambda b: b[:4] == b"\x76\x2f\x31\x01", "OpenEXR"),
)


def probe(data: bytes | bytearray | memoryview) -> ImageHeader:
    """Format, declared size and EXIF orientation of an encoded image; :class:`HeaderError` if unknown."""
    b = bytes(data[:16])
    if b[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if b[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(data)
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        return _webp(data)
    if b[:2] == b"BM":
        return _bmp(data)
    if b[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data)
    if b[:4] in (b"II+\x00", b"MM\x00+"):
        raise HeaderError("BigTIFF is not accepted")
    if b[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if len(b) >= 2 and b[0:1] == b"P" and b[1:2] in b"123456" and b[2:3].isspace():
        return _pnm(data)
    if b[:3] == b"P7\n":
        return _pam(data)
    if b[:4] == b"\x59\xa6\x6a\x95":
        return _sunraster(data)
    for test, name in _REFUSED:
        if test(b):
            raise HeaderError(f"{name} images are not accepted (their size cannot be checked before decoding); "
                              "convert to JPEG or PNG")
    raise HeaderError("unknown image format")


def _u16(b, i, big=True) -> int:
    return int.from_bytes(b[i:i + 2], "big" if big else "little")


def _u32(b, i, big=True) -> int:
    return int.from_bytes(b[i:i + 4], "big" if big else "little")


def _u24(b, i) -> int:
    return int.from_bytes(b[i:i + 3], "little")


def _need(data, end: int, what: str) -> None:
    if end > len(data):
        raise HeaderError(f"truncated {what}")


def _sized(fmt: str, width: int, height: int, orientation: int = 1, sample_bytes: int = 1) -> ImageHeader:
    if width <= 0 or height <= 0:
        raise HeaderError(f"{fmt} header declares a {width} x {height} image")
    return ImageHeader(fmt, int(width), int(height), orientation if 1 <= orientation <= 8 else 1, sample_bytes)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
#: Most segments/chunks walked before the size field (real files have a few dozen): a file made of millions
#: of empty segments is refused instead of costing seconds of walking.
MAX_SEGMENTS = 4096
_MAX_FILL = 65536


def _jpeg(data) -> ImageHeader:
    """Walk the marker segments from SOI to the first frame header (SOFn), reading EXIF on the way."""
    i, n, orientation = 2, len(data), 1
    for _ in range(MAX_SEGMENTS):
        _need(data, i + 2, "JPEG header (no frame header)")
        if data[i] != 0xFF:
            raise HeaderError(f"bad JPEG marker at byte {i}")
        fill = i
        while i + 1 < n and data[i + 1] == 0xFF:  # fill bytes
            i += 1
            if i - fill > _MAX_FILL:
                raise HeaderError(f"JPEG has more than {_MAX_FILL} fill bytes at byte {fill}")
        _need(data, i + 2, "JPEG header (no frame header)")
        marker = data[i + 1]
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            raise HeaderError("JPEG has no frame header before its scan data")
        _need(data, i + 4, "JPEG segment")
        length = _u16(data, i + 2)
        if length < 2:
            raise HeaderError(f"bad JPEG segment length at byte {i}")
        _need(data, i + 2 + length, "JPEG segment")
        if marker in _SOF:
            if length < 8:
                raise HeaderError("truncated JPEG frame header")
            return _sized("jpeg", _u16(data, i + 7), _u16(data, i + 5), orientation)
        if marker == 0xE1 and bytes(data[i + 4:i + 10]) == b"Exif\x00\x00" and orientation == 1:
            orientation = exif_orientation(bytes(data[i + 10:i + 2 + length]))
        i += 2 + length
    raise HeaderError(f"JPEG has more than {MAX_SEGMENTS} segments before its frame header")


def exif_orientation(tiff: bytes) -> int:
    """Orientation tag (274) of IFD0 in a TIFF-structured EXIF block; 1 when absent or unreadable."""
    try:
        return _tiff_ifd0(tiff).get(274, 1)
    except HeaderError:
        return 1


def _tiff_ifd0(b) -> dict[int, int]:
    """First-value of every SHORT/LONG tag of IFD0 of a TIFF structure."""
    _need(b, 8, "TIFF header")
    order = bytes(b[:2])
    if order not in (b"II", b"MM"):
        raise HeaderError("bad TIFF byte order")
    big = order == b"MM"
    if _u16(b, 2, big) != 42:
        raise HeaderError("bad TIFF magic")
    off = _u32(b, 4, big)
    _need(b, off + 2, "TIFF directory")
    count = _u16(b, off, big)
    _need(b, off + 2 + 12 * count, "TIFF directory")
    tags = {}
    for k in range(count):
        e = off + 2 + 12 * k
        tag, typ, n = _u16(b, e, big), _u16(b, e + 2, big), _u32(b, e + 4, big)
        if typ not in (3, 4) or n == 0:  # SHORT, LONG
            continue
        size = 2 if typ == 3 else 4
        at = e + 8 if n * size <= 4 else _u32(b, e + 8, big)  # the value itself, or where it is
        if at + size > len(b):
            continue
        tags.setdefault(tag, _u16(b, at, big) if typ == 3 else _u32(b, at, big))
    return tags


def _png(data) -> ImageHeader:
    """IHDR (always the first chunk), then the chunks up to IEND for an ``eXIf``."""
    _need(data, 24, "PNG header")
    if bytes(data[12:16]) != b"IHDR":
        raise HeaderError("PNG does not start with IHDR")
    width, height = _u32(data, 16), _u32(data, 20)
    orientation, i = 1, 8
    for _ in range(MAX_SEGMENTS):
        if i + 8 > len(data):
            break
        length, kind = _u32(data, i), bytes(data[i + 4:i + 8])
        if kind == b"eXIf":
            orientation = exif_orientation(bytes(data[i + 8:i + 8 + length]))
            break
        if kind in (b"IDAT", b"IEND"):
            break
        i += 12 + length
    return _sized("png", width, height, orientation)


def _webp(data) -> ImageHeader:
    """Every size in the file (VP8X canvas, VP8 and VP8L bitstreams, animation frames): the largest counts."""
    i, width, height, orientation, sized = 12, 0, 0, 1, False
    for _ in range(MAX_SEGMENTS + 1):
        if i + 8 > len(data):
            break
        kind, length = bytes(data[i:i + 4]), _u32(data, i + 4, big=False)
        body = i + 8
        if kind == b"VP8X" and body + 10 <= len(data):
            w, h = 1 + _u24(data, body + 4), 1 + _u24(data, body + 7)
        elif kind == b"VP8 " and body + 10 <= len(data):
            w, h = _u16(data, body + 6, big=False) & 0x3FFF, _u16(data, body + 8, big=False) & 0x3FFF
        elif kind == b"VP8L" and body + 5 <= len(data):
            bits = _u32(data, body + 1, big=False)
            w, h = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        elif kind == b"ANMF" and body + 12 <= len(data):
            w, h = 1 + _u24(data, body + 6), 1 + _u24(data, body + 9)
        else:
            w = h = 0
            if kind == b"EXIF":
                orientation = exif_orientation(bytes(data[body:body + length]))
        if w and h:
            sized = True
            width, height = max(width, w), max(height, h)
        i = body + length + (length & 1)
    else:
        raise HeaderError(f"WebP has more than {MAX_SEGMENTS} chunks")
    if not sized:
        raise HeaderError("WebP has no size header")
    return _sized("webp", width, height, orientation)


def _bmp(data) -> ImageHeader:
    _need(data, 26, "BMP header")
    dib = _u32(data, 14, big=False)
    if dib == 12:  # OS/2 BITMAPCOREHEADER
        return _sized("bmp", _u16(data, 18, big=False), _u16(data, 20, big=False))
    if dib < 16:
        raise HeaderError("bad BMP header")
    w = int.from_bytes(data[18:22], "little", signed=True)
    h = int.from_bytes(data[22:26], "little", signed=True)
    return _sized("bmp", w, abs(h))


def _tiff(data) -> ImageHeader:
    tags = _tiff_ifd0(data)
    if 256 not in tags or 257 not in tags:
        raise HeaderError("TIFF has no image width/length")
    bits = tags.get(258, 8)
    if not 1 <= bits <= 64:
        raise HeaderError(f"TIFF declares {bits} bits per sample")
    return _sized("tiff", tags[256], tags[257], tags.get(274, 1), max(1, bits // 8))


def _gif(data) -> ImageHeader:
    _need(data, 10, "GIF header")
    return _sized("gif", _u16(data, 6, big=False), _u16(data, 8, big=False))


def _tokens(data, start: int, count: int, limit: int = 4096) -> list[int]:
    """``count`` whitespace-separated integers after ``start``, skipping ``#`` comments (PNM header)."""
    out, i, end = [], start, min(len(data), limit)
    while len(out) < count:
        while i < end and (chr(data[i]).isspace() or data[i] == ord("#")):
            if data[i] == ord("#"):
                while i < end and data[i] not in (10, 13):
                    i += 1
            else:
                i += 1
        j = i
        while j < end and chr(data[j]).isdigit():
            j += 1
        if j == i or j - i > 10:
            raise HeaderError("bad PNM header")
        out.append(int(bytes(data[i:j])))
        i = j
    return out


def _pnm(data) -> ImageHeader:
    w, h = _tokens(data, 2, 2)
    return _sized("pnm", w, h)


def _pam(data) -> ImageHeader:
    head = bytes(data[:4096])
    end = head.find(b"ENDHDR")
    if end < 0:
        raise HeaderError("bad PAM header")
    fields = {}
    for line in head[:end].split(b"\n"):
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and len(parts[1]) <= 10:
            fields[parts[0]] = int(parts[1])
    if b"WIDTH" not in fields or b"HEIGHT" not in fields:
        raise HeaderError("PAM header has no WIDTH/HEIGHT")
    return _sized("pam", fields[b"WIDTH"], fields[b"HEIGHT"])


def _sunraster(data) -> ImageHeader:
    _need(data, 12, "Sun raster header")
    return _sized("sunraster", _u32(data, 4), _u32(data, 8))


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn decoded pixels upright per the EXIF orientation (1 = as stored, 6 = rotate 90 clockwise...)."""
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return image.swapaxes(0, 1)
    if orientation == 6:
        return image.swapaxes(0, 1)[:, ::-1]
    if orientation == 7:
        return image.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return image.swapaxes(0, 1)[::-1]
    return image
