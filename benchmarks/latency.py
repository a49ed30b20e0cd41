"""Per-stage latency of the whole pipeline, every runtime x precision x threads x detector side by side in one run.

The detector is a configuration of the models folder (``models.json``): by default its ``default_detector``,
what users get (``auto``: short- and full-range BlazeFace on the whole frame, plus a pyramid of full-range tiles
in large frames); ``--detectors short_range`` times the single short-range model instead.

Stages of one frame: ``decode`` (read + decode the image file), ``detect_pre`` (letterbox + normalize),
``detect_invoke`` (the detector model; once per tile), ``detect_post`` (anchor decoding + NMS), ``crop``,
``embed`` (normalize + the embedder model, per face), ``match`` (gallery lookup, per face), and ``total``.
Embed and match follow the device's decision path (:func:`edgeface.recognizer.identify_crop`): with the
manifest's test-time flip, the mirror image is embedded only for a face whose one-run score is near the
threshold; the gallery holds the scene's people (enrolled from their second LFW photo) among random
vectors, so probes score as real faces do, and each row reports the share of faces mirrored.

How it stays honest:

* every configuration gets its own interpreters (no state shared between configurations), is warmed up, then
  the timed runs are **interleaved**: run i times every configuration once, in a shuffled order, on the same
  frame, so a burst of load from another process hurts all of them alike;
* load time, first-inference time and peak resident memory come from a **fresh subprocess** per
  configuration (nothing cached from a previous measurement);
* median, p95 and min over the runs; the machine (CPU, governor, load average) and package versions are
  recorded with the numbers.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from . import common

if TYPE_CHECKING:
    from edgeface.detect import DetectorConfig

log = logging.getLogger(__name__)

ONNXRUNTIME = "onnxruntime"
STAGES = ("decode", "detect_pre", "detect_invoke", "detect_post", "crop", "embed", "match")


# --------------------------------------------------------------------------- delegate facts

def delegate_info(interpreter) -> dict:
    """How many graph nodes the delegates (XNNPACK by default on CPU, the Edge TPU with a delegate) took.

    The interpreter lists the original nodes followed by one ``DELEGATE`` node per delegated partition; a
    partition's nodes are found by walking back from the delegate node's outputs to its inputs.
    """
    try:
        ops = interpreter._get_ops_details()  # private, but the only introspection the runtimes expose
    except AttributeError:
        return {"delegate_kernels": None, "nodes": None, "nodes_delegated": None}
    original = [o for o in ops if o["op_name"] != "DELEGATE"]
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    producer = {t: o["index"] for o in original for t in o["outputs"]}
    by_index = {o["index"]: o for o in original}
    taken: set[int] = set()
    for d in delegates:
        boundary = set(int(t) for t in d["inputs"])
        stack = [producer[t] for t in d["outputs"] if t in producer]
        while stack:
            n = stack.pop()
            if n in taken:
                continue
            taken.add(n)
            stack.extend(producer[t] for t in by_index[n]["inputs"] if t >= 0 and t not in boundary and t in producer)
    return {"delegate_kernels": len(delegates), "nodes": len(original), "nodes_delegated": len(taken)}


# --------------------------------------------------------------------------- the staged pipeline

class StagedPipeline:
    """detect -> crop -> embed -> match with the core's own building blocks, timing each stage."""

    def __init__(self, detector: "Path | DetectorConfig", embedder_path: Path, runtime: str, threads: int,
                 tiles: int, gallery=None, precision: str = "int8", flip: "bool | None" = None):
        from edgeface.detect import FaceDetector
        from edgeface.embed import FaceEmbedder

        tflite = None if runtime == ONNXRUNTIME else runtime  # ONNX: any interpreter, for tensor details only
        self.detector = FaceDetector(detector, threads=threads, runtime_name=tflite, tiles=tiles)
        self.embedder = FaceEmbedder(embedder_path, threads=threads, runtime_name=tflite, flip=flip)
        if runtime == ONNXRUNTIME:
            # the same wrappers (pre- and post-processing) with ONNX Runtime sessions in place of the interpreters
            from .onnx_interpreter import OnnxInterpreter, onnx_path_for

            for wrapper, path in ([(m, m.path) for m in self.detector.members] + [(self.embedder, embedder_path)]):
                onnx = onnx_path_for(Path(path), precision)
                if onnx is None:
                    raise common.BenchmarkError(f"no ONNX export of {path} (run `edgeface onnx`)")
                wrapper.interpreter = OnnxInterpreter(onnx, wrapper.interpreter, threads)
        self.gallery = gallery
        #: faces whose mirror image was embedded too (test-time flip near the threshold)
        self.mirrored = 0

    def frame(self, path: Path) -> tuple[dict, int]:
        """Seconds per stage for one image file, and the number of faces found."""
        from edgeface import preprocess
        from edgeface.recognizer import identify_crop

        t = {s: 0.0 for s in STAGES}
        c0 = time.perf_counter()
        image = preprocess.read_image(path)
        c1 = time.perf_counter()
        t["decode"] = c1 - c0
        faces = self.detector.detect(image, timings=t)  # the core's own passes, tiles and merge, timed by stage
        for f in faces:
            a = time.perf_counter()
            crop = self.embedder.crop(image, f.box, f.keypoints)
            b = time.perf_counter()
            t["crop"] += b - a
            if self.gallery is None:
                self.embedder.embed_crop(crop)
                t["embed"] += time.perf_counter() - b
            else:  # the device's decision path: the mirror image only near the threshold (flip_band)
                found = identify_crop(self.embedder, crop, self.gallery, self.embedder.min_cosine_similarity, t)
                self.mirrored += found.mirrored
        t["total"] = time.perf_counter() - c0
        return t, len(faces)

    def enroll_people(self, photos: dict) -> None:
        """Enroll ``{name: photo}`` into the gallery as the device does (the best face, flipped when the
        manifest says so), so that probes of these people score as real faces do, near and far from the
        threshold (a gallery of random vectors would never put a probe near it)."""
        from edgeface import preprocess

        for name, path in photos.items():
            image = preprocess.read_image(path)
            faces = self.detector.detect(image)
            if faces:
                crop = self.embedder.crop(image, faces[0].box, faces[0].keypoints)
                self.gallery.enroll(name, [self.embedder.embed_crop(crop)])


def make_gallery(folder: Path, dim: int, size: int, space_id: str, seed: int = 0):
    """A gallery of ``size`` random unit embeddings (5 per person), for timing the match stage (a scene's real
    people are added by :meth:`StagedPipeline.enroll_people`)."""
    from edgeface.gallery import Gallery

    rng = np.random.default_rng(seed)
    g = Gallery(folder / f"bench_gallery_{dim}_{size}.db", space_id, dim)
    per = 5
    for p in range(max(1, size // per)):
        g.enroll(f"person_{p:06d}", rng.standard_normal((per, dim)).astype(np.float32))
    return g


# --------------------------------------------------------------------------- configurations

def available_runtimes(requested: list[str], notes: list[str]) -> list[str]:
    from edgeface.runtime import RuntimeNotFoundError, get_runtime

    out = []
    for name in requested:
        if name == ONNXRUNTIME:
            try:
                import onnxruntime  # noqa: F401 - imported only to probe that the optional package is installed

                out.append(name)
            except ImportError as exc:
                notes.append(f"runtime onnxruntime: not available ({exc}): skipped")
            continue
        try:
            get_runtime(name)
            out.append(name)
        except (RuntimeNotFoundError, ValueError) as exc:
            notes.append(f"runtime {name}: not available ({str(exc).split(':')[0]}): skipped")
    return out


def resolve_threads(threads: list) -> list[int]:
    out = []
    for t in threads:
        n = os.cpu_count() or 1 if t == "all" else int(t)
        if n not in out:
            out.append(n)
    return out


def pick_scene_images(scene: dict, lfw: Path, bbt: Path, detectors: list) -> list[Path]:
    """LFW scene: evenly spaced first photos of LFW people with a second photo (enrolled in the gallery), where
    every detector (every configuration of the run) finds exactly one face. Group scene: the bbt group
    photos."""
    from edgeface import preprocess

    n = int(scene["images"])
    if scene["source"] == "bbt_group":
        files = sorted((bbt / "group").glob("*.jpg"))
        if not files:
            raise common.BenchmarkError(f"no group photos in {bbt / 'group'}")
        return files[:n]
    files = sorted(f for f in (lfw / "images_deepfunneled").glob("*/*_0001.jpg")
                   if second_photo(f).is_file())
    if not files:
        raise common.BenchmarkError(f"no LFW images in {lfw}")
    step = max(1, len(files) // (n * 4))
    out = []
    for f in files[::step]:
        image = preprocess.read_image(f)
        if all(len(d.detect(image)) == 1 for d in detectors):
            out.append(f)
        if len(out) == n:
            break
    return out


def second_photo(first: Path) -> Path:
    """``Name_0002.jpg`` beside ``Name_0001.jpg``: the photo a scene's person is enrolled from."""
    return first.with_name(first.name.replace("_0001.jpg", "_0002.jpg"))


# --------------------------------------------------------------------------- fresh-process probe

def probe(spec: dict) -> dict:
    """Run in a fresh process: import time, model load time, first-frame time, peak RSS (see ``--probe``)."""
    base_rss = common.current_rss_mb()
    t0 = time.perf_counter()
    from edgeface.runtime import get_runtime

    if spec["runtime"] == ONNXRUNTIME:
        import onnxruntime  # noqa: F401 - imported only to probe that the optional package is installed
    else:
        get_runtime(spec["runtime"])
    import_s = time.perf_counter() - t0
    rss_after_import = common.current_rss_mb()
    t0 = time.perf_counter()
    pipe = StagedPipeline(detector_from_spec(spec["detector"]), Path(spec["embedder"]), spec["runtime"],
                          spec["threads"], spec["tiles"], precision=spec["precision"], flip=spec.get("flip"))
    load_s = time.perf_counter() - t0
    first, _ = pipe.frame(Path(spec["image"]))
    later = [pipe.frame(Path(spec["image"]))[0]["total"] for _ in range(spec.get("frames", 3))]
    return {"runtime_import_ms": round(import_s * 1e3, 1), "load_ms": round(load_s * 1e3, 1),
            "first_frame_ms": round(first["total"] * 1e3, 2),
            "first_detect_invoke_ms": round(first["detect_invoke"] * 1e3, 2),
            "first_embed_ms": round(first["embed"] * 1e3, 2),
            "steady_frame_ms": round(float(np.median(later)) * 1e3, 2) if later else None,
            "rss_before_import_mb": round(base_rss, 1), "rss_after_import_mb": round(rss_after_import, 1),
            "peak_rss_mb": round(common.peak_rss_mb(), 1)}


def detector_spec(config: "DetectorConfig") -> dict:
    """A detector configuration as JSON for the fresh-process probe (its files and settings, so the probe runs
    exactly the configuration timed in the run, int8_io twins included)."""
    return {"name": config.name, "whole_frame": [str(p) for p in config.whole_frame],
            "tile_model": str(config.tile_model), "min_face": config.min_face,
            "tile_face_fraction": config.tile_face_fraction, "min_face_fraction": config.min_face_fraction}


def detector_from_spec(spec: "dict | str") -> "DetectorConfig":
    """The :class:`edgeface.detect.DetectorConfig` of :func:`detector_spec` (a plain path: that one model)."""
    from edgeface.detect import DetectorConfig

    if isinstance(spec, str):
        return DetectorConfig(Path(spec).stem, (Path(spec),), Path(spec))
    return DetectorConfig(spec["name"], tuple(Path(p) for p in spec["whole_frame"]), Path(spec["tile_model"]),
                          int(spec["min_face"]), float(spec["tile_face_fraction"]), float(spec["min_face_fraction"]))


def run_probe(spec: dict) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "edgeface.benchmarks.latency", "--probe", json.dumps(spec)],
                       capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        log.warning("probe %s failed: %s", spec, r.stderr.strip().splitlines()[-1:] or r.returncode)
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the benchmark

def config_key(c: dict) -> str:
    """``runtime/precision/tN/detector``, e.g. ``litert/int8/t1/auto`` (the row's ``config``)."""
    return f"{c['runtime']}/{c['precision']}/t{c['threads']}/{c['detector']}"


def sum_delegates(infos: list[dict]) -> dict:
    """:func:`delegate_info` of several models (a detector configuration's members) added up."""
    if any(i["nodes"] is None for i in infos):
        return {"delegate_kernels": None, "nodes": None, "nodes_delegated": None}
    return {k: sum(i[k] for i in infos) for k in ("delegate_kernels", "nodes", "nodes_delegated")}


def run(models: Path, lfw: Path, bbt: Path, settings: dict, seed: int = 0, show_progress: bool = True) -> dict:
    """Measure every available configuration side by side; returns the JSON-ready result."""
    notes: list[str] = []
    variants, vnotes = common.model_variants(models, settings["precisions"], settings.get("detectors"))
    notes += vnotes
    if not variants:
        raise common.BenchmarkError(f"no models of precisions {settings['precisions']} in {models}")
    runtimes = available_runtimes(settings["runtimes"], notes)
    threads = resolve_threads(settings["threads"])
    if ONNXRUNTIME in runtimes:
        from .onnx_interpreter import onnx_path_for

        onnx_variants = [v for v in variants if all(onnx_path_for(Path(p), v.precision)
                                                    for p in (*v.detector_files, v.embedder))]
        for v in variants:
            if v not in onnx_variants:
                notes.append(f"onnxruntime {v.name}: no ONNX export of its models in {models} or {models}/onnx "
                             "(run `edgeface onnx --models MODELS`): skipped")
        if not onnx_variants:
            runtimes.remove(ONNXRUNTIME)
    configs = [{"runtime": r, "precision": v.precision_name, "threads": t, "detector": v.detector.name,
                "variant": v} for r in runtimes for v in variants for t in threads
               if r != ONNXRUNTIME or v in onnx_variants]
    info = common.machine_info()
    tmp = tempfile.TemporaryDirectory(prefix="edgeface-bench-")
    rng = np.random.default_rng(seed)
    scenes_out = []
    try:
        from edgeface.detect import FaceDetector

        selector_runtime = None if runtimes[0] == ONNXRUNTIME else runtimes[0]
        distinct = {(v.detector.name, common.detector_files(v.detector)): v.detector for v in variants}
        selectors = [FaceDetector(d, runtime_name=selector_runtime) for d in distinct.values()]
        for scene in settings["scenes"]:
            images = pick_scene_images(scene, Path(lfw), Path(bbt), selectors)
            if not images:
                notes.append(f"scene {scene['name']}: no suitable images: skipped")
                continue
            pipes, galleries = {}, {}
            for c in configs:
                v = c["variant"]
                pipe = StagedPipeline(v.detector, v.embedder, c["runtime"], c["threads"], scene["tiles"],
                                      precision=v.precision, flip=v.flip)
                space = pipe.embedder.space_id
                new = (space, pipe.embedder.dim) not in galleries
                if new:
                    galleries[(space, pipe.embedder.dim)] = make_gallery(Path(tmp.name), pipe.embedder.dim,
                                                                        settings["gallery_size"], space)
                pipe.gallery = galleries[(space, pipe.embedder.dim)]
                if new and scene["source"] == "lfw":  # the scene's people, from their second photos
                    pipe.enroll_people({p.parent.name: second_photo(p) for p in images})
                pipes[config_key(c)] = pipe
            keys = list(pipes)
            # warm-up, interleaved
            for i in range(settings["warmup"]):
                for k in keys:
                    pipes[k].frame(images[i % len(images)])
            for k in keys:  # the mirrored share counts timed runs only
                pipes[k].mirrored = 0
            samples = {k: {s: [] for s in STAGES + ("total",)} for k in keys}
            faces = {k: [] for k in keys}
            for i in common.progress(range(settings["runs"]), f"latency {scene['name']}",
                                     enabled=show_progress):
                image = images[i % len(images)]
                for j in rng.permutation(len(keys)):
                    t, n = pipes[keys[j]].frame(image)
                    for s, v in t.items():
                        samples[keys[j]][s].append(v)
                    faces[keys[j]].append(n)
            rows = []
            for c in configs:
                k = config_key(c)
                pipe = pipes[k]
                spec = {"runtime": c["runtime"], "precision": c["variant"].precision, "threads": c["threads"],
                        "tiles": scene["tiles"],
                        "detector": detector_spec(c["variant"].detector), "embedder": str(c["variant"].embedder),
                        "flip": c["variant"].flip, "image": str(images[0]), "frames": settings.get("probe_frames", 3)}
                rows.append({
                    "config": k, "runtime": c["runtime"], "precision": c["precision"], "threads": c["threads"],
                    "detector": c["detector"],
                    "detector_models": [p.name for p in c["variant"].detector_files],
                    "embedder": c["variant"].embedder.name, "variant_key": c["variant"].key(),
                    "flip": pipe.embedder.flip,
                    "faces_per_frame": round(float(np.mean(faces[k])), 2),
                    "stages_ms": {s: common.stats_ms(v) for s, v in samples[k].items()},
                    "mirrored_share": round(pipe.mirrored / max(1, sum(faces[k])), 4),
                    "embed_per_face_ms": common.stats_ms(
                        [e / n for e, n in zip(samples[k]["embed"], faces[k]) if n]),
                    "delegate": {"detector": sum_delegates([delegate_info(m.interpreter)
                                                            for m in pipe.detector.members]),
                                 "embedder": delegate_info(pipe.embedder.interpreter)},
                    "fresh_process": run_probe(spec),
                })
            for g in galleries.values():
                g.close()
            del pipes
            scenes_out.append({"scene": scene["name"], "tiles": scene["tiles"],
                               "images": [str(p.relative_to(p.parents[1])) for p in images], "rows": rows})
    finally:
        tmp.cleanup()
    result = {"benchmark": "latency", "machine": info, "settings": {k: v for k, v in settings.items()},
              "runtimes": runtimes, "threads": threads,
              "detectors": list(dict.fromkeys(v.detector.name for v in variants)),
              "default_detector": common.resolve_detector_names(models, [common.DEFAULT_DETECTOR])[0],
              "notes": notes, "scenes": scenes_out}
    result["int8_vs_float32"] = speedups(result)
    result["interface_cost"] = interface_cost(result)
    result["vs_facenet"] = versus(result, FACENET)
    # the int8 pipeline before issue 10 as it ran (FaceNet on the short-range model) against every configuration
    result["vs_previous_default"] = versus(result, FACENET, common.LEGACY_DETECTOR)
    return result


#: the precision entry the "embedder variants vs" table compares with (issue 10: the FaceNet int8 pipeline)
FACENET = "int8_facenet"


def _rows_by(scene: dict) -> dict:
    """Rows of one scene by (runtime, precision, threads, detector): like is compared only with like."""
    return {(r["runtime"], r["precision"], r["threads"], r.get("detector")): r for r in scene["rows"]}


def interface_cost(result: dict) -> list[dict]:
    """What the Android interface costs: int8 (uint8 input, float32 outputs) against ``int8_io`` (int8 tensors,
    the runtime quantizes and dequantizes in numpy), medians of the same run, same detector configuration;
    > 0 ms: the interface is slower."""
    out = []
    for sc in result["scenes"]:
        by = _rows_by(sc)
        for (rt, prec, th, det), r in by.items():
            io = by.get((rt, common.INT8_IO, th, det))
            if prec != "int8" or io is None:
                continue
            row = {"scene": sc["scene"], "runtime": rt, "threads": th, "detector": det}
            for stage in ("detect_invoke", "total"):
                a, b = r["stages_ms"][stage]["median"], io["stages_ms"][stage]["median"]
                row[f"{stage}_ms"] = {"int8": a, "int8_io": b, "delta": round(a - b, 3)}
            a, b = r["embed_per_face_ms"]["median"], io["embed_per_face_ms"]["median"]
            row["embed_per_face_ms"] = {"int8": a, "int8_io": b,
                                        "delta": None if a is None or b is None else round(a - b, 3)}
            out.append(row)
    return out


def speedups(result: dict) -> list[dict]:
    """End-to-end median of float32 over int8, per scene, runtime, threads and detector (> 1: int8 is faster)."""
    out = []
    for sc in result["scenes"]:
        by = _rows_by(sc)
        for (rt, prec, th, det), r in by.items():
            if prec != "int8" or (rt, "float32", th, det) not in by:
                continue
            f = by[(rt, "float32", th, det)]
            ratio = f["stages_ms"]["total"]["median"] / r["stages_ms"]["total"]["median"]
            emb = (f["embed_per_face_ms"]["median"] or 0) / max(r["embed_per_face_ms"]["median"] or 1e-9, 1e-9)
            det_ratio = f["stages_ms"]["detect_invoke"]["median"] / max(r["stages_ms"]["detect_invoke"]["median"],
                                                                        1e-9)
            out.append({"scene": sc["scene"], "runtime": rt, "threads": th, "detector": det,
                        "total_speedup": round(ratio, 2), "embed_speedup": round(emb, 2),
                        "detect_invoke_speedup": round(det_ratio, 2), "at_least_2x": bool(ratio >= 2.0)})
    return out


def versus(result: dict, baseline: str = FACENET, baseline_detector: Optional[str] = None) -> list[dict]:
    """Every other precision entry against ``baseline`` (``int8_facenet``: another embedder of the folder),
    per scene, runtime, threads and detector, medians of the same run: ``total_ratio`` = this / baseline end to
    end (< 1: this pipeline is faster), ``speedup`` = baseline / this; the same for embed per face. The
    baseline runs the same detector, or always ``baseline_detector`` when given (a whole previous pipeline,
    e.g. FaceNet on the single short-range model, against each configuration). Empty when the run has no
    such ``baseline`` rows."""
    out = []
    for sc in result["scenes"]:
        by = _rows_by(sc)
        for (rt, prec, th, det), r in by.items():
            base = by.get((rt, baseline, th, baseline_detector or det))
            if prec == baseline or base is None:
                continue
            t, tb = r["stages_ms"]["total"]["median"], base["stages_ms"]["total"]["median"]
            e, eb = r["embed_per_face_ms"]["median"], base["embed_per_face_ms"]["median"]
            out.append({"scene": sc["scene"], "runtime": rt, "threads": th, "detector": det, "precision": prec,
                        "baseline": baseline, "baseline_detector": baseline_detector or det,
                        "total_ms": t, "baseline_total_ms": tb,
                        "total_ratio": round(t / tb, 3), "speedup": round(tb / t, 2),
                        "embed_per_face_ms": e, "baseline_embed_per_face_ms": eb,
                        "embed_ratio": round(e / eb, 3) if e and eb else None})
    return out


# --------------------------------------------------------------------------- reference files and drift

def reference_payload(result: dict) -> dict:
    """The small per-device file committed under benchmarks/reference/: medians only, keyed
    ``scene/runtime/precision/tN/detector``."""
    return {"device": common.device_slug(result["machine"]), "cpu": result["machine"]["cpu"],
            "cores": result["machine"]["cores"], "date": result["machine"]["date"],
            "packages": {k: v for k, v in result["machine"]["packages"].items()
                         if k in ("ai-edge-litert", "tensorflow", "numpy", "opencv-python-headless")},
            "runs": result["settings"]["runs"], "key": "scene/runtime/precision/threads/detector",
            "median_total_ms": {f"{sc['scene']}/{r['config']}": r["stages_ms"]["total"]["median"]
                                for sc in result["scenes"] for r in sc["rows"]},
            "median_embed_per_face_ms": {f"{sc['scene']}/{r['config']}": r["embed_per_face_ms"]["median"]
                                         for sc in result["scenes"] for r in sc["rows"]}}


def reference_key(key: str) -> str:
    """A reference file's key in today's form: keys written before the detector dimension
    (``scene/runtime/precision/tN``) timed the folder's single short-range model: ``.../short_range``."""
    return key if key.count("/") >= 4 else f"{key}/{common.LEGACY_DETECTOR}"


def drift_check(result: dict, reference: dict, tolerance: float) -> dict:
    """Compare medians with a reference file: a ratio now/reference outside [1/(1+tol), 1+tol] is drift.

    Rows of this run that the reference does not have (another detector, runtime...) are listed in
    ``no_reference``, never compared with something else."""
    now = reference_payload(result)["median_total_ms"]
    ref_all = {reference_key(k): v for k, v in reference.get("median_total_ms", {}).items()}
    rows, drifted = [], 0
    for key, ref in ref_all.items():
        if key not in now or not ref:
            continue
        ratio = now[key] / ref
        ok = 1 / (1 + tolerance) <= ratio <= 1 + tolerance
        drifted += not ok
        rows.append({"key": key, "reference_ms": ref, "now_ms": now[key], "ratio": round(ratio, 3), "ok": ok})
    return {"reference_device": reference.get("device"), "reference_date": reference.get("date"),
            "tolerance": tolerance, "compared": len(rows), "drifted": drifted, "rows": rows,
            "no_reference": sorted(k for k in now if not ref_all.get(k))}


# --------------------------------------------------------------------------- report

def previous_default_markdown(result: dict) -> list[str]:
    """The table of every configuration against the previous default pipeline (``vs_previous_default``), without
    the rows on the baseline's own detector (the same-detector table has them); [] when there are none."""
    others = [v for v in result.get("vs_previous_default", []) if v["detector"] != v["baseline_detector"]]
    if not others:
        return []
    base = f"{others[0]['baseline']} on {others[0]['baseline_detector']}"
    return [f"\n### Every configuration vs {base}, the previous default pipeline (median end-to-end, same run, "
            "same threads)\n",
            common.md_table(["scene", "runtime", "threads", "detector", "precision", "total ms",
                             f"{base} total ms", f"speedup ({base} / this)"],
                            [[v["scene"], v["runtime"], v["threads"], v["detector"], v["precision"], v["total_ms"],
                              v["baseline_total_ms"], v["speedup"]] for v in others])]


def markdown(result: dict) -> str:
    info = result["machine"]
    lines = [common.header("Latency per frame (ms)", info,
                           f"{result['settings']['runs']} timed runs per configuration after "
                           f"{result['settings']['warmup']} warm-up runs, interleaved; median / p95 / min. "
                           "Load, first frame and peak RSS from a fresh process per configuration. "
                           f"detector: the models folder's detector configuration timed (its default, what "
                           f"users get: {result.get('default_detector', '?')}).")]
    for sc in result["scenes"]:
        lines.append(f"\n### {sc['scene']} (tiles {sc['tiles']}, {len(sc['images'])} images)\n")
        rows = []
        for r in sc["rows"]:
            s = r["stages_ms"]
            fp = r["fresh_process"]
            d = r["delegate"]
            deleg = " / ".join(f"{x['nodes_delegated']}/{x['nodes']}" for x in (d["detector"], d["embedder"])
                               if x["nodes"] is not None)
            rows.append([r["runtime"], r["precision"], r["threads"], r.get("detector"), r["faces_per_frame"],
                         s["decode"]["median"],
                         round(s["detect_pre"]["median"] + s["detect_invoke"]["median"]
                               + s["detect_post"]["median"], 3),
                         s["crop"]["median"], r["embed_per_face_ms"]["median"],
                         f"{100 * r.get('mirrored_share', 0):.0f} %", s["match"]["median"],
                         s["total"]["median"], s["total"]["p95"], s["total"]["min"], fp.get("load_ms"),
                         fp.get("first_frame_ms"), fp.get("peak_rss_mb"), deleg])
        lines.append(common.md_table(
            ["runtime", "precision", "threads", "detector", "faces", "decode", "detect", "crop", "embed/face",
             "mirrored", "match",
             "total median", "total p95", "total min", "load", "first frame", "peak RSS MB",
             "XNNPACK nodes det / emb"], rows))
    if result["int8_vs_float32"]:
        lines.append("\n### int8 vs float32 (median end-to-end, same run)\n")
        lines.append(common.md_table(["scene", "runtime", "threads", "detector", "float32 / int8 total", "embed",
                                      "detect models", ">= 2x"],
                                     [[s["scene"], s["runtime"], s["threads"], s["detector"], s["total_speedup"],
                                       s["embed_speedup"], s["detect_invoke_speedup"],
                                       "yes" if s["at_least_2x"] else "no"]
                                      for s in result["int8_vs_float32"]]))
    if result.get("interface_cost"):
        lines.append("\n### Android interface (uint8 in, float32 out) vs int8 tensors (median ms, same run)\n")
        lines.append(common.md_table(
            ["scene", "runtime", "threads", "detector", "detector models int8 / int8_io",
             "embed/face int8 / int8_io", "total int8 / int8_io", "total delta"],
            [[c["scene"], c["runtime"], c["threads"], c["detector"],
              f"{c['detect_invoke_ms']['int8']} / {c['detect_invoke_ms']['int8_io']}",
              f"{c['embed_per_face_ms']['int8']} / {c['embed_per_face_ms']['int8_io']}",
              f"{c['total_ms']['int8']} / {c['total_ms']['int8_io']}", c["total_ms"]["delta"]]
             for c in result["interface_cost"]]))
    if result.get("vs_facenet"):
        base = result["vs_facenet"][0]["baseline"]
        lines.append(f"\n### Embedder variants vs {base} (median end-to-end, same run, same detector)\n")
        lines.append(common.md_table(
            ["scene", "runtime", "threads", "detector", "precision", "total ms", f"{base} total ms",
             f"total / {base}", f"speedup ({base} / this)", f"embed/face / {base}"],
            [[v["scene"], v["runtime"], v["threads"], v["detector"], v["precision"], v["total_ms"],
              v["baseline_total_ms"], v["total_ratio"], v["speedup"], v["embed_ratio"]]
             for v in result["vs_facenet"]]))
    lines += previous_default_markdown(result)
    if result.get("drift"):
        d = result["drift"]
        missing = len(d.get("no_reference", []))
        lines.append(f"\nDrift against reference {d['reference_device']} ({d['reference_date']}): "
                     f"{d['drifted']} of {d['compared']} medians outside ±{int(100 * d['tolerance'])}%"
                     + (f"; {missing} configurations have no reference median (not compared)." if missing else "."))
    if result["notes"]:
        lines.append(common.notes_markdown(result["notes"]))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    plt = common.pyplot()
    scenes = result["scenes"]
    fig, axes = plt.subplots(len(scenes), 1, figsize=(7.5, 1.0 + 0.32 * sum(len(s["rows"]) for s in scenes)),
                             squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, sc in zip(axes[:, 0], scenes):
        labels = [r["config"] for r in sc["rows"]]
        left = np.zeros(len(labels))
        for k, stage in enumerate(STAGES):
            vals = np.array([r["stages_ms"][stage]["median"] for r in sc["rows"]])
            ax.barh(labels, vals, left=left, color=colors[k], label=stage)
            left += vals
        p95 = [r["stages_ms"]["total"]["p95"] for r in sc["rows"]]
        ax.scatter(p95, labels, marker="|", color="k", s=80, label="total p95")
        ax.set_title(f"{sc['scene']}: median ms per frame by stage", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
    axes[0, 0].legend(fontsize=6, ncol=4, loc="lower right")
    axes[-1, 0].set_xlabel("ms")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main_probe(argv: list[str]) -> int:
    """``python -m edgeface.benchmarks.latency --probe '<json spec>'``: used by :func:`run_probe`."""
    print(json.dumps(probe(json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        sys.exit(main_probe(sys.argv[1:]))
    sys.exit("use `edgeface bench latency` (this module's --probe is internal)")
