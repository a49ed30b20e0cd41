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

from edgeface.manifest import ManifestError, resolve_models

from .config import DeviceConfig
from .door import DoorController, DoorError
from .events import EventLog, EventLogError
from .loop import FaceLoop
from .sources import Backoff, ReconnectingSource, make_source
from edgeface.errors import EdgefaceError

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
        ops = interpreter._get_ops_details()  # noqa: SLF001 - the only way the runtimes expose the plan
    except Exception:  # noqa: BLE001
        return -1, -1
    return sum(1 for o in ops if o.get("op_name") == EDGETPU_OP), len(ops)


def manifest_threshold(embedder, operating_point: str, gallery_size: Optional[int] = None) -> float:
    """The embedder manifest's calibrated ``min_cosine_similarity`` for an operating point.

    Open-set points (``fpir_0.01``) are resolved for ``gallery_size`` enrolled people
    (:func:`edgeface.embed.open_set_point`); unknown size: the largest calibrated gallery (strictest).
    """
    section = embedder.section
    if operating_point == "accuracy":
        return float(section["min_cosine_similarity"])
    points = section.get("operating_points") or {}
    if operating_point.startswith("fpir_"):
        from edgeface.embed import open_set_point

        try:
            point = open_set_point(points, operating_point, gallery_size if gallery_size is not None else 10 ** 9)
        except KeyError as exc:
            raise StartupError(f"{exc.args[0]}: rebuild the models with this edgeface (edgeface build)") from None
        return point.min_cosine_similarity
    if operating_point not in points:
        log.warning("the embedder manifest has no %s operating point; using its accuracy-optimal threshold %.4f",
                    operating_point, section["min_cosine_similarity"])
        return float(section["min_cosine_similarity"])
    return float(points[operating_point]["min_cosine_similarity"])


def stranger_match_rate(far: float, comparisons: int) -> float:
    """Chance that one crop of a stranger matches *someone* in a gallery: ``1 - (1 - far) ** comparisons``.

    ``far`` is the pair false accept rate of the threshold (the manifest's ``far_0.001`` point: 1 in 1,000
    different-person pairs score above it) and ``comparisons`` the number of enrolled embeddings, because the
    gallery answers with the best of all of them. It assumes independent comparisons, so read it as the size
    of the effect, not a measurement: ``edgeface bench identify`` measures FPIR on LFW. 8 people x 5 photos at
    FAR 1e-3 gives about 4% per stranger crop; the k-of-n vote over a visit lowers it, a stricter
    ``operating_point`` (``far_0.0001``) lowers it about tenfold.

    >>> round(stranger_match_rate(0.001, 40), 3)
    0.039
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    if comparisons < 0:
        raise ValueError(f"comparisons must be >= 0, got {comparisons}")
    return 1.0 - (1.0 - far) ** comparisons


def operating_point_far(cfg: DeviceConfig) -> Optional[float]:
    """The pair FAR that the configured threshold was calibrated for (``far_0.001`` -> 0.001), if known."""
    r = cfg.recognition
    if r.min_cosine_similarity is not None or not r.operating_point.startswith("far_"):
        return None
    try:
        return float(r.operating_point[4:])
    except ValueError:
        return None


def gallery_risk_note(cfg: DeviceConfig, embeddings: int) -> Optional[str]:
    """One line on how likely a stranger's crop matches someone, for the start log and ``doctor``."""
    far = operating_point_far(cfg)
    if far is None or embeddings == 0:
        return None
    rate = stranger_match_rate(far, embeddings)
    return (f"{embeddings} enrolled embeddings at {cfg.recognition.operating_point}: a stranger's crop matches "
            f"someone with probability ~{100 * rate:.1f}% (1-(1-FAR)^N); the k-of-n vote must then agree"
            + ("; consider operating_point = \"far_0.0001\"" if rate > 0.01 and far > 1e-4 else ""))


def door_threshold(cfg: DeviceConfig, rec) -> float:
    """``[recognition] min_cosine_similarity``, or the manifest's value for ``operating_point``."""
    r = cfg.recognition
    return float(r.min_cosine_similarity) if r.min_cosine_similarity is not None \
        else manifest_threshold(rec.embedder, r.operating_point)


def load_recognizer(cfg: DeviceConfig):
    """FaceRecognizer per ``[models]``: Edge TPU when asked (CPU fallback only if allowed), CPU otherwise."""
    from edgeface.recognizer import FaceRecognizer
    from edgeface.runtime import DelegateError

    m = cfg.models
    det, emb = resolve_models(m.dir, m.precision)
    common = dict(precision=m.precision, enhance=cfg.recognition.enhance,
                  min_detection_score=m.min_detection_score, threads=m.threads or None)
    if m.accelerator == "edgetpu":
        if m.precision != "int8":
            raise StartupError("the Edge TPU runs int8 models only: set [models] precision = \"int8\"")
        tdet, temb = edgetpu_model(det), edgetpu_model(emb)
        try:
            rec = FaceRecognizer(detector_path=tdet, embedder_path=temb, accelerator="edgetpu", **common)
        except DelegateError as exc:
            if not m.allow_cpu_fallback:
                raise StartupError(f"{exc}. Set [models] allow_cpu_fallback = true to run on the CPU instead")
            log.warning("Edge TPU unavailable (%s); running on the CPU because allow_cpu_fallback = true", exc)
        else:
            for role, model, path in (("detector", rec.detector, tdet), ("embedder", rec.embedder, temb)):
                on_tpu, total = delegated_nodes(model.interpreter)
                log.info("Edge TPU %s %s: %d of %d nodes delegated", role, path.name, on_tpu, total)
                if on_tpu == 0:
                    log.warning("%s %s has no Edge TPU nodes: compile it with edgetpu_compiler "
                                "(expected %s beside it)", role, path.name, path.stem + "_edgetpu.tflite")
            rec.delegated = True
            rec.min_cosine_similarity = door_threshold(cfg, rec)
            return rec
    rec = FaceRecognizer(detector_path=det, embedder_path=emb, **common)
    rec.delegated = False
    rec.min_cosine_similarity = door_threshold(cfg, rec)
    return rec


def open_gallery(path: str, rec):
    """The enrolled gallery for ``rec``: must exist and hold embeddings of the same embedder."""
    from edgeface.gallery import Gallery, GalleryError

    if not Path(path).is_file():
        raise StartupError(f"gallery {path} not found: enroll people first (edgeface-device enroll)")
    meta = Gallery.read_meta(path)
    if (meta.embedder_id, meta.dim) != (rec.embedder_id, rec.embedder.dim):
        raise StartupError(f"gallery {path} was built with embedder {meta.embedder_id!r} (dim {meta.dim}), but the "
                           f"models use {rec.embedder_id!r} (dim {rec.embedder.dim}); re-enroll with these models")
    try:
        return Gallery(path, rec.embedder_id, rec.embedder.dim)
    except GalleryError as exc:
        raise StartupError(str(exc)) from exc


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
        try:
            if cfg.door.enabled:
                if clock == "wall":
                    self.door = DoorController(cfg.door, pin_factory=pin_factory)
                else:  # door time follows the video: lock() outside a frame uses the last frame's time
                    self.door = DoorController(cfg.door, clock=lambda: self.loop._last_time if self.loop else 0.0,
                                               pin_factory=pin_factory, relock_timer=False)
            self.events = EventLog(cfg.events.path, cfg.events.retention_days, cfg.events.max_events,
                                   cfg.events.snapshot_dir or None)
            self.rec = load_recognizer(cfg)
            self.gallery = open_gallery(cfg.gallery.path, self.rec)
            self.source = source if source is not None else make_source(cfg.source)
            self.loop = FaceLoop(self.rec, self.gallery, cfg, self.door, self.events, liveness, clock=clock)
            note = gallery_risk_note(cfg, sum(p.num_embeddings for p in self.gallery.people()))
            if note:
                (log.warning if "consider" in note else log.info)("%s", note)
        except (StartupError, DoorError, EventLogError, ManifestError, OSError, ValueError, ImportError) as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - gallery errors and the like
            self._fail(exc)
        self.events.log("start", detail=f"models {cfg.models.dir} ({cfg.models.precision}), gallery "
                                        f"{cfg.gallery.path}, {len(self.gallery)} people, threshold "
                                        f"{self.loop.threshold:.4f}")

    def _fail(self, exc: Exception):
        msg = str(exc) if isinstance(exc, StartupError) else f"{type(exc).__name__}: {exc}"
        if self.events is not None:
            try:
                self.events.log("error", decision="deny", detail=f"start failed: {msg}")
            except Exception:  # noqa: BLE001
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
            except Exception:  # noqa: BLE001
                pass
            self.events.close()
            self.events = None
        if self.gallery is not None:
            self.gallery.close()
            self.gallery = None

    def __enter__(self) -> "DoorApp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
