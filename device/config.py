"""Device configuration: one TOML file, validated at start.

Every field has a default, bounds (or a set of choices) and a description; unknown sections and keys are
rejected, so a typo never silently falls back to a default. Thresholds are named by metric and direction
(``min_cosine_similarity``: a match needs at least this cosine similarity). A threshold left unset takes the
calibrated value from the model's manifest. ``edgeface-device --print-config`` prints the full commented
default file.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from edgeface.errors import EdgefaceError
from edgeface.preprocess import ENHANCEMENTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.9/3.10 only
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None


class ConfigError(EdgefaceError, ValueError):
    """An invalid configuration file or value; the message names the section and key."""


def _f(default, description: str, lo=None, hi=None, choices=None):
    """A config field: default, description, inclusive bounds ``[lo, hi]`` or allowed ``choices``."""
    return field(default=default, metadata={"description": description, "min": lo, "max": hi, "choices": choices})


@dataclass(frozen=True)
class SourceConfig:
    kind: str = _f("auto", "frame source: auto (picamera2 if importable, else OpenCV camera 0), picamera2, "
                           "opencv (VideoCapture index, file or URL), video (a video file), folder (image files)",
                   choices=("auto", "picamera2", "opencv", "video", "folder"))
    uri: str = _f("0", "camera index (\"0\"), device path, stream URL, video file or image folder")
    width: int = _f(640, "requested capture width in pixels (picamera2 main stream, OpenCV camera)", 64, 4096)
    height: int = _f(480, "requested capture height in pixels", 48, 4096)
    lores_width: int = _f(320, "picamera2 low-resolution stream width; the detector runs on it, crops come "
                               "from the main stream (0 = detect on the main stream)", 0, 4096)
    lores_height: int = _f(240, "picamera2 low-resolution stream height", 0, 4096)
    fps: float = _f(15.0, "requested frame rate; also the pace of video/folder sources when realtime is on",
                    0.5, 120.0)
    realtime: bool = _f(False, "video/folder sources: deliver frames at fps (like a camera); off = as fast as "
                               "the loop reads, every frame")
    loop: bool = _f(False, "video/folder sources: start again at the end instead of stopping")
    queue_size: int = _f(2, "frames buffered between the capture thread and the loop; when full the oldest is "
                            "dropped (newest frame wins)", 1, 64)
    reopen_initial_seconds: float = _f(0.5, "first wait before reopening a failed source", 0.0, 60.0)
    reopen_max_seconds: float = _f(10.0, "longest wait between reopen attempts (the wait doubles up to this)",
                                   0.0, 600.0)
    read_timeout_seconds: float = _f(5.0, "no frame for this long = the camera is lost (door locked, "
                                          "source reopened)", 0.1, 600.0)
    min_frame_pixels: int = _f(64 * 48, "frames smaller than this (width*height) are skipped as corrupt",
                               1, 10**9)
    max_frame_pixels: int = _f(4096 * 3072, "frames larger than this are skipped as corrupt", 1, 10**9)


@dataclass(frozen=True)
class ModelsConfig:
    dir: str = _f("models", "models folder written by `edgeface build` (holds models.json)")
    precision: str = _f("auto", "model precision: int8, float32, or auto (the faster of the two on this CPU, "
                                "measured at start; int8 on an Edge TPU and unless float32 is 10 % faster)",
                        choices=("auto", "int8", "float32"))
    accelerator: str = _f("cpu", "cpu, or edgetpu for a Coral Edge TPU (needs libedgetpu1-std and "
                                 "*_edgetpu.tflite models compiled by edgetpu_compiler)", choices=("cpu", "edgetpu"))
    allow_cpu_fallback: bool = _f(False, "with accelerator = edgetpu: run on the CPU when the Edge TPU is "
                                         "missing (else refuse to start)")
    threads: int = _f(0, "CPU threads per interpreter (0 = all cores)", 0, 64)
    min_detection_score: Optional[float] = _f(None, "minimum detector score (default: the detector manifest's)",
                                              0.01, 0.99)
    detector: Optional[str] = _f(None, "detector by name from models.json (checked at start): auto (a current "
                                       "build's default: every face size, short + full range BlazeFace) or "
                                       "short_range (one fast pass, faces filling much of the frame); unset = "
                                       "the folder's default_detector")
    min_face: Optional[int] = _f(None, "smallest face to detect, in detector-frame pixels (unset: [quality] "
                                       "min_face_pixels, scaled to picamera2's low-resolution stream: a smaller "
                                       "face is never embedded; large frames add tiles for faces this small)",
                                 0, 4096)
    flip: Optional[bool] = _f(None, "also embed the mirrored face crop and average (what the embedder manifest's "
                                    "thresholds were calibrated with; unset = the manifest's choice): always when "
                                    "enrolling, at the door only for a face scored within the manifest's "
                                    "flip_band of the threshold (1-6 % of faces). false: never, a little less "
                                    "accurate")


@dataclass(frozen=True)
class RecognitionConfig:
    operating_point: str = _f("fpir_0.001", "which calibrated threshold of the embedder manifest to use when "
                                            "min_cosine_similarity is unset: fpir_0.001 (default) / fpir_0.01: at "
                                            "most that share of strangers matched by anyone in the gallery, "
                                            "calibrated for the enrolled gallery size (`doctor` says which; "
                                            "fpir_0.01@100 names the size); far_0.0001 / far_0.001 / far_0.01: "
                                            "false accept rate per pair on LFW DevTrain (a gallery of N "
                                            "embeddings multiplies it by about N); accuracy (accuracy-optimal)",
                              choices=("far_0.0001", "far_0.001", "far_0.01", "accuracy", "fpir_0.01", "fpir_0.001",
                                       *(f"fpir_{r}@{n}" for r in ("0.01", "0.001") for n in (10, 100, 1000))))
    min_cosine_similarity: Optional[float] = _f(
        None, "a face matches an enrolled person at or above this cosine similarity (unset: the embedder "
              "manifest's calibrated value for operating_point). Below the manifest's far_0.01 value the device "
              "refuses to start (see allow_weak_threshold)", -1.0, 1.0)
    allow_weak_threshold: bool = _f(False, "accept a door threshold below the embedder manifest's far_0.01 value "
                                           "(more than 1 in 100 strangers' faces match someone); run and doctor "
                                           "then print a warning at every start. Also needed for "
                                           "operating_point = \"accuracy\" when it lies below far_0.01")
    votes_needed: int = _f(3, "k: an identity is confirmed when k of the last n embedded crops of a track "
                              "agree on one person above min_cosine_similarity", 1, 50)
    vote_window: int = _f(5, "n: embedded crops of a track that vote (the last n)", 1, 50)
    min_frames_between_embeds: int = _f(2, "a track is embedded again at most every this many frames", 1, 1000)
    reembed_every_frames: int = _f(4, "an undecided track is embedded again after this many frames even if the "
                                      "face is not better (to collect votes)", 1, 1000)
    min_quality_gain: float = _f(0.15, "or sooner when its quality score beats the last embedded crop's by "
                                       "this fraction (\"clearly better\")", 0.0, 10.0)
    max_embeds_per_track: int = _f(12, "stop embedding an undecided track after this many crops (it stays "
                                       "unknown)", 1, 1000)
    enhance: str = _f("none", "brighten frames before detection and embedding: none, or equalize for a dark or "
                              "backlit entrance (measured: dark hazy faces 51% -> 98% pair accuracy, good ones "
                              "unchanged; edgeface bench preprocess). Enrollment uses the same setting",
                      choices=ENHANCEMENTS)


@dataclass(frozen=True)
class QualityConfig:
    min_face_pixels: int = _f(56, "smallest face (shorter side of the detector box, main-stream pixels) that is "
                                  "embedded", 8, 4096)
    min_laplacian_variance: float = _f(25.0, "sharpness: variance of the Laplacian of the face resized to "
                                             "112x112 grey; lower = blurrier", 0.0, 1e6)
    max_yaw_ratio: float = _f(0.35, "frontal pose: |nose offset from the eye midpoint| / eye distance", 0.0, 5.0)
    max_roll_degrees: float = _f(25.0, "frontal pose: tilt of the eye line", 0.0, 90.0)
    min_brightness: float = _f(30.0, "mean grey level of the face crop at least this (too dark)", 0.0, 255.0)
    max_brightness: float = _f(230.0, "and at most this (blown out)", 0.0, 255.0)


@dataclass(frozen=True)
class TrackerConfig:
    min_iou: float = _f(0.3, "a detection continues a track when their boxes overlap at least this IoU",
                        0.0, 1.0)
    max_missed_frames: int = _f(5, "a track ends after this many frames without its face", 0, 10000)
    max_tracks: int = _f(8, "faces handled per frame (largest first)", 1, 100)


@dataclass(frozen=True)
class LivenessConfig:
    check: str = _f("keypoint_parallax", "liveness check before the door opens: keypoint_parallax (a real "
                                         "head moving in 3-D changes its keypoint layout; a flat photo moved in "
                                         "front of the camera does not) or none. RGB-only checks can be fooled "
                                         "(a video replay, a bent or cut-out photo)",
                    choices=("keypoint_parallax", "none"))
    min_nonrigid_residual: float = _f(0.05, "live when the track's keypoints deform by at least this much beyond "
                                            "the best affine (flat-photo) motion, averaged over 8 frames, as a "
                                            "fraction of the eye-mouth distance", 0.0, 1.0)
    window_frames: int = _f(30, "frames of keypoint history a track keeps for the check", 2, 1000)
    max_wait_frames: int = _f(45, "a confirmed identity that shows no liveness within this many frames is "
                                  "denied", 1, 100000)


@dataclass(frozen=True)
class DoorConfig:
    enabled: bool = _f(True, "drive the door relay (off = only report decisions)")
    gpio_pin: int = _f(17, "BCM pin of the relay", 0, 40)
    active_high: bool = _f(True, "relay energized by a high pin (false for active-low relay boards)")
    unlock_seconds: float = _f(5.0, "how long the door stays unlocked after a granted access", 0.1, 600.0)
    cooldown_seconds: float = _f(2.0, "after relocking, no new unlock for this long", 0.0, 3600.0)
    pin_factory: str = _f("native", "gpiozero pin factory: native (the Pi's GPIO) or mock (dry run, tests)",
                          choices=("native", "mock"))


@dataclass(frozen=True)
class EventsConfig:
    path: str = _f("events.db", "SQLite access-event log (WAL; every event one transaction)")
    retention_days: float = _f(90.0, "events older than this are deleted (0 = keep forever)", 0.0, 36500.0)
    max_events: int = _f(1_000_000, "keep at most this many events (oldest deleted first)", 100, 10**9)
    snapshot_dir: str = _f("", "save a JPEG of the face for each access decision here (empty = no snapshots)")


@dataclass(frozen=True)
class GalleryConfig:
    path: str = _f("gallery.db", "SQLite gallery of enrolled people (edgeface enroll / edgeface-device enroll)")


@dataclass(frozen=True)
class KioskConfig:
    display: str = _f("auto", "on-screen overlay: auto (when a display and an OpenCV GUI exist), on, off",
                      choices=("auto", "on", "off"))
    window_title: str = _f("edgeface", "overlay window title")


@dataclass(frozen=True)
class EnrollConfig:
    samples: int = _f(5, "K: good crops collected when enrolling from the camera", 1, 50)
    max_cosine_to_collected: float = _f(0.92, "diversity: a new crop is kept only if its cosine similarity to "
                                              "every crop already kept is at most this", -1.0, 1.0)
    min_cosine_to_first: float = _f(0.3, "consistency: and at least this to the first kept crop (same person)",
                                    -1.0, 1.0)
    timeout_seconds: float = _f(60.0, "give up when K crops are not collected in this time", 1.0, 3600.0)


@dataclass(frozen=True)
class EncryptionConfig:
    enabled: bool = _f(False, "encrypt snapshots and the gallery at rest with AES-256-GCM (needs the cryptography "
                              "package: pip install 'edgeface[crypto]'); an existing plain gallery is converted by "
                              "`edgeface-device gallery encrypt`")
    key_file: str = _f("", "file holding the 32-byte key (edgeface-device key new PATH; mode 0600)")
    credential: str = _f("", "or the name of a systemd credential holding the key (LoadCredentialEncrypted=NAME:... in "
                             "the unit; read from $CREDENTIALS_DIRECTORY/NAME)")


@dataclass(frozen=True)
class SiteConfig:
    enabled: bool = _f(False, "join a site: take people from the hub over MQTT, send events to it (needs "
                              "pip install 'edgeface[site]'; see device/site/README.md). The door still decides "
                              "alone, online or offline")
    site: str = _f("site", "site name (MQTT topics edgeface/<site>/...)")
    door_id: str = _f("", "this door's id, also its MQTT user name (letters, digits, - and _)")
    host: str = _f("127.0.0.1", "MQTT broker (Mosquitto) host name; must match its TLS certificate")
    port: int = _f(8883, "MQTT broker port (8883 = MQTT over TLS)", 1, 65535)
    password_file: str = _f("", "file holding this door's MQTT password (chmod 600)")
    ca_file: str = _f("", "the site CA certificate (ca.crt): TLS to the broker, verified; empty = plain MQTT, "
                          "only for tests on 127.0.0.1")
    hub_public_key: str = _f("", "the hub's Ed25519 public key (hub_public_key.pem): records not signed by it "
                                 "are refused")
    remote_unlock: bool = _f(False, "accept the hub's signed unlock command (audited as a remote_unlock event)")
    keepalive_seconds: int = _f(30, "MQTT keepalive; the broker declares the door offline after 1.5x this",
                                5, 3600)
    max_payload_bytes: int = _f(1_000_000, "messages larger than this are ignored with one log line",
                                1024, 100_000_000)


@dataclass(frozen=True)
class DeviceConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    recognition: RecognitionConfig = field(default_factory=RecognitionConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    door: DoorConfig = field(default_factory=DoorConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    kiosk: KioskConfig = field(default_factory=KioskConfig)
    enroll: EnrollConfig = field(default_factory=EnrollConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    site: SiteConfig = field(default_factory=SiteConfig)

    def replace(self, **sections: dict) -> "DeviceConfig":
        """A copy with some fields changed: ``cfg.replace(door={"pin_factory": "mock"})`` (validated)."""
        data = to_dict(self)
        for name, values in sections.items():
            if name not in data:
                raise ConfigError(f"unknown section [{name}]")
            data[name].update(values)
        return from_dict(data)


SECTIONS = {f.name: f.type for f in dataclasses.fields(DeviceConfig)}
_SECTION_CLASSES = {f.name: f.default_factory for f in dataclasses.fields(DeviceConfig)}


def _field_type(cls, name):
    hint = get_type_hints(cls)[name]
    optional = get_origin(hint) is Union and type(None) in get_args(hint)
    if optional:
        hint = next(a for a in get_args(hint) if a is not type(None))
    return hint, optional


def _check_value(section: str, cls, f: dataclasses.Field, value: Any) -> Any:
    where = f"[{section}] {f.name}"
    kind, optional = _field_type(cls, f.name)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be finite, got {value!r}")
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{where}: must be one of {', '.join(meta['choices'])}; got {value!r}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{where}: must be >= {meta['min']}, got {value!r}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{where}: must be <= {meta['max']}, got {value!r}")
    return value


def _cross_checks(cfg: DeviceConfig) -> None:
    r = cfg.recognition
    if r.votes_needed > r.vote_window:
        raise ConfigError(f"[recognition] votes_needed ({r.votes_needed}) must be <= vote_window ({r.vote_window})")
    if r.votes_needed > r.max_embeds_per_track:
        raise ConfigError("[recognition] votes_needed must be <= max_embeds_per_track")
    if cfg.source.reopen_max_seconds < cfg.source.reopen_initial_seconds:
        raise ConfigError("[source] reopen_max_seconds must be >= reopen_initial_seconds")
    if cfg.source.min_frame_pixels > cfg.source.max_frame_pixels:
        raise ConfigError("[source] min_frame_pixels must be <= max_frame_pixels")
    if cfg.quality.min_brightness > cfg.quality.max_brightness:
        raise ConfigError("[quality] min_brightness must be <= max_brightness")
    if (cfg.source.lores_width == 0) != (cfg.source.lores_height == 0):
        raise ConfigError("[source] lores_width and lores_height must both be 0 or both be set")
    e = cfg.encryption
    if e.enabled and bool(e.key_file) == bool(e.credential):
        raise ConfigError("[encryption] enabled = true needs exactly one of key_file or credential")
    if e.enabled and cfg.site.enabled:  # the site sync writes the gallery file itself: it would not be sealed
        raise ConfigError("[site] and [encryption] cannot both be enabled: the site sync writes the gallery file "
                          "directly and cannot keep it sealed; turn one of them off")


def from_dict(data: dict) -> DeviceConfig:
    """Validate a nested dict (as parsed from TOML) into a :class:`DeviceConfig`."""
    if not isinstance(data, dict):
        raise ConfigError("configuration must be a table of sections")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; valid sections: {', '.join(SECTIONS)}")
    sections = {}
    for name, factory in _SECTION_CLASSES.items():
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table")
        cls = factory
        fields = {f.name: f for f in dataclasses.fields(cls)}
        bad = set(values) - set(fields)
        if bad:
            raise ConfigError(f"[{name}] unknown key(s) {sorted(bad)}; valid keys: {', '.join(fields)}")
        kwargs = {k: _check_value(name, cls, fields[k], v) for k, v in values.items()}
        sections[name] = cls(**kwargs)
    cfg = DeviceConfig(**sections)
    _cross_checks(cfg)
    return cfg


def to_dict(cfg: DeviceConfig) -> dict:
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS}


def load(path: Optional[str | os.PathLike] = None) -> DeviceConfig:
    """Read and validate a UTF-8 TOML file (``None``: all defaults; a leading byte order mark is skipped)."""
    if path is None:
        return from_dict({})
    if tomllib is None:  # pragma: no cover
        raise ConfigError("reading TOML needs Python 3.11+ or the 'tomli' package")
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (Windows editors write one): harmless, skipped
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        enc = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"{path}: not UTF-8 text{enc}; save it as UTF-8 (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def default_toml() -> str:
    """The full default configuration as commented TOML (what ``--print-config`` prints)."""
    lines = ["# edgeface-device configuration. Every key is optional: a missing key takes the default shown.",
             "# Unknown sections or keys are an error. Keys commented out have no fixed default (see text).", ""]
    cfg = DeviceConfig()
    for name in SECTIONS:
        lines.append(f"[{name}]")
        section = getattr(cfg, name)
        for f in dataclasses.fields(section):
            meta = f.metadata
            bounds = []
            if meta.get("choices"):
                bounds.append("one of: " + ", ".join(meta["choices"]))
            if meta.get("min") is not None or meta.get("max") is not None:
                bounds.append(f"range [{meta.get('min', '')}, {meta.get('max', '')}]")
            text = meta["description"] + (f" ({'; '.join(bounds)})" if bounds else "")
            lines.append(f"# {text}")
            value = getattr(section, f.name)
            if value is None:
                lines.append(f"# {f.name} =   # unset: taken from the model manifest")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
