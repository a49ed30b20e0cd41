"""Assemble the device from its configuration: door (locked first), event log, models, gallery, source, loop.

Start-up is fail secure: the relay is created locked before anything else is loaded, and a wrong, truncated or
mismatched model, or a gallery built with another embedder, stops the start with a :class:`StartupError`
naming the problem while the door stays locked.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from edgeface.detect import resolve_detector
from edgeface.errors import EdgefaceError
from edgeface.manifest import ManifestError, resolve_models

from .config import DeviceConfig
from .crypto import CryptoError, SealedGallery, make_cipher
from .door import DoorController, DoorError
from .events import EventLog, EventLogError
from .loop import FaceLoop
from .precision import PrecisionChoice, choose_precision, listed_precisions
from .sources import Backoff, ReconnectingSource, make_source

# the threshold policy lives in .threshold; these names stay importable from here
from .threshold import (  # noqa: F401
    DoorThreshold,
    ThresholdError,
    door_threshold,
    gallery_risk_note,
    manifest_threshold,
    operating_point_far,
    stranger_match_rate,
)

log = logging.getLogger(__name__)

EDGETPU_OP = "edgetpu-custom-op"


class StartupError(EdgefaceError, RuntimeError):
    """The device cannot start safely; the door stays locked."""


def edgetpu_model(path: Path) -> Path:
    """``x_edgetpu.tflite`` (compiled by edgetpu_compiler, with its manifest) beside ``x.tflite``, if present."""
    compiled = path.with_name(path.stem + "_edgetpu.tflite")
    return compiled if compiled.is_file() and compiled.with_suffix(".json").is_file() else path


def delegated_nodes(interpreter) -> tuple[int, int]:
    """(nodes run by the Edge TPU, all nodes) of an interpreter's execution plan."""
    try:
        ops = interpreter._get_ops_details()  # private, but the only way the runtimes expose the plan
    except Exception:  # noqa: BLE001 - best effort: a failing log or probe must not mask the real error
        return -1, -1
    return sum(1 for o in ops if o.get("op_name") == EDGETPU_OP), len(ops)


def door_min_face(cfg: DeviceConfig) -> int:
    """The smallest face the door's detector looks for, in detector-frame pixels: ``[models] min_face`` when
    set, else the quality gate's ``min_face_pixels`` (a smaller face is never embedded, so searching tiles for
    it would only cost time), scaled to picamera2's low-resolution stream when detection runs there."""
    if cfg.models.min_face is not None:
        return cfg.models.min_face
    src = cfg.source
    scale = src.lores_width / src.width if src.kind in ("auto", "picamera2") and src.lores_width else 1.0
    return max(1, int(cfg.quality.min_face_pixels * min(scale, 1.0)))


def resolve_precision(cfg: DeviceConfig) -> PrecisionChoice:
    """``[models] precision`` as the door runs it: as configured, or for ``auto`` the faster on this CPU
    (:mod:`edgeface.device.precision`), logged with the measurement."""
    m = cfg.models
    if m.precision != "auto":
        return PrecisionChoice(m.precision, "[models] precision", {})
    try:
        choice = choose_precision(m.dir, m.detector, m.threads or None, m.accelerator)
    except EdgefaceError as exc:
        raise StartupError(f"[models] precision auto: {exc}") from exc
    log.info("[models] precision auto: %s (%s)", choice.precision, choice.reason)
    return choice


def precision_label(cfg: DeviceConfig, rec) -> str:
    """``int8`` as configured, or ``auto: int8`` when measured at start."""
    return f"auto: {rec.precision}" if cfg.models.precision == "auto" else rec.precision


def load_recognizer(cfg: DeviceConfig):
    """FaceRecognizer per ``[models]``: Edge TPU when asked (CPU fallback only if allowed), CPU otherwise.

    The door threshold is resolved and checked here (``rec.door_threshold``, a :class:`DoorThreshold`;
    ``rec.min_cosine_similarity`` its value): a weak one is a :class:`StartupError`.
    """
    from edgeface.recognizer import FaceRecognizer
    from edgeface.runtime import DelegateError

    m = cfg.models
    try:  # the detector name first (any listed precision): its error names [models] detector
        resolve_detector(m.dir, m.precision if m.precision != "auto" else listed_precisions(m.dir)[0], m.detector)
    except ManifestError as exc:
        raise StartupError(f"[models] detector: {exc}") from exc
    except EdgefaceError as exc:
        raise StartupError(f"[models] dir: {exc}") from exc
    choice = resolve_precision(cfg)
    precision = choice.precision
    det = resolve_detector(m.dir, precision, m.detector)
    emb = resolve_models(m.dir, precision)[1]
    common = dict(precision=precision, enhance=cfg.recognition.enhance, flip=m.flip,
                  min_detection_score=m.min_detection_score, threads=m.threads or None, min_face=door_min_face(cfg))
    if m.accelerator == "edgetpu":
        if precision != "int8":
            raise StartupError("the Edge TPU runs int8 models only: set [models] precision = \"int8\"")
        tdet = det._replace(whole_frame=tuple(edgetpu_model(p) for p in det.whole_frame),
                            tile_model=edgetpu_model(det.tile_model))
        temb = edgetpu_model(emb)
        try:
            rec = FaceRecognizer(detector_path=tdet, embedder_path=temb, accelerator="edgetpu", **common)
        except DelegateError as exc:
            if not m.allow_cpu_fallback:
                raise StartupError(f"{exc}. Set [models] allow_cpu_fallback = true to run on the CPU instead") from exc
            log.warning("Edge TPU unavailable (%s); running on the CPU because allow_cpu_fallback = true", exc)
        else:
            for role, model, path in ([("detector", d, d.path) for d in rec.detector.members]
                                      + [("embedder", rec.embedder, temb)]):
                on_tpu, total = delegated_nodes(model.interpreter)
                log.info("Edge TPU %s %s: %d of %d nodes delegated", role, path.name, on_tpu, total)
                if on_tpu == 0:
                    log.warning("%s %s has no Edge TPU nodes: compile it with edgetpu_compiler "
                                "(expected %s beside it)", role, path.name, path.stem + "_edgetpu.tflite")
            rec.delegated, rec.precision_choice = True, choice
            return _with_threshold(cfg, rec)
    rec = FaceRecognizer(detector_path=det, embedder_path=emb, **common)
    rec.delegated, rec.precision_choice = False, choice
    return _with_threshold(cfg, rec)


def _with_threshold(cfg: DeviceConfig, rec, gallery_size: Optional[int] = None):
    """Attach the door threshold (:func:`door_threshold`: refused when weak unless allowed) to ``rec``;
    ``gallery_size`` resolves an open-set (``fpir_``) operating point (unknown: the strictest)."""
    try:
        policy = door_threshold(cfg, rec.embedder, gallery_size)
    except ThresholdError as exc:
        raise StartupError(str(exc)) from exc
    rec.door_threshold = policy
    rec.min_cosine_similarity = policy.value
    return rec


def open_gallery(path: str, rec):
    """The enrolled gallery for ``rec``: must exist, be sound (``PRAGMA quick_check`` and every embedding, as
    ``doctor`` checks: a damaged page must not surface mid-run as a wrong match or a crash at the door) and
    hold embeddings of the same embedder."""
    from edgeface.gallery import Gallery, GalleryError, check_gallery

    if not Path(path).is_file():
        raise StartupError(f"gallery {path} not found: enroll people first (edgeface-device enroll)")
    problems = check_gallery(path)
    if problems:
        raise StartupError(f"gallery {path} is corrupt ({'; '.join(problems[:3])}): restore a backup or "
                           "re-enroll")
    meta = Gallery.read_meta(path)
    if (meta.embedder_id, meta.dim) != (rec.embedder_id, rec.embedder.dim):
        raise StartupError(f"gallery {path} was built with embedder {meta.embedder_id!r} (dim {meta.dim}), but the "
                           f"models use {rec.embedder_id!r} (dim {rec.embedder.dim}); re-enroll with these models")
    try:
        return Gallery(path, rec.embedder_id, rec.embedder.dim)
    except GalleryError as exc:
        raise StartupError(str(exc)) from exc


def probe_file_source(source) -> None:
    """A video file or image folder that cannot be read at start is a :class:`StartupError` (exit 2), not a
    "camera lost" retried forever. Live cameras are not probed: they keep the reconnect backoff."""
    from .sources import ImageFolderSource, SourceError, VideoFileSource

    if not isinstance(source, (VideoFileSource, ImageFolderSource)):
        return
    try:
        source.open()
        if isinstance(source, VideoFileSource):
            frame = source.read()
            if frame is None or not getattr(frame.image, "size", 0):
                raise SourceError(f"{source.name}: no readable frame (not a video, or empty)")
    except SourceError as exc:
        raise StartupError(str(exc)) from exc
    finally:
        source.close()


class DoorApp:
    """The door access controller: ``with DoorApp(cfg) as app: app.run()``.

    Args:
      cfg: validated :class:`DeviceConfig`.
      pin_factory: a gpiozero pin factory object (tests pass a MockFactory they can inspect).
      clock: "wall" for cameras, "frame" for video files (door timing follows the video's clock).
      source: a frame source object instead of the one ``[source]`` describes.
    """

    def __init__(self, cfg: DeviceConfig, pin_factory=None, clock: str = "wall", source=None,
                 liveness=None):
        self.cfg, self.clock = cfg, clock
        self.door: Optional[DoorController] = None
        self.events: Optional[EventLog] = None
        self.gallery = None
        self.rec = None
        self.loop: Optional[FaceLoop] = None
        self._sealed: Optional[SealedGallery] = None
        self.site = None  # the site link ([site] enabled): edgeface.device.site.link.SiteLink
        try:
            if cfg.door.enabled:
                if clock == "wall":
                    self.door = DoorController(cfg.door, pin_factory=pin_factory)
                else:  # door time follows the video: lock() outside a frame uses the last frame's time
                    self.door = DoorController(cfg.door, clock=lambda: self.loop.last_frame_time if self.loop else 0.0,
                                               pin_factory=pin_factory, relock_timer=False)
            self.cipher = make_cipher(cfg.encryption)  # None unless [encryption] enabled
            self.events = EventLog(cfg.events.path, cfg.events.retention_days, cfg.events.max_events,
                                   cfg.events.snapshot_dir or None, cipher=self.cipher)
            self.rec = load_recognizer(cfg)
            if cfg.site.enabled:  # a door on a site may start empty: people come from the hub
                from .site.link import ensure_gallery

                ensure_gallery(cfg.gallery.path, self.rec)
            if self.cipher is None:
                self.gallery = open_gallery(cfg.gallery.path, self.rec)
            else:  # decrypted into RAM for the run; the file on disk stays sealed
                if not Path(cfg.gallery.path).is_file():
                    raise StartupError(f"gallery {cfg.gallery.path} not found: enroll people first "
                                       "(edgeface-device enroll)")
                self._sealed = SealedGallery(cfg.gallery.path, self.cipher)
                self.gallery = open_gallery(str(self._sealed.plain), self.rec)
            if cfg.recognition.operating_point.startswith("fpir_"):  # open set: the point for this gallery's size
                _with_threshold(cfg, self.rec, len(self.gallery))
            self.source = source if source is not None else make_source(cfg.source)
            if source is None:
                probe_file_source(self.source)
            self.loop = FaceLoop(self.rec, self.gallery, cfg, self.door, self.events, liveness, clock=clock,
                                 threshold=self.rec.min_cosine_similarity)
            if self.rec.door_threshold.warning:
                log.warning("%s", self.rec.door_threshold.warning)
            if cfg.site.enabled:
                self.site = start_site_link(cfg, self)
            note = gallery_risk_note(cfg, sum(p.num_embeddings for p in self.gallery.people()))
            if note:
                (log.warning if "consider" in note else log.info)("%s", note)
        except (StartupError, DoorError, EventLogError, CryptoError, ManifestError, OSError, ValueError,
                ImportError) as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - gallery errors and the like
            self._fail(exc)
        # a failing event log (full disk) does not stop the start: the loop reports it once a minute and opens
        # the door only for decisions it could record
        self.loop.log_event("start", detail=f"models {cfg.models.dir} ({precision_label(cfg, self.rec)}), gallery "
                                            f"{cfg.gallery.path}, {len(self.gallery)} people, threshold "
                                            f"{self.loop.threshold:.4f}")

    def _fail(self, exc: Exception):
        msg = str(exc) if isinstance(exc, StartupError) else f"{type(exc).__name__}: {exc}"
        if self.events is not None:
            try:
                self.events.log("error", decision="deny", detail=f"start failed: {msg}")
            except Exception:  # noqa: BLE001 - best effort: a failing log or probe must not mask the real error
                pass
        self.close()
        raise StartupError(f"cannot start, door stays locked: {msg}") from exc

    def reconnecting(self) -> ReconnectingSource:
        s = self.cfg.source
        return ReconnectingSource(self.source, Backoff(s.reopen_initial_seconds, s.reopen_max_seconds))

    def run(self, max_frames: Optional[int] = None, threaded: Optional[bool] = None, stop=None, on_frame=None):
        if threaded is None:
            threaded = not (self.cfg.source.kind in ("video", "folder") and not self.cfg.source.realtime)
        self.loop.run(self.reconnecting(), max_frames=max_frames, threaded=threaded, stop=stop, on_frame=on_frame)
        return self.loop

    def close(self) -> None:
        if self.door is not None:
            self.door.close()
        if self.events is not None:
            try:
                self.events.log("stop")
            except Exception:  # noqa: BLE001 - best effort: a failing log or probe must not mask the real error
                pass
        if self.site is not None:
            self.site.close()
            self.site = None
        if self.events is not None:
            self.events.close()
            self.events = None
        if self.gallery is not None:
            self.gallery.close()
            self.gallery = None
        if self._sealed is not None:  # the decrypted copy is deleted; nothing is written back
            self._sealed.close(save=False)
            self._sealed = None

    def __enter__(self) -> "DoorApp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_site_link(cfg: DeviceConfig, app: "DoorApp"):
    """The door's MQTT site link (``[site] enabled``); paho-mqtt is imported only here."""
    from .site.link import SiteLink

    models = {"detector": Path(app.rec.detector.manifest["model_file"]).name,
              "embedder": app.rec.embedder_id, "precision": app.rec.precision}
    return SiteLink(cfg.site, cfg.gallery.path, app.events, app.door, models, app.loop.threshold,
                    app.rec.embedder_id).start()


def has_display() -> bool:
    """A display to draw on: $DISPLAY or $WAYLAND_DISPLAY set and an OpenCV build with a GUI backend."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import cv2

    try:
        cv2.namedWindow("edgeface-probe", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("edgeface-probe")
    except cv2.error:
        return False
    return True
