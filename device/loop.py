"""The recognition loop: frame -> detect -> track -> quality gates -> embed (per track, when worth it) ->
k-of-n vote -> liveness -> door decision -> event log.

The detector runs on every frame; the embedder runs per track only when the face is new, clearly better than
the last embedded crop, or due for another vote. Any error, a bad frame or a lost camera leaves the door
locked (fail secure).
"""
from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import numpy as np

from edgeface.detect import Face
from edgeface.gallery import escape_name
from edgeface.recognizer import identify_crop

from . import quality as quality_mod
from .decision import LivenessCheck, Vote, VoteBox, make_liveness
from .sources import LOST, Frame, FrameCheckError, FrameGrabber, ReconnectingSource, check_frame
from .threshold import door_threshold
from .tracker import IoUTracker, Track

log = logging.getLogger(__name__)

#: how often a failing event log is reported (each unlogged event is counted in stats["events_not_logged"])
EVENTLOG_WARNING_SECONDS = 60.0

STAGES = ("source", "check", "enhance", "detect", "track", "quality", "embed", "match", "decide", "log")


class StageTimer:
    """Per-stage latency samples (milliseconds) and their summary."""

    def __init__(self, maxlen: int = 100_000):
        self.samples: dict[str, collections.deque] = {s: collections.deque(maxlen=maxlen) for s in STAGES}
        self.samples["frame"] = collections.deque(maxlen=maxlen)

    def add(self, stage: str, seconds: float) -> None:
        self.samples.setdefault(stage, collections.deque(maxlen=100_000)).append(seconds * 1000.0)

    def summary(self) -> dict[str, dict]:
        out = {}
        for stage, values in self.samples.items():
            if not values:
                continue
            a = np.asarray(values)
            out[stage] = {"n": int(a.size), "mean_ms": round(float(a.mean()), 3),
                          "p50_ms": round(float(np.percentile(a, 50)), 3),
                          "p95_ms": round(float(np.percentile(a, 95)), 3), "max_ms": round(float(a.max()), 3)}
        return out

    def table(self) -> str:
        rows = [f"{'stage':8} {'calls':>7} {'mean ms':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"]
        for stage, s in self.summary().items():
            rows.append(f"{stage:8} {s['n']:7d} {s['mean_ms']:9.2f} {s['p50_ms']:8.2f} {s['p95_ms']:8.2f} "
                        f"{s['max_ms']:8.2f}")
        return "\n".join(rows)


class Decision(NamedTuple):
    """One reported decision about a track."""
    frame: int
    time: float
    track: int
    decision: str            #: grant, cooldown, spoof (no liveness), unknown
    identity: Optional[str]  #: confirmed person (None for unknown)
    score: float             #: mean cosine similarity of the agreeing votes, or best seen for unknown
    detail: str

    def to_json(self) -> dict:
        d = self._asdict()
        d["score"] = None if math.isnan(self.score) else round(self.score, 4)
        return d


@dataclass
class TrackState:
    votes: VoteBox
    keypoints: collections.deque
    n_embeds: int = 0
    last_embed_frame: int = -10**9
    last_embed_score: float = 0.0
    decided: bool = False
    confirmed: Optional[tuple] = None      # (name, score, frame)
    last_quality: Optional[quality_mod.Quality] = None
    label: str = "..."
    liveness_score: float = 0.0
    reported_unknown: bool = False
    rejected: collections.Counter = field(default_factory=collections.Counter)


class _RateLimitedLog:
    """One warning per key per ``every`` seconds (or the key's own period), counting the ones held back."""

    def __init__(self, every: float = 10.0, periods: Optional[dict] = None):
        self.every, self.last, self.suppressed = every, {}, collections.Counter()
        self.periods = dict(periods or {})

    def warning(self, key: str, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self.last.get(key, -1e9) >= self.periods.get(key, self.every):
            extra = f" ({self.suppressed[key]} more since last report)" if self.suppressed[key] else ""
            log.warning(msg + extra, *args)
            self.last[key], self.suppressed[key] = now, 0
        else:
            self.suppressed[key] += 1


class FaceLoop:
    """The door / kiosk loop over frames.

    Args:
      recognizer: an :class:`edgeface.FaceRecognizer` (its detector and embedder are used).
      gallery: an :class:`edgeface.Gallery` opened with the recognizer's embedder id.
      cfg: :class:`edgeface.device.config.DeviceConfig`.
      door: a :class:`edgeface.device.door.DoorController` or None (decisions only).
      events: an :class:`edgeface.device.events.EventLog` or None.
      liveness: the liveness hook (default from ``cfg.liveness``).
      clock: "frame" (door timing follows frame timestamps: video files) or "wall" (live cameras).
      threshold: the door's min cosine similarity (default: :func:`edgeface.device.threshold.door_threshold`).
    """

    def __init__(self, recognizer, gallery, cfg, door=None, events=None,
                 liveness: Optional[LivenessCheck] = None, clock: str = "wall", threshold: Optional[float] = None):
        self.rec, self.gallery, self.cfg = recognizer, gallery, cfg
        self.door, self.events = door, events
        self.liveness = liveness if liveness is not None else make_liveness(cfg.liveness)
        self.clock = clock
        # the policy (and its refusal of weak thresholds) lives in .threshold
        self.threshold = (float(threshold) if threshold is not None
                          else door_threshold(cfg, recognizer.embedder, len(gallery)).value)
        self.tracker = IoUTracker(cfg.tracker.min_iou, cfg.tracker.max_missed_frames)
        self.timer = StageTimer()
        self.stats = collections.Counter()
        self.decisions: list[Decision] = []
        self.camera_ok = True
        self.expected_shape: Optional[tuple] = None
        #: the event log failing (full disk...) is reported once a minute; the door stays locked meanwhile
        self._rlog = _RateLimitedLog(periods={"eventlog": EVENTLOG_WARNING_SECONDS})
        self.eventlog_error: Optional[str] = None  #: last event-log write failure (None once writes work again)
        self.last_faces: list[tuple[Track, TrackState]] = []
        self._last_index, self._last_time = 0, 0.0

    @property
    def last_frame_time(self) -> float:
        """Time of the last good frame on the loop's clock (the door's clock for video sources)."""
        return self._last_time

    # -- time ---------------------------------------------------------------
    def _now(self, frame: Optional[Frame]) -> float:
        if self.clock == "frame" and frame is not None:
            return frame.timestamp
        return time.monotonic()

    # -- camera state --------------------------------------------------------
    def camera_lost(self, reason: str = "camera lost", frame_time: Optional[float] = None) -> None:
        """Lock the door, end every track, log once."""
        self._lock_door(reason)
        self.tracker.clear()
        self.expected_shape = None
        self.stats["lost_reads"] += 1
        if self.camera_ok:
            self.camera_ok = False
            log.warning("%s: door locked until the camera is back", reason)
            self.log_event("camera_lost", detail=reason)

    def _camera_back(self) -> None:
        if not self.camera_ok:
            self.camera_ok = True
            log.warning("camera restored")
            self.log_event("camera_restored")

    def _lock_door(self, reason: str) -> None:
        if self.door is not None:
            self.door.lock(reason)

    def log_event(self, kind: str, required: bool = False, **kw) -> bool:
        """Write an event; True when it is committed (or there is no event log).

        A failure (full disk, read-only or corrupt log) is counted and reported once a minute. ``required``:
        re-raise it (the grant's audit record: the door must not open without it).
        """
        if self.events is None:
            return True
        t = time.perf_counter()
        try:
            self.events.log(kind, **kw)
        except Exception as exc:  # noqa: BLE001 - a full disk must not open the door or stop the loop
            self.stats["events_not_logged"] += 1
            self.eventlog_error = str(exc)
            self._rlog.warning("eventlog", "event log not writable, access decisions are not recorded and the door "
                                           "stays locked: %s", exc)
            if required:
                raise
            return False
        else:
            if self.eventlog_error is not None:
                log.warning("event log writable again (%d event(s) were not logged)", self.stats["events_not_logged"])
                self.eventlog_error = None
            return True
        finally:
            self.timer.add("log", time.perf_counter() - t)

    # -- one frame -------------------------------------------------------------
    def process(self, frame: Frame) -> list[Decision]:
        """Handle one frame; returns the decisions it produced. Never raises for bad frames or model errors:
        the frame is skipped, logged, and the door locked."""
        t_frame = time.perf_counter()
        try:
            t = time.perf_counter()
            try:
                image = check_frame(frame.image, self.cfg.source.min_frame_pixels, self.cfg.source.max_frame_pixels,
                                    self.expected_shape)
                detect_image = None if frame.detect_image is None else check_frame(
                    frame.detect_image, 1, self.cfg.source.max_frame_pixels)
            except FrameCheckError as exc:
                self.stats["bad_frames"] += 1
                self._rlog.warning("badframe", "frame %s skipped: %s", frame.index, exc)
                if self.door is not None:
                    self.door.update(self._now(frame))
                return []
            finally:
                self.timer.add("check", time.perf_counter() - t)
            if self.expected_shape is None:
                self.expected_shape = tuple(image.shape[:2])
            self._camera_back()
            self.stats["frames"] += 1
            now = self._now(frame)
            self._last_index, self._last_time = frame.index, now
            if self.door is not None:
                self.door.update(now)
            return self._process(frame, image, detect_image, now)
        except Exception as exc:  # fail secure on anything unexpected
            self.stats["errors"] += 1
            self._lock_door("error")
            self._rlog.warning("error", "frame %s failed, door locked: %s", frame.index, exc)
            log.debug("frame failure", exc_info=True)
            self.log_event("error", detail=f"{type(exc).__name__}: {exc}")
            return []
        finally:
            self.timer.add("frame", time.perf_counter() - t_frame)

    def _detect(self, image: np.ndarray, detect_image: Optional[np.ndarray]) -> list[Face]:
        # images arrive prepared (enhanced) by _process: call the detector itself, not rec.detect
        if detect_image is None:
            faces = self.rec.detector.detect(image)
        else:  # picamera2: detect on the low-resolution stream, map to the main stream
            sy = image.shape[0] / detect_image.shape[0]
            sx = image.shape[1] / detect_image.shape[1]
            scale = np.array([sx, sy], np.float32)
            faces = [Face(f.box * np.tile(scale, 2), f.score, f.keypoints * scale)
                     for f in self.rec.detector.detect(detect_image)]
        faces.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        return faces[:self.cfg.tracker.max_tracks]

    def _process(self, frame: Frame, image, detect_image, now: float) -> list[Decision]:
        prepare = getattr(self.rec, "prepare", None)
        if prepare is not None and getattr(self.rec, "enhance", "none") != "none":
            t = time.perf_counter()
            image = prepare(image)  # the same image feeds detection, crops and snapshots
            detect_image = None if detect_image is None else prepare(detect_image)
            self.timer.add("enhance", time.perf_counter() - t)
        t = time.perf_counter()
        faces = self._detect(image, detect_image)
        self.timer.add("detect", time.perf_counter() - t)
        t = time.perf_counter()
        seen, ended = self.tracker.update(faces, frame.index)
        self.timer.add("track", time.perf_counter() - t)
        out: list[Decision] = []
        for track in ended:
            out.extend(self._end_track(track, frame, now))
        self.last_faces = []
        for track in seen:
            st = track.state.get("s")
            if st is None:
                st = TrackState(VoteBox(self.cfg.recognition.votes_needed, self.cfg.recognition.vote_window),
                                collections.deque(maxlen=self.cfg.liveness.window_frames))
                track.state["s"] = st
            st.keypoints.append(np.asarray(track.face.keypoints, np.float32))
            out.extend(self._step_track(track, st, frame, image, now))
            self.last_faces.append((track, st))
        return out

    def _wants_embedding(self, st: TrackState, q: quality_mod.Quality, index: int) -> bool:
        r = self.cfg.recognition
        if st.decided or st.confirmed is not None or st.n_embeds >= r.max_embeds_per_track:
            return False
        if st.n_embeds == 0:
            return True
        since = index - st.last_embed_frame
        if since < r.min_frames_between_embeds:
            return False
        return q.score >= st.last_embed_score * (1.0 + r.min_quality_gain) or since >= r.reembed_every_frames

    def _step_track(self, track: Track, st: TrackState, frame: Frame, image, now: float) -> list[Decision]:
        out = []
        face = track.face
        if not st.decided and st.confirmed is None:
            t = time.perf_counter()
            q = quality_mod.assess(image, face.box, face.keypoints, self.cfg.quality)
            st.last_quality = q
            self.timer.add("quality", time.perf_counter() - t)
            if not q.ok:
                st.rejected[q.reason.split(" ")[0]] += 1
                self.stats["quality_rejected"] += 1
            elif self._wants_embedding(st, q, frame.index):
                t = time.perf_counter()
                crop = self.rec.embedder.crop(image, face.box, face.keypoints)
                stages = {"embed": time.perf_counter() - t}
                # the mirror image only where it could change the answer (the embedder's flip_band)
                found = identify_crop(self.rec.embedder, crop, self.gallery, self.threshold, stages)
                match = found.match
                for stage, seconds in stages.items():
                    self.timer.add(stage, seconds)
                self.stats["mirrored"] += found.mirrored
                self.stats["embeddings"] += 1
                st.n_embeds += 1
                st.last_embed_frame, st.last_embed_score = frame.index, q.score
                verdict = st.votes.add(Vote(match.name, float(match.similarity)))
                if verdict.status == "confirmed":
                    st.confirmed = (verdict.name, verdict.similarity, frame.index)
                    st.label = f"{verdict.name}?"
                elif verdict.status == "unknown" and not st.reported_unknown:
                    # reported once; voting goes on (a person still walking in may be recognised later)
                    st.reported_unknown = True
                    st.label = "unknown"
                    out.append(self._decide(track, frame, image, now, "unknown", None, verdict.similarity,
                                            f"{verdict.votes} of last {len(st.votes.votes)} votes match no one"))
                if st.confirmed is None and st.n_embeds >= self.cfg.recognition.max_embeds_per_track:
                    final = st.votes.verdict(final=True)
                    st.decided = True
                    st.label = "unknown"
                    if not st.reported_unknown:
                        out.append(self._decide(track, frame, image, now, "unknown", None, final.similarity,
                                            f"no {st.votes.k} of {st.votes.n} agreement in {st.n_embeds} crops"))
        if st.confirmed is not None and not st.decided:
            t = time.perf_counter()
            name, score, at = st.confirmed
            live = self.liveness.check(list(st.keypoints), image)
            st.liveness_score = max(st.liveness_score, live.score if live.score == live.score else 0.0)
            if live.live:
                st.decided = True
                d = self._grant(track, frame, image, now, name, score,
                                f"{st.votes.k} of {st.votes.n} votes; liveness: {live.reason}")
                st.label = {"grant": name, "cooldown": f"{name} (cooldown)"}.get(d.decision, f"{name} (not logged)")
                out.append(d)
            elif live.live is False or frame.index - at >= self.cfg.liveness.max_wait_frames:
                st.decided = True
                st.label = f"{name}: no liveness"
                out.append(self._decide(track, frame, image, now, "spoof", name, score,
                                        f"liveness failed: {live.reason}"))
            self.timer.add("decide", time.perf_counter() - t)
        return out

    def _end_track(self, track: Track, frame: Frame, now: float) -> list[Decision]:
        st = track.state.get("s")
        if st is None or st.decided:
            return []
        if st.confirmed is not None:
            name, score, _ = st.confirmed
            return [self._decide(track, frame, None, now, "spoof", name, score,
                                 f"left before showing liveness (best {st.liveness_score:.3f})")]
        if st.n_embeds and not st.reported_unknown:
            final = st.votes.verdict(final=True)
            return [self._decide(track, frame, None, now, "unknown", None, final.similarity,
                                 f"left undecided after {st.n_embeds} crop(s)")]
        return []

    def _grant(self, track: Track, frame: Frame, image, now: float, name: str, score: float, detail: str) -> Decision:
        """Open the door for ``name`` - only after the grant's event is committed to the event log.

        The door calls back (``audit``) once the grant is certain and before the relay moves; if the event cannot
        be written the door stays locked and the decision is ``deny`` ("not logged").
        """
        logged = []

        def audit():
            self._log_access(track, frame, image, "grant", name, score, detail, required=True)
            logged.append(True)

        try:
            if self.door is None:
                audit()
                granted = True
            else:
                granted = self.door.grant(now, escape_name(name), audit=audit)
        except Exception as exc:  # noqa: BLE001 - no audit record, no access
            self._lock_door("event log not writable")
            return self._decide(track, frame, None, now, "deny", name, score,
                                f"event log not writable, door kept locked ({type(exc).__name__})", log_it=False)
        if granted:
            return self._decide(track, frame, image, now, "grant", name, score, detail, log_it=False)
        if logged:  # audited, then the relay failed: the door is locked, say so in the log
            self.log_event("error", track=track.id, identity=name, decision="deny", detail="relay failed after grant")
            return self._decide(track, frame, None, now, "deny", name, score, "relay failed", log_it=False)
        return self._decide(track, frame, image, now, "cooldown", name, score, detail)

    def _log_access(self, track: Track, frame: Frame, image, decision: str, name, score: float, detail: str,
                    required: bool = False) -> bool:
        snap = None
        if image is not None and self.events is not None and self.events.snapshot_dir is not None:
            snap = self.rec.embedder.crop(image, track.face.box, track.face.keypoints)
        return self.log_event("access", required=required, track=track.id, identity=name, score=score,
                               decision=decision, detail=f"frame {frame.index}: {detail}", snapshot=snap)

    def _decide(self, track: Track, frame: Frame, image, now: float, decision: str, name, score: float,
                detail: str, log_it: bool = True) -> Decision:
        d = Decision(frame.index, now, track.id, decision, name, float(score), detail)
        self.decisions.append(d)
        self.stats[f"decision_{decision}"] += 1
        if log_it:
            self._log_access(track, frame, image, decision, name, score, detail)
        log.info("track %d: %s %s (%.3f) %s", track.id, decision, escape_name(name or "unknown"), score, detail)
        return d

    def finish(self) -> list[Decision]:
        """End every track (end of the video): undecided ones are reported as unknown."""
        frame = Frame(np.zeros((1, 1, 3), np.uint8), 0.0, self._last_index)
        out = []
        for track in self.tracker.clear():
            out.extend(self._end_track(track, frame, self._now(None) if self.clock == "wall" else self._last_time))
        return out

    # -- running -------------------------------------------------------------
    def run(self, source: ReconnectingSource, max_frames: Optional[int] = None, threaded: bool = True,
            stop: Optional[Callable[[], bool]] = None, on_frame: Optional[Callable] = None) -> None:
        """Read frames until the source ends, ``max_frames`` frames or ``stop()``.

        ``threaded``: capture on a thread with a newest-frame-wins queue (cameras); off reads every frame in
        order (video files, tests). ``on_frame(frame, loop, decisions)`` is called after each frame (overlay).
        """
        grabber = FrameGrabber(source, self.cfg.source.queue_size).start() if threaded else None
        if not threaded:
            source.open()
        n = 0
        try:
            while max_frames is None or n < max_frames:
                if stop is not None and stop():
                    break
                t = time.perf_counter()
                item = grabber.get(self.cfg.source.read_timeout_seconds) if grabber else source.read()
                self.timer.add("source", time.perf_counter() - t)
                n += 1
                if item is None:
                    log.info("source ended")
                    break
                if item is LOST:
                    reason = f"camera lost ({getattr(source, 'last_error', None) or 'no frame'})"
                    self.camera_lost(reason)
                    if on_frame is not None:
                        on_frame(None, self, [])
                    continue
                decisions = self.process(item)
                if on_frame is not None:
                    on_frame(item, self, decisions)
            self.finish()
        finally:
            self._lock_door("loop stopped")
            if grabber is not None:
                grabber.stop()
            else:
                source.close()
            if grabber is not None:
                self.stats["frames_dropped"] = grabber.queue.dropped
