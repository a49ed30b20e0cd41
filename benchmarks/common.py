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
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.progress import progress

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
    """One detector + embedder combination to measure."""
    name: str
    precision: str
    detector: Path
    embedder: Path
    flip: Optional[bool] = None  #: test-time flip: None follows the embedder manifest

    def recognizer(self, threads: Optional[int] = None):
        from edgeface import FaceRecognizer

        return FaceRecognizer(detector_path=self.detector, embedder_path=self.embedder, precision=self.precision,
                              threads=threads, flip=self.flip)

    def key(self) -> str:
        """Content id of the two models (their sha256 from the manifests)."""
        from edgeface.manifest import read_manifest

        h = hashlib.sha256()
        for p in (self.detector, self.embedder):
            h.update(read_manifest(p, verify_hash=False)["sha256"].encode())
        return h.hexdigest()[:16]


def read_index(models: Path) -> dict:
    path = Path(models) / "models.json"
    if not path.is_file():
        raise BenchmarkError(f"{path} not found: build models with `edgeface build --out {models}` or pass --models")
    return json.loads(path.read_text())


def model_variants(models: Path, precisions: Sequence[str] = ("int8", "float32"),
                   detectors: Sequence[str] = ("short_range",)) -> tuple[list[Variant], list[str]]:
    """Variants present in ``models`` (precision x detector, plus ``int8_pruned`` and ``int8_io`` when built) and
    notes on the ones that are not there. A precision ``<int8|float32>_<tag>`` names any extra entry of
    ``models.json`` (``int8_pruned``, or e.g. ``int8_facenet`` to time another embedder beside the default in
    one run). A ``<precision>_noflip`` variant runs that precision's models without test-time flip (one
    embedder run per face; ``int8_noflip``)."""
    models = Path(models)
    index = read_index(models)
    variants, notes = [], []
    for det_name in detectors:
        for asked in precisions:
            precision, flip = (asked[:-len(NOFLIP)], False) if asked.endswith(NOFLIP) else (asked, None)
            if precision == INT8_IO:
                _add_int8_io(models, index, det_name, variants, notes)
                continue
            entry = index.get(precision)
            if not entry:
                notes.append(f"{precision}: not in {models}/models.json (not built): skipped")
                continue
            base = precision.split("_", 1)[0]
            det_file = index.get("detectors", {}).get(det_name, {}).get(base)
            if det_name == "short_range" and det_file is None:
                det_file = entry["detector"]
            if det_file is None or not (models / det_file).is_file():
                notes.append(f"{precision} {det_name} detector not built in {models}: skipped")
                continue
            name = asked if det_name == "short_range" else f"{asked}+{det_name}"
            variants.append(Variant(name, base, models / det_file,
                                    models / entry["embedder"], flip))
    return variants, notes


#: The int8 models with int8 input and int8 outputs (``edgeface variants --variants int8_io``): the built int8
#: models have a uint8 input and float32 outputs (Android); the latency benchmark measures what that costs.
INT8_IO = "int8_io"
#: suffix of a precision name that turns test-time flip off (``int8_noflip``)
NOFLIP = "_noflip"


def _add_int8_io(models: Path, index: dict, det_name: str, variants: list, notes: list) -> None:
    saved = index.get("variants", {})
    det = saved.get("detectors", {}).get(det_name, {}).get(INT8_IO)
    emb = saved.get("embedder", {}).get(INT8_IO)
    if not det or not emb or not (models / det).is_file() or not (models / emb).is_file():
        notes.append(f"{INT8_IO} {det_name}: not built in {models} (edgeface variants --models {models} "
                     f"--variants {INT8_IO}): skipped")
        return
    name = INT8_IO if det_name == "short_range" else f"{INT8_IO}+{det_name}"
    variants.append(Variant(name, "int8", models / det, models / emb))


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
