"""Image loading and pre-processing: one module for calibration, conversion checks, evaluation and the device.

Every function here is pure (arrays in, arrays out) except :func:`read_image`. Images inside edgeface are
always ``uint8`` RGB arrays of shape ``(H, W, 3)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

#: Largest image accepted by :func:`read_image`, in pixels (about 50 megapixels).
MAX_PIXELS = 50_000_000
# OpenCV's own decoder limit (read when it first decodes), as a second guard behind the header check.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402 - after OPENCV_IO_MAX_IMAGE_PIXELS is set
import numpy as np  # noqa: E402

from . import imageheader  # noqa: E402
from .errors import EdgefaceError, OptionError  # noqa: E402

#: Largest file accepted by :func:`read_image`, in bytes.
MAX_FILE_BYTES = 200 * 1024 * 1024
#: Above :data:`PLAUSIBLE_FROM_PIXELS`, a file may not declare more pixels per byte than this: photos have
#: 1-50 (a flat 24 MP sky in a 1 MB JPEG: 24; a scanned 1-bit page: < 100). More is a decompression bomb or
#: a file cut short, and decoding it would cost memory for pixels that are not there.
MAX_PIXELS_PER_BYTE = 256
PLAUSIBLE_FROM_PIXELS = 4_000_000


class ImageError(EdgefaceError, ValueError):
    """An input image that cannot be used; the message names the file and the reason."""


#: OpenCV's LOG_LEVEL_SILENT (0 in OpenCV 4 and 5)
OPENCV_LOG_SILENT = 0


def opencv_log_level(cv2_module):
    """OpenCV's ``(getLogLevel, setLogLevel)``: ``cv2.utils.logging``'s in OpenCV 5, the top-level
    ``cv2.getLogLevel`` / ``cv2.setLogLevel`` in OpenCV 4 (the ``[device-legacy]`` extra's 4.11 has no
    ``cv2.utils.logging``)."""
    logging = getattr(getattr(cv2_module, "utils", None), "logging", None)
    if logging is not None and hasattr(logging, "setLogLevel"):
        return logging.getLogLevel, logging.setLogLevel
    return cv2_module.getLogLevel, cv2_module.setLogLevel


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as upright RGB ``uint8`` (H, W, 3): the one door every image of edgeface comes in by.

    The headers are checked before a pixel is decoded (:func:`edgeface.imageheader.probe`): the declared
    size must stay within ``max_pixels`` (default :data:`MAX_PIXELS`) wherever the size field sits (a
    decompression bomb is refused at the cost of reading its file), and only JPEG, PNG, WebP, BMP, TIFF, GIF,
    PNM/PAM and Sun raster files are decoded. The EXIF orientation (JPEG, PNG, WebP, TIFF) is applied, so a phone
    photo taken sideways comes out upright. Grayscale images are expanded to three channels, an alpha channel
    is dropped, 16-bit images are scaled to 8 bits. Raises :class:`ImageError` (naming the file) for a missing,
    empty, non-image, refused or huge file.

    Memory: decoding costs about 6 bytes per pixel at its peak (OpenCV's JPEG decoder holds two copies), so
    a 48 MP photo takes ~280 MB on top of the process; a door on a small board can pass a lower
    ``max_pixels``. A file whose header declares more, or more than :data:`MAX_PIXELS_PER_BYTE` pixels per
    byte of file above 4 MP (a bomb), is refused after reading its headers only.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    if size == 0:
        raise ImageError(f"{path}: empty file")
    if size > MAX_FILE_BYTES:
        raise ImageError(f"{path}: file is {size / 2**20:.0f} MiB, larger than the {MAX_FILE_BYTES >> 20} MiB limit")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        header = imageheader.probe(memoryview(data))
    except imageheader.HeaderError as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None
    if header.pixels * header.sample_bytes > max_pixels:
        raise ImageError(f"{path}: {header.format} header declares {header.width} x {header.height} = "
                         f"{header.pixels} pixels" + (f" of {8 * header.sample_bytes}-bit samples"
                                                      if header.sample_bytes > 1 else "")
                         + f", more than the {max_pixels} limit (refused before decoding)")
    if header.pixels > PLAUSIBLE_FROM_PIXELS and header.pixels > MAX_PIXELS_PER_BYTE * size:
        raise ImageError(f"{path}: {header.format} header declares {header.width} x {header.height} = "
                         f"{header.pixels} pixels in a {size}-byte file ({header.pixels // size} pixels per byte, "
                         f"photos have fewer than {MAX_PIXELS_PER_BYTE}): a decompression bomb or a truncated "
                         "file (refused before decoding)")
    # 8-bit BGR whatever the file holds (IMREAD_COLOR), except TIFF: its 16-bit and float samples only decode
    # at their own depth (to_rgb scales them). The EXIF orientation is applied here (imageheader), not by
    # OpenCV, so it is the same for JPEG, PNG and WebP whatever OpenCV version decodes them.
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    if header.format == "tiff":
        flags |= cv2.IMREAD_ANYDEPTH
    get_level, set_level = opencv_log_level(cv2)
    level = get_level()
    set_level(OPENCV_LOG_SILENT)  # a broken file is our one error line, not OpenCV's five
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as exc:  # some decoders raise instead of returning None
        raise ImageError(f"{path}: not a readable image (the {header.format} data does not decode: "
                         f"{str(exc).strip().splitlines()[-1]})") from None
    finally:
        set_level(level)
    del data
    if image is None or image.size == 0:
        raise ImageError(f"{path}: not a readable image (the {header.format} data does not decode)")
    if image.shape[0] * image.shape[1] > max_pixels:  # a size field the header walk did not see
        raise ImageError(f"{path}: decoded to {image.shape[1]} x {image.shape[0]} pixels, more than the "
                         f"{max_pixels} limit")
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second full-size copy
    else:
        try:
            image = to_rgb(image, "bgr")
        except ValueError as exc:
            raise ImageError(f"{path}: {exc}") from exc
    # OpenCV's TIFF decoder turns the image by the TIFF's own orientation tag whatever the flags say
    orientation = 1 if header.format == "tiff" else header.orientation
    return np.ascontiguousarray(imageheader.apply_orientation(image, orientation))


def to_rgb(image: np.ndarray, order: str = "bgr") -> np.ndarray:
    """Convert a decoded frame to RGB ``uint8`` (H, W, 3).

    ``order`` is the channel order of a 3/4-channel input: ``"bgr"`` (OpenCV, and picamera2's "RGB888",
    which is B,G,R in memory) or ``"rgb"``.
    """
    if order not in ("bgr", "rgb"):
        raise ValueError(f"order must be 'bgr' or 'rgb', got {order!r}")
    image = np.asarray(image)
    if image.size == 0 or image.ndim not in (2, 3):
        raise ValueError(f"not an image array (shape {image.shape})")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):  # NaN -> 0, +-inf -> the ends of the range
        image = np.nan_to_num(image, nan=0.0, posinf=255.0, neginf=0.0)
        image = np.clip(image * 255.0 if image.max() <= 1.0 else image, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2 or image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2))
    if image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.shape[2] != 3:
        raise ValueError(f"unsupported channel count {image.shape[2]}")
    return np.ascontiguousarray(image[:, :, ::-1] if order == "bgr" else image)


class Letterbox(NamedTuple):
    """How an image was placed on a square canvas: ``canvas = image * scale + (pad_x, pad_y)``."""
    scale: float
    pad_x: float
    pad_y: float
    size: int


def _general_area(src: int, dst: int) -> bool | None:
    """OpenCV's INTER_AREA path along one axis: None for an enlargement, False for an integer shrink (its
    integer fast path), True for any other shrink (its general float path). OpenCV's own arithmetic."""
    scale = 1.0 / (dst / src)
    if scale < 1:
        return None
    return bool(abs(scale - round(scale)) >= np.finfo(np.float64).eps)


def resize_area(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)``, bit for bit, faster on uint8 images.

    A shrink by a non-integer factor takes OpenCV's general area path, whose arithmetic is float32 whatever the
    image type; its float32 instantiation runs faster than its uint8 one (LFW 250 -> 192 px: 0.33 instead of
    0.45 ms; a 640 x 480 frame -> 192: 0.75 instead of 1.0 ms), so the image is resized as float32 and rounded
    as OpenCV rounds (half to even). Equal to OpenCV's uint8 result on every image tried (4,500 resizes of LFW
    photos and camera-sized frames; tests/test_preprocess.py). Integer shrinks and enlargements go to OpenCV as
    they are (other paths, with integer rounding).
    """
    h, w = image.shape[:2]
    gx, gy = _general_area(w, width), _general_area(h, height)
    if image.dtype != np.uint8 or gx is None or gy is None or not (gx or gy):
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    out = cv2.resize(image.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    return out.round().astype(np.uint8)  # area means of uint8 values stay in [0, 255]


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` to fit a ``size`` x ``size`` canvas keeping its aspect ratio, padding with black
    (area averaging when shrinking, :func:`resize_area`; bilinear when enlarging)."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = resize_area(image, nw, nh) if scale < 1 else cv2.resize(image, (nw, nh),
                                                                        interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas[py:py + nh, px:px + nw] = resized
    return canvas, Letterbox(nw / w, float(px), float(py), size)


def unletterbox(points: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Map points normalized to the canvas (``[..., 2]`` in 0..1) back to original-image pixels."""
    pts = np.asarray(points, dtype=np.float32) * lb.size
    out = np.empty_like(pts)
    out[..., 0] = (pts[..., 0] - lb.pad_x) / lb.scale
    out[..., 1] = (pts[..., 1] - lb.pad_y) / lb.scale
    return out


def normalize(image: np.ndarray, mean: float | Sequence[float], std: float | Sequence[float]) -> np.ndarray:
    """``(image - mean) / std`` as float32 (per-channel sequences allowed). No per-image statistics."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if np.any(std == 0):
        raise ValueError("std must be non-zero")
    return (image.astype(np.float32) - mean) / std


def square_box(box: Sequence[float], margin: float) -> np.ndarray:
    """Square box around ``box`` (x1, y1, x2, y2) with side ``max(w, h) * (1 + margin)``, same centre."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not x2 > x1 or not y2 > y1:
        raise ValueError(f"degenerate box {list(box)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1) * (1 + margin) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half], dtype=np.float32)


def crop_box(image: np.ndarray, box: Sequence[float], size: int, margin: float = 0.0) -> np.ndarray:
    """Crop the square around ``box`` enlarged by ``margin`` and resize it to ``size`` x ``size``.

    Parts outside the image are black (no stretching at borders).
    """
    sx1, sy1, sx2, sy2 = square_box(box, margin)
    s = size / (sx2 - sx1)
    m = np.array([[s, 0, -sx1 * s], [0, s, -sy1 * s]], dtype=np.float32)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, m, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_rect(image: np.ndarray, box: Sequence[float], width: float, height: float, shift_y: float,
              size: int) -> np.ndarray:
    """Crop a ``width`` x ``height`` rectangle (in units of the box width) centred on ``box`` moved down by
    ``shift_y`` box widths, and resize it to ``size`` x ``size`` (stretching, as FaceNet's own pipeline does).

    Parts outside the image are black.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    bw = x2 - x1
    if not bw > 0 or not y2 > y1:
        raise ValueError(f"degenerate box {list(box)}")
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}, {height}")
    w, h = width * bw, height * bw
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 + shift_y * bw
    sx, sy = size / w, size / h
    m = np.array([[sx, 0, -(cx - w / 2) * sx], [0, sy, -(cy - h / 2) * sy]], dtype=np.float32)
    interp = cv2.INTER_AREA if min(sx, sy) < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, m, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` points onto ``dst``.

    Umeyama's method; returns a 2x3 matrix for :func:`cv2.warpAffine`.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point arrays, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc ** 2).sum() / len(src)
    if var_s == 0:
        raise ValueError("source points are all identical")
    cov = dc.T @ sc / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = np.trace(np.diag(d) @ sign) / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]]).astype(np.float32)


def align_face(image: np.ndarray, points: np.ndarray, template: np.ndarray, size: int) -> np.ndarray:
    """Warp ``image`` so that landmark ``points`` land on ``template`` (given for a ``size`` crop)."""
    m = similarity_transform(points, template)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


ENHANCEMENTS = ("none", "equalize", "clahe", "gamma")


def enhance(image: np.ndarray, method: str = "none") -> np.ndarray:
    """Brighten or stretch a dark or flat RGB uint8 image before detection and embedding.

    ``equalize``: histogram equalization of the luma (YCrCb). ``clahe``: contrast-limited adaptive equalization
    of the LAB lightness (clip 2, 8x8 tiles). ``gamma``: a gamma that brings the mean luma to 0.5. ``none``
    returns ``image`` itself.

    Which to use (``edgeface bench preprocess``, the default int8 build, the 1,000 LFW DevTest pairs, probe
    degraded, both images enhanced): ``equalize`` is the one to turn on for a dark entrance or a backlit door. It
    recovers an unlit-and-hazy probe from 82.1 % to 98.7 % accuracy and costs nothing on good images (99.1 %
    both); a probe that is only dark or only hazy stays at 98.7-98.9 % with or without it. ``clahe`` does less
    when both combine (94.2 %); ``gamma`` hurts on low contrast (97.3 %). Enroll with the same setting as the
    door uses.
    """
    if method not in ENHANCEMENTS:
        raise OptionError(f"unknown enhancement {method!r}; choose one of {', '.join(ENHANCEMENTS)}")
    if method == "none":
        return image
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"enhance needs an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    if method == "equalize":
        ycc = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
        ycc[..., 0] = cv2.equalizeHist(ycc[..., 0])
        return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
    if method == "clahe":
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
        lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(lab[..., 0])
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean() / 255.0
    g = np.log(0.5) / np.log(np.clip(luma, 1e-3, 0.999))
    lut = np.clip(((np.arange(256) / 255.0) ** g) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)
