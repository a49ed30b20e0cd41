"""Shared helpers for the benchmarks: machine facts, statistics, model variants, LFW embeddings, output files.

Only the benchmarks import this (never the core), so scikit-learn, pandas and matplotlib may be used here,
but are imported inside the functions that need them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import resource
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.progress import progress

if TYPE_CHECKING:
    from edgeface.detect import DetectorConfig

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("benchmarks/results")
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
RUNS_FILE = Path(__file__).resolve().parent / "runs.json"
PACKAGES = ("edgeface", "numpy", "opencv-python-headless", "ai-edge-litert", "tflite-runtime", "tensorflow",
            "onnxruntime", "scikit-learn", "pandas", "matplotlib", "dlib-bin", "dlib", "face-recognition")


class BenchmarkError(EdgefaceError, RuntimeError):
    """A benchmark cannot run as asked (missing models, data or runtime); the message says what to do."""


# --------------------------------------------------------------------------- machine facts

def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def cpu_model() -> str:
    """CPU model from /proc/cpuinfo (x86 'model name', Arm 'Model'/'Hardware'), or the device-tree model."""
    info = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in info.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    dt = _read("/proc/device-tree/model")
    return (dt or platform.processor() or platform.machine()).strip("\x00")


def machine_info() -> dict:
    """The facts a latency number depends on: CPU, cores, governor, load, OS, Python, package versions."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    gov = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    freq = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq")
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu_model(), "machine": platform.machine(), "cores": os.cpu_count(),
        "governor": gov or "not readable (no cpufreq in this VM/container)",
        "max_freq_mhz": int(freq) // 1000 if freq and freq.isdigit() else None,
        "loadavg_at_start": load, "os": platform.platform(), "python": platform.python_version(),
        "packages": versions, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def device_slug(info: Optional[dict] = None) -> str:
    """A file-name-safe id of this kind of machine, e.g. ``x86_64-intel-r-xeon-r-processor-2c``."""
    info = info or machine_info()
    words = "".join(c.lower() if c.isalnum() else "-" for c in info["cpu"]).split("-")
    return f"{info['machine']}-{'-'.join(w for w in words if w)[:40].strip('-')}-{info['cores']}c"


def _status_mb(key: str) -> Optional[float]:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far: VmHWM (ru_maxrss would include the parent's peak
    inherited across fork + exec)."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    rss = _status_mb("VmRSS")
    return rss if rss is not None else float("nan")


# --------------------------------------------------------------------------- statistics

def stats_ms(seconds: Sequence[float]) -> dict:
    """median / p95 / min / mean in milliseconds, and the number of samples."""
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"n": 0, "median": None, "p95": None, "min": None, "mean": None}
    return {"n": int(a.size), "median": round(float(np.median(a)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "min": round(float(a.min()), 3), "mean": round(float(a.mean()), 3)}


# --------------------------------------------------------------------------- configuration as data

def load_runs(section: str, profile: str = "full") -> dict:
    """Settings of one benchmark from ``benchmarks/runs.json``: ``profile`` ("full" or "quick") over "full"."""
    data = json.loads(RUNS_FILE.read_text())
    if section not in data:
        raise BenchmarkError(f"{RUNS_FILE}: no section {section!r}")
    base = dict(data[section]["full"])
    if profile != "full":
        if profile not in data[section]:
            raise BenchmarkError(f"{RUNS_FILE}: {section} has no profile {profile!r}")
        base.update(data[section][profile])
    return base


# --------------------------------------------------------------------------- models

@dataclass(frozen=True)
class Variant:
    """One detector configuration + embedder combination to measure.

    ``detector`` is a resolved :class:`edgeface.detect.DetectorConfig` (one model, or several plus tiles such as
    ``auto``); ``name`` is the asked precision (``int8``, ``int8_facenet``, ``int8_noflip``...) followed by
    ``+<detector>`` unless the detector is ``short_range`` (the names benchmarks have always used).
    """
    name: str
    precision: str
    detector: "DetectorConfig"
    embedder: Path
    flip: Optional[bool] = None  #: test-time flip: None follows the embedder manifest

    @property
    def precision_name(self) -> str:
        """The asked precision entry, without the detector: ``int8_facenet`` of ``int8_facenet+auto``."""
        return self.name.partition("+")[0]

    @property
    def detector_files(self) -> tuple[Path, ...]:
        """Every model file the detector configuration runs (whole frame, then the tile model), once each."""
        return detector_files(self.detector)

    def recognizer(self, threads: Optional[int] = None):
        from edgeface import FaceRecognizer

        return FaceRecognizer(detector=self.detector, embedder_path=self.embedder, precision=self.precision,
                              threads=threads, flip=self.flip)

    def key(self) -> str:
        """Content id of the models: the sha256 (from the manifests) of every detector model and the embedder;
        a configuration with tiles or several models also adds its name and settings. A single-model detector
        keeps the id it had when variants were one detector file (embedding caches stay valid); a variant that
        sets test-time flip (``int8_noflip``) adds it."""
        from edgeface.manifest import read_manifest

        h = hashlib.sha256()
        for p in (*self.detector_files, self.embedder):
            h.update(read_manifest(p, verify_hash=False)["sha256"].encode())
        d = self.detector
        if len(self.detector_files) > 1 or d.min_face:
            h.update(json.dumps([d.name, d.min_face, d.tile_face_fraction, d.min_face_fraction]).encode())
        if self.flip is not None:  # embeddings with and without test-time flip differ: never one cache entry
            h.update(f"flip={self.flip}".encode())
        return h.hexdigest()[:16]


def detector_files(config) -> tuple[Path, ...]:
    """The model files of a :class:`edgeface.detect.DetectorConfig`, whole-frame models first, once each."""
    out: list[Path] = []
    for p in (*config.whole_frame, config.tile_model):
        if Path(p) not in out:
            out.append(Path(p))
    return tuple(out)


def read_index(models: Path) -> dict:
    path = Path(models) / "models.json"
    if not path.is_file():
        raise BenchmarkError(f"{path} not found: build models with `edgeface build --out {models}` or pass --models")
    return json.loads(path.read_text())


#: detector name meaning the models folder's ``default_detector`` (what users get; ``auto`` in a current build)
DEFAULT_DETECTOR = "default"
#: the single-model detector every variant used before detector configurations (and a folder's only one then)
LEGACY_DETECTOR = "short_range"


def detector_choices(models: Path, index: Optional[dict] = None) -> list[str]:
    """The detector names a models folder offers (``models.json`` ``detector_configs`` then ``detectors``;
    ``short_range`` for a folder built before those existed)."""
    from edgeface.detect import detector_names

    names = detector_names(read_index(models) if index is None else index)
    return names or [LEGACY_DETECTOR]


def resolve_detector_names(models: Path, names: Optional[Sequence[str]], index: Optional[dict] = None) -> list[str]:
    """``names`` with ``default`` (or ``names`` None) replaced by the folder's ``default_detector``, duplicates
    dropped; an unknown name raises :class:`BenchmarkError` listing the names the folder offers."""
    index = read_index(models) if index is None else index
    offered = detector_choices(models, index)
    default = index.get("default_detector") or LEGACY_DETECTOR
    out: list[str] = []
    for n in (names or [DEFAULT_DETECTOR]):
        n = default if n == DEFAULT_DETECTOR else n
        if n not in offered:
            raise BenchmarkError(f"unknown detector {n!r}; {models} offers: {', '.join(offered)} "
                                 f"(or {DEFAULT_DETECTOR}: {default})")
        if n not in out:
            out.append(n)
    return out


def variant_detector(models: Path, index: dict, precision: str, det_name: str):
    """The :class:`edgeface.detect.DetectorConfig` ``det_name`` at ``precision`` (``int8`` / ``float32``), from
    :func:`edgeface.detect.resolve_detector`; a folder built before ``detectors`` existed has its precision
    entry's one detector model as ``short_range``."""
    from edgeface.detect import DetectorConfig, resolve_detector

    if det_name == LEGACY_DETECTOR and LEGACY_DETECTOR not in index.get("detectors", {}):
        path = Path(models) / index[precision]["detector"]
        return DetectorConfig(LEGACY_DETECTOR, (path,), path)
    return resolve_detector(models, precision, det_name)


def model_variants(models: Path, precisions: Sequence[str] = ("int8", "float32"),
                   detectors: Optional[Sequence[str]] = None) -> tuple[list[Variant], list[str]]:
    """Variants present in ``models`` (precision x detector, plus ``int8_pruned`` and ``int8_io`` when built) and
    notes on the ones that are not there.

    A precision ``<int8|float32>_<tag>`` names any extra entry of ``models.json`` (``int8_pruned``, or e.g.
    ``int8_facenet`` to time another embedder beside the default in one run); it runs the detector
    configuration of its base precision (int8 detector models for ``int8_facenet``). A ``<precision>_noflip``
    variant runs that precision's models without test-time flip (one embedder run per face; ``int8_noflip``),
    a ``<precision>_flip`` one with it (the crop and its mirror image, averaged; ``int8_flip``).
    ``detectors`` are names the folder offers (:func:`detector_choices`; ``default`` or None, the default: its
    ``default_detector``, what users get); an unknown one raises :class:`BenchmarkError` before anything is
    loaded. Variants of the single short-range model are named by their precision alone (``int8``), others
    ``<precision>+<detector>`` (``int8+auto``)."""
    models = Path(models)
    index = read_index(models)
    variants, notes = [], []
    for det_name in resolve_detector_names(models, detectors, index):
        for asked in precisions:
            precision, flip = split_flip(asked)
            if precision == INT8_IO:
                _add_int8_io(models, index, det_name, variants, notes)
                continue
            entry = index.get(precision)
            if not entry:
                notes.append(f"{precision}: not in {models}/models.json (not built): skipped")
                continue
            base = precision.split("_", 1)[0]
            try:
                config = variant_detector(models, index, base, det_name)
            except EdgefaceError as exc:
                notes.append(f"{precision} {det_name} detector: {exc}: skipped")
                continue
            missing = [p.name for p in detector_files(config) if not p.is_file()]
            if missing:
                notes.append(f"{precision} {det_name} detector not built in {models} ({', '.join(missing)}): "
                             "skipped")
                continue
            variants.append(Variant(_variant_name(asked, det_name), base, config, models / entry["embedder"], flip))
    return variants, notes


def _variant_name(asked: str, det_name: str) -> str:
    return asked if det_name == LEGACY_DETECTOR else f"{asked}+{det_name}"


#: The int8 models with int8 input and int8 outputs (``edgeface variants --variants int8_io``): the built int8
#: models have a uint8 input and float32 outputs (Android); the latency benchmark measures what that costs.
INT8_IO = "int8_io"
#: suffix of a precision name that turns test-time flip off (``int8_noflip``) or on (``int8_flip``)
NOFLIP = "_noflip"
FLIP = "_flip"


def split_flip(asked: str) -> tuple[str, Optional[bool]]:
    """``int8_noflip`` -> ``("int8", False)``, ``int8_flip`` -> ``("int8", True)``, ``int8`` -> ``("int8", None)``
    (None: the embedder manifest's choice)."""
    for suffix, flip in ((NOFLIP, False), (FLIP, True)):
        if asked.endswith(suffix):
            return asked[:-len(suffix)], flip
    return asked, None


def _add_int8_io(models: Path, index: dict, det_name: str, variants: list, notes: list) -> None:
    """The ``int8_io`` twin of the int8 detector configuration ``det_name`` (each of its models replaced by
    that model's int8_io twin) with the int8_io embedder."""
    saved = index.get("variants", {})
    twins = {(models / files["int8"]): models / saved.get("detectors", {}).get(n, {}).get(INT8_IO, "")
             for n, files in index.get("detectors", {}).items() if isinstance(files, dict) and "int8" in files}
    emb = saved.get("embedder", {}).get(INT8_IO)
    how = f"edgeface variants --models {models} --variants {INT8_IO}"
    try:
        config = variant_detector(models, index, "int8", det_name)
    except EdgefaceError as exc:
        notes.append(f"{INT8_IO} {det_name}: {exc}: skipped")
        return
    io = {p: twins.get(p) for p in detector_files(config)}
    if not emb or not (models / emb).is_file() or not all(t is not None and t.is_file() and t != models
                                                          for t in io.values()):
        notes.append(f"{INT8_IO} {det_name}: not built in {models} ({how}): skipped")
        return
    config = config._replace(whole_frame=tuple(io[p] for p in config.whole_frame), tile_model=io[config.tile_model])
    variants.append(Variant(_variant_name(INT8_IO, det_name), "int8", config, models / emb))


# --------------------------------------------------------------------------- LFW

def notes_markdown(notes: Sequence[str]) -> str:
    """The "Notes:" list closing a benchmark's markdown ("" when there are none)."""
    return ("\nNotes:\n" + "\n".join(f"* {n}" for n in notes)) if notes else ""


def embed_paths(recognizer, paths: Sequence[Path], cache_file: Optional[Path] = None,
                transform: Optional[Callable[[np.ndarray], np.ndarray]] = None, desc: str = "embedding",
                show_progress: bool = True) -> dict[Path, Optional[np.ndarray]]:
    """Embedding of the central face of each image (``None``: no face / unreadable), like ``edgeface eval``.

    ``transform`` is applied to the decoded RGB image first (degradation, enhancement). ``cache_file`` (an
    ``.npz``) keeps embeddings between benchmark runs; name it after :meth:`Variant.key` and the transform so a
    changed model can never be served stale embeddings.
    """
    from edgeface.lfw import embed_files

    paths = [Path(p) for p in paths]
    cached: dict[str, Optional[np.ndarray]] = {}
    if cache_file is not None and Path(cache_file).is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            for name, emb, ok in zip(z["paths"], z["embeddings"], z["ok"]):
                cached[str(name)] = emb if ok else None
    out: dict[Path, Optional[np.ndarray]] = {}
    todo = [p for p in paths if str(p) not in cached]
    for p in paths:
        if str(p) in cached:
            out[p] = cached[str(p)]
    bar = show_progress and len(todo) > 50
    out.update(embed_files(recognizer, todo, lambda files: progress(files, desc, enabled=bar), transform))
    if cache_file is not None and todo:
        cached.update({str(p): out[p] for p in todo})
        dim = next((e.shape[0] for e in cached.values() if e is not None), 1)
        names = sorted(cached)
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(cache_file) + ".tmp.npz")
        np.savez(tmp, paths=np.array(names),
                 embeddings=np.stack([cached[n] if cached[n] is not None else np.zeros(dim, np.float32)
                                      for n in names]).astype(np.float32),
                 ok=np.array([cached[n] is not None for n in names]))
        os.replace(tmp, cache_file)
    return out


def lfw_people(lfw: Path) -> dict[str, list[Path]]:
    """Every LFW identity and its images, sorted (from the folder, the names are the identities)."""
    root = Path(lfw) / "images_deepfunneled"
    if not root.is_dir():
        raise BenchmarkError(f"{root} not found: pass --data pointing at the LFW folder")
    return {d.name: sorted(d.glob("*.jpg")) for d in sorted(root.iterdir()) if d.is_dir()}


def subset_pairs(pairs: list, per_fold_class: Optional[int]) -> list:
    """The first ``per_fold_class`` same and different pairs of every fold (a short run keeps the folds)."""
    if not per_fold_class:
        return pairs
    out, seen = [], {}
    for p in pairs:
        k = (p.fold, p.same)
        if seen.get(k, 0) < per_fold_class:
            seen[k] = seen.get(k, 0) + 1
            out.append(p)
    return out


# --------------------------------------------------------------------------- outputs

def write_outputs(out: Path, name: str, payload: dict, markdown: str) -> dict[str, Path]:
    """``<out>/<name>.json`` and ``<out>/<name>.md``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    paths["json"].write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    paths["md"].write_text(markdown.rstrip() + "\n")
    return paths


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def md_table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    def fmt(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def header(title: str, info: dict, extra: str = "") -> str:
    return (f"## {title}\n\nMachine: {info['cpu']}, {info['cores']} cores, governor: {info['governor']}, "
            f"load at start {info['loadavg_at_start']}; Python {info['python']}; {info['date']}.\n{extra}\n")


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
