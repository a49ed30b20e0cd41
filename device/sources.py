"""Frame sources behind one small interface, reopened with backoff, with a newest-frame-wins queue.

Every source yields :class:`Frame` s holding an RGB ``uint8`` image (and optionally a smaller image for the
detector, e.g. picamera2's low-resolution stream). ``open()`` / ``read()`` / ``close()``: ``read()`` returns
a Frame, returns ``None`` at the end of a finite source, or raises :class:`SourceError` when the camera fails.

* :class:`Picamera2Source` - the Pi camera (``picamera2`` from Raspberry Pi OS apt, imported lazily); detects
  on the low-resolution stream and crops from the main one. Its "RGB888" arrays are B,G,R in memory.
* :class:`OpenCVSource` - ``cv2.VideoCapture`` on a camera index, device path, URL or file.
* :class:`VideoFileSource` - a video file, optionally paced at its frame rate and looped.
* :class:`ImageFolderSource` - image files in name order.

:class:`ReconnectingSource` reopens a failing source with exponential backoff; :class:`FrameGrabber` reads
on a thread into a bounded :class:`LatestQueue` that drops the oldest frame when full.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

import cv2
import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.preprocess import read_image, to_rgb

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class SourceError(EdgefaceError, RuntimeError):
    """The camera or stream failed (cannot open, read error, timeout)."""


@dataclass
class Frame:
    image: np.ndarray                     #: RGB uint8 (H, W, 3), the image crops are cut from
    timestamp: float                      #: seconds (camera clock, or video position for files)
    index: int                            #: frame number from the source
    detect_image: Optional[np.ndarray] = None  #: smaller RGB image for the detector (None: use ``image``)


class FrameSource(Protocol):
    name: str

    def open(self) -> None: ...

    def read(self) -> Optional[Frame]: ...

    def close(self) -> None: ...


class FrameCheckError(EdgefaceError, ValueError):
    """A frame that cannot be used (empty, wrong dtype or size, corrupt)."""


def check_frame(image, min_pixels: int = 1, max_pixels: int = 10**9,
                expected_shape: Optional[tuple[int, int]] = None, order: str = "rgb") -> np.ndarray:
    """Return ``image`` as RGB uint8 or raise :class:`FrameCheckError` saying why it is unusable.

    Grey and 4-channel frames are converted (``order`` is the channel order of a colour frame); float,
    16-bit and other dtypes, empty arrays, sizes outside ``[min_pixels, max_pixels]`` and frames whose
    (height, width) differ from ``expected_shape`` are rejected.
    """
    if image is None:
        raise FrameCheckError("no frame (None)")
    if not isinstance(image, np.ndarray):
        raise FrameCheckError(f"not an array ({type(image).__name__})")
    if image.size == 0:
        raise FrameCheckError(f"empty frame (shape {image.shape})")
    if image.dtype != np.uint8:
        raise FrameCheckError(f"wrong dtype {image.dtype} (want uint8)")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise FrameCheckError(f"wrong shape {image.shape} (want H x W x 3)")
    pixels = image.shape[0] * image.shape[1]
    if not min_pixels <= pixels <= max_pixels:
        raise FrameCheckError(f"frame {image.shape[1]}x{image.shape[0]} outside [{min_pixels}, {max_pixels}] pixels")
    if expected_shape is not None and tuple(image.shape[:2]) != tuple(expected_shape):
        raise FrameCheckError(f"frame {image.shape[1]}x{image.shape[0]} is not the stream's "
                              f"{expected_shape[1]}x{expected_shape[0]}")
    if image.ndim == 3 and image.shape[2] == 3 and order == "rgb":
        return np.ascontiguousarray(image)
    return to_rgb(image, order)


class OpenCVSource:
    """``cv2.VideoCapture`` on a camera index ("0"), a device path, a URL or a video file."""

    def __init__(self, uri: str | int = 0, width: Optional[int] = None, height: Optional[int] = None,
                 fps: Optional[float] = None):
        self.uri = int(uri) if isinstance(uri, str) and uri.isdigit() else uri
        self.width, self.height, self.fps = width, height, fps
        self.name = f"opencv:{uri}"
        self._cap = None
        self._index = 0

    def open(self) -> None:
        self.close()
        cap = cv2.VideoCapture(self.uri)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.name}: cannot open")
        if isinstance(self.uri, int):
            if self.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap

    def _timestamp(self) -> float:
        return time.monotonic()

    def read(self) -> Optional[Frame]:
        if self._cap is None:
            raise SourceError(f"{self.name}: not open")
        ok, bgr = self._cap.read()
        if not ok:
            raise SourceError(f"{self.name}: read failed (camera unplugged or stream ended)")
        self._index += 1
        # OpenCV delivers B,G,R; a frame with another layout is handed on as is and rejected by check_frame
        if isinstance(bgr, np.ndarray) and bgr.ndim == 3 and bgr.shape[2] == 3 and bgr.dtype == np.uint8:
            image = bgr[:, :, ::-1]
        else:
            image = bgr
        return Frame(image, self._timestamp(), self._index - 1)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileSource(OpenCVSource):
    """A video file: every frame in order, timestamps from the file's frame rate; optionally paced and looped."""

    def __init__(self, path: str | Path, realtime: bool = False, loop: bool = False):
        super().__init__(str(path))
        self.path = Path(path)
        self.name = f"video:{self.path.name}"
        self.realtime, self.loop = realtime, loop
        self._fps = 0.0
        self._t0 = 0.0
        self._offset = 0.0

    def open(self) -> None:
        if not self.path.is_file():
            folder = " (it is a folder)" if self.path.is_dir() else ""
            raise SourceError(f"{self.name}: no such file {self.path}{folder}")
        if not os.access(self.path, os.R_OK):
            raise SourceError(f"{self.name}: {self.path} is not readable (permissions)")
        super().open()
        self._fps = self._cap.get(cv2.CAP_PROP_FPS) or 25.0
        self._t0 = time.monotonic()
        self._index = 0

    def read(self) -> Optional[Frame]:
        if self._cap is None:
            raise SourceError(f"{self.name}: not open")
        ok, bgr = self._cap.read()
        if not ok:
            if self.loop and self._index > 0:
                self._offset += self._index / self._fps
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                self._index = 0
                return self.read()
            return None
        ts = self._offset + self._index / self._fps
        self._index += 1
        if self.realtime:
            delay = self._t0 + ts - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return Frame(bgr[:, :, ::-1], ts, self._index - 1)


class ImageFolderSource:
    """Image files of a folder in name order, at ``fps`` (timestamps ``index / fps``)."""

    def __init__(self, folder: str | Path, fps: float = 10.0, realtime: bool = False, loop: bool = False):
        self.folder = Path(folder)
        self.fps, self.realtime, self.loop = float(fps), realtime, loop
        self.name = f"folder:{self.folder}"
        self._files: list[Path] = []
        self._i = 0
        self._t0 = 0.0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.name}: no such folder" + (" (it is a file)" if self.folder.exists() else ""))
        try:
            self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise SourceError(f"{self.name}: cannot list the folder ({exc.strerror or exc})") from exc
        if not self._files:
            raise SourceError(f"{self.name}: no images")
        self._i = 0
        self._t0 = time.monotonic()

    def read(self) -> Optional[Frame]:
        if self._i >= len(self._files):
            if not self.loop:
                return None
        path = self._files[self._i % len(self._files)]
        ts = self._i / self.fps
        self._i += 1
        if self.realtime:
            delay = self._t0 + ts - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        try:
            image = read_image(path)
        except ValueError as exc:  # a bad file is a bad frame, not a dead camera
            log.warning("%s", exc)
            image = np.zeros((0, 0, 3), np.uint8)
        return Frame(image, ts, self._i - 1)

    def close(self) -> None:
        self._files = []


class Picamera2Source:
    """The Raspberry Pi camera through picamera2 (``sudo apt install python3-picamera2``).

    The main stream ("RGB888", which is B,G,R in memory) is where crops are cut; the detector runs on the
    low-resolution YUV420 stream when ``lores_size`` is given.
    """

    def __init__(self, size: tuple[int, int] = (640, 480), lores_size: Optional[tuple[int, int]] = (320, 240),
                 fps: float = 15.0, camera_num: int = 0):
        self.size, self.lores_size, self.fps, self.camera_num = tuple(size), lores_size, fps, camera_num
        self.name = f"picamera2:{camera_num}"
        self._cam = None
        self._index = 0

    def open(self) -> None:
        self.close()
        try:
            from picamera2 import Picamera2  # lazy: only on a Pi, from apt
        except ImportError as exc:
            raise SourceError("picamera2 is not importable: on Raspberry Pi OS `sudo apt install python3-picamera2` "
                              "and create the venv with --system-site-packages") from exc
        try:
            cam = Picamera2(self.camera_num)
            streams = {"main": {"size": self.size, "format": "RGB888"}}
            if self.lores_size:
                streams["lores"] = {"size": tuple(self.lores_size), "format": "YUV420"}
            config = cam.create_video_configuration(**streams, controls={"FrameRate": float(self.fps)})
            cam.configure(config)
            cam.start()
        except Exception as exc:  # libcamera raises many kinds
            raise SourceError(f"{self.name}: cannot start the camera ({exc})") from exc
        self._cam = cam

    def read(self) -> Optional[Frame]:
        if self._cam is None:
            raise SourceError(f"{self.name}: not open")
        try:
            request = self._cam.capture_request()
            try:
                main = request.make_array("main")
                lores = request.make_array("lores") if self.lores_size else None
            finally:
                request.release()
        except Exception as exc:
            raise SourceError(f"{self.name}: capture failed ({exc})") from exc
        self._index += 1
        image = main[:, :, :3][:, :, ::-1] if main.ndim == 3 else main  # "RGB888" is B,G,R in memory
        detect = None
        if lores is not None:
            detect = cv2.cvtColor(lores, cv2.COLOR_YUV2RGB_I420)
        return Frame(image, time.monotonic(), self._index - 1, detect)

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            except Exception:
                log.debug("picamera2 close failed", exc_info=True)
            self._cam = None


def picamera2_available() -> bool:
    try:
        import picamera2  # noqa: F401 - imported only to probe that the optional package is installed
    except ImportError:
        return False
    return True


def make_source(cfg) -> FrameSource:
    """The source described by :class:`edgeface.device.config.SourceConfig`."""
    kind = cfg.kind
    if kind == "auto":
        kind = "picamera2" if picamera2_available() else "opencv"
    lores = (cfg.lores_width, cfg.lores_height) if cfg.lores_width else None
    if kind == "picamera2":
        return Picamera2Source((cfg.width, cfg.height), lores, cfg.fps)
    if kind == "opencv":
        return OpenCVSource(cfg.uri, cfg.width, cfg.height, cfg.fps)
    if kind == "video":
        return VideoFileSource(cfg.uri, realtime=cfg.realtime, loop=cfg.loop)
    if kind == "folder":
        return ImageFolderSource(cfg.uri, cfg.fps, realtime=cfg.realtime, loop=cfg.loop)
    raise ValueError(f"unknown source kind {kind!r}")


class Backoff:
    """Exponential backoff: initial, 2x initial, ... capped at ``maximum``; ``reset()`` after a success."""

    def __init__(self, initial: float = 0.5, maximum: float = 10.0):
        self.initial, self.maximum = float(initial), float(maximum)
        self.reset()

    def reset(self) -> None:
        self.current = self.initial

    def next(self) -> float:
        wait = self.current
        self.current = min(self.maximum, max(self.current * 2, 1e-3))
        return wait


class ReconnectingSource:
    """Wraps a source: a failed open or read closes it and reopens after a backoff.

    ``read()`` never raises: while the camera is down it returns :data:`LOST` (so the loop can lock the door
    and report), and ``None`` only at the real end of a finite source.
    """

    def __init__(self, source: FrameSource, backoff: Backoff, sleep: Callable[[float], None] = time.sleep,
                 max_reopen_attempts: Optional[int] = None):
        self.source, self.backoff, self.sleep = source, backoff, sleep
        self.name = source.name
        self.max_reopen_attempts = max_reopen_attempts
        self.is_open = False
        self.failures = 0
        self.reopens = 0
        self.last_error: Optional[str] = None

    def open(self) -> None:
        try:
            self.source.open()
            self.is_open = True
            self.backoff.reset()
        except SourceError as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = str(exc)
        if self.is_open:
            log.warning("camera lost: %s", exc)
        try:
            self.source.close()
        except Exception:
            log.debug("close after failure failed", exc_info=True)
        self.is_open = False

    def read(self):
        if not self.is_open:
            if self.max_reopen_attempts is not None and self.failures > self.max_reopen_attempts:
                raise SourceError(f"{self.name}: gave up after {self.failures} failures ({self.last_error})")
            self.sleep(self.backoff.next())
            try:
                self.source.open()
            except SourceError as exc:
                self.failures += 1
                self.last_error = str(exc)
                log.info("reopen of %s failed: %s", self.name, exc)
                return LOST
            self.is_open = True
            self.reopens += 1
            self.backoff.reset()
            log.warning("camera %s reopened", self.name)
        try:
            frame = self.source.read()
        except SourceError as exc:
            self._failed(exc)
            return LOST
        return frame

    def close(self) -> None:
        self.source.close()
        self.is_open = False


class _Lost:
    """Marker returned while the camera is down."""

    def __repr__(self) -> str:
        return "LOST"


LOST = _Lost()


class LatestQueue:
    """Bounded queue where the newest item wins: putting into a full queue drops the oldest item."""

    def __init__(self, maxsize: int = 2):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._items: collections.deque = collections.deque(maxlen=maxsize)
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item) -> None:
        with self._cond:
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()

    def get(self, timeout: Optional[float] = None):
        """Oldest kept item; raises TimeoutError when nothing arrives within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items, timeout):
                raise TimeoutError("no item")
            return self._items.popleft()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class FrameGrabber:
    """Reads a (reconnecting) source on a thread into a :class:`LatestQueue`; the loop takes the newest frames.

    The loop calls :meth:`get`: a Frame, :data:`LOST` (camera down, or no frame within ``timeout``), or
    ``None`` at the end of a finite source.
    """

    def __init__(self, source: ReconnectingSource, maxsize: int = 2):
        self.source = source
        self.queue = LatestQueue(maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeface-grabber", daemon=True)
        self._ended = threading.Event()

    def start(self) -> "FrameGrabber":
        self.source.open()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = self.source.read()
                except Exception as exc:  # noqa: BLE001 - never let the grabber die silently
                    log.error("frame source failed: %s", exc)
                    item = LOST
                    time.sleep(0.1)
                self.queue.put(item)
                if item is None:
                    break
        finally:
            self._ended.set()

    def get(self, timeout: float):
        try:
            return self.queue.get(timeout)
        except TimeoutError:
            return LOST

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.source.close()
