#!/usr/bin/env python3
"""arm64 proof, check script: run the int8 pipeline on a fixed list of real images, then compare platforms.

Runs unchanged on the x86 host and inside the arm64 (qemu-user) Raspberry Pi OS root. It uses only the
edgeface public API (``FaceRecognizer``, ``Gallery``, ``read_image``, ``edgeface.runtime``,
``edgeface.detect.detector_input``) and numpy (``split`` alone also needs TensorFlow, on x86)::

    check.py images --data DATA                      # the fixed image list (paths relative to DATA)
    check.py models --models M                       # the int8 files the default pipeline loads
    check.py run --models M --data DATA --out x86.npz                       # reference (x86)
    check.py run --models M --data DATA --inputs x86.npz --out arm64.npz    # same input tensors as x86
    check.py run ... --kernels reference                                    # portable reference kernels
    check.py split --models M --data DATA --out OPS        # (x86, TensorFlow) one model per op + its inputs
    check.py ops-run --ops OPS --out ops-x86.npz           # every op alone, on this platform
    check.py compare --reference x86.npz [--reference x86-ref.npz] --candidate litert=arm64.npz [...] \
                     --report report.json

``run`` loads the default int8 pipeline of the models folder (``FaceRecognizer(models, "int8")``: the
default detector configuration, e.g. ``auto`` = short- and full-range BlazeFace on the whole frame and the
full-range model on tiles; the landmark model (O-Net) that aligns every face; the embedder with its
manifest's test-time flip) and records: per image and per detector model, the quantized input tensor of the
letterboxed whole frame and the raw int8 outputs (boxes and score logits); for every face the reference
found, the landmark model's quantized input crop and its raw int8 outputs (box, landmarks, score), and the
embedder's quantized input crop (and its mirror image with flip) and raw int8 embedding; and the public
pipeline's result: boxes, the five landmarks and identities against a gallery enrolled from the shared
8-person set (portraits 1-3 of each person; portraits 4-5, the group photos and some LFW photos are
identified). "Raw int8" are the integers the int8 graph computes, never dequantized: the models' float32
outputs come from a DEQUANTIZE op and are turned back into its integers exactly (:func:`to_steps`). With
``--inputs`` the interpreters are fed the reference's input tensors, so the raw outputs compare the
interpreters alone; the pipeline runs on this platform's own decoding and preprocessing.

A candidate passes when every raw int8 output tensor is within ``--tolerance`` (default 1) quantization
step of the reference run made with the same kernels, every image has the same number of faces, and every
face has the same identity.

Kernels: the runtimes' optimized kernels are platform code (x86 SIMD vs ARM NEON) and may round an op's
result one step differently. A deep int8 network can grow such a step (the int8 BlazeFace does, by tens of
steps). ``--kernels reference`` runs the portable reference kernels instead, which must give the same
integers on every platform. So a **runtime** passes ``compare`` when its optimized-kernel run passes, or
when its reference-kernel run passes and its optimized-kernel run differs only in values (raw steps, faces,
identities), not in models, CPU or errors: then the install computes exactly what x86 computes, and what is
left is the runtime's kernel rounding, which the report lists. With ``--ops-candidate`` every op of every
int8 model, run alone on the inputs it sees on real images (``split`` / ``ops-run``), must also be within
``--tolerance`` of x86: the one-step bound is then checked kernel by kernel, where it is meaningful. The
exit status is 1 if any runtime fails.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from edgeface.errors import OptionError, run_cli

PEOPLE = ("amy", "bernadette", "howard", "leonard", "penny", "raj", "sheldon", "stuart")
ENROLL_PHOTOS = (1, 2, 3)
PROBE_PHOTOS = (4, 5)
GROUP_PHOTOS = (1, 2, 3, 4, 5)
GROUP_TILES = 2
LFW_IMAGES = (
    "Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Colin_Powell/Colin_Powell_0001.jpg",
    "Colin_Powell/Colin_Powell_0002.jpg", "Tony_Blair/Tony_Blair_0001.jpg",
    "George_W_Bush/George_W_Bush_0001.jpg", "Serena_Williams/Serena_Williams_0001.jpg",
    "Gerhard_Schroeder/Gerhard_Schroeder_0001.jpg", "Jennifer_Aniston/Jennifer_Aniston_0001.jpg",
    "Arnold_Schwarzenegger/Arnold_Schwarzenegger_0001.jpg", "Angelina_Jolie/Angelina_Jolie_0001.jpg",
)
#: Raw output tensor groups compared within the tolerance.
OUTPUT_GROUPS = ("det_boxes", "det_scores", "emb_out")
HWCAP2_SME = 1 << 23  # arm64 AT_HWCAP2 bit: Scalable Matrix Extension


def image_list() -> list[tuple[str, str, Optional[str]]]:
    """The fixed images: ``(kind, path relative to the data folder, person)``; kind is ``enroll``,
    ``probe``, ``group`` or ``lfw``. Enrollment images come first."""
    items = [("enroll", f"bbt/{p}/{p}{n}.png", p) for p in PEOPLE for n in ENROLL_PHOTOS]
    items += [("probe", f"bbt/{p}/{p}{n}.png", p) for p in PEOPLE for n in PROBE_PHOTOS]
    items += [("group", f"bbt/group/bbt{n}.jpg", None) for n in GROUP_PHOTOS]
    items += [("lfw", f"lfw/images_deepfunneled/{rel}", None) for rel in LFW_IMAGES]
    return items


def cpu_features() -> dict:
    """AT_HWCAP / AT_HWCAP2 from the auxiliary vector (what the kernels see; under qemu-user, QEMU's CPU)."""
    try:
        raw = Path("/proc/self/auxv").read_bytes()
    except OSError:
        return {}
    words = struct.unpack(f"{len(raw) // 8}Q", raw[: len(raw) // 8 * 8])
    aux = dict(zip(words[0::2], words[1::2]))
    out = {"hwcap": aux.get(16, 0), "hwcap2": aux.get(26, 0)}
    if platform.machine() == "aarch64":
        out["sme"] = bool(out["hwcap2"] & HWCAP2_SME)
    return out


def _versions() -> dict:
    from edgeface.runtime import get_runtime

    rt = get_runtime()
    cv2 = sys.modules.get("cv2")
    return {"runtime": rt.name, "runtime_version": rt.version, "numpy": np.__version__,
            "opencv": getattr(cv2, "__version__", "?"), "python": platform.python_version(),
            "machine": platform.machine(), "qemu_cpu": os.environ.get("QEMU_CPU")}


def to_steps(values: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """The integers a DEQUANTIZE op was given, from its float32 output: ``values / scale + zero_point``.

    The int8 models end in DEQUANTIZE ops (float32 outputs around an int8 graph); their outputs are exact
    multiples of the scale, so the integers come back exactly. Raises ValueError when a value is more than
    0.01 step off the grid or outside ``dtype`` (not a dequantized tensor of these parameters).

    >>> to_steps(np.array([0.5, -1.0], np.float32), 0.25, 3, np.int8).tolist()
    [5, -1]
    """
    if not scale > 0:
        raise ValueError(f"a quantization scale must be > 0, got {scale}")
    q = np.asarray(values, np.float64) / float(scale) + int(zero_point)
    r = np.rint(q)
    off = float(np.abs(q - r).max()) if q.size else 0.0
    if off > 0.01:
        raise ValueError(f"values are up to {off:.3f} step off the grid of scale {scale}, zero point {zero_point}")
    info = np.iinfo(dtype)
    if q.size and (r.min() < info.min or r.max() > info.max):
        raise ValueError(f"values span {r.min():.0f}..{r.max():.0f} steps, outside {np.dtype(dtype).name}")
    return r.astype(dtype)


def dequantized_from(interpreter, tensor_index: int) -> tuple[float, int, np.dtype]:
    """(scale, zero point, dtype) of the integer tensor that the DEQUANTIZE op producing float output
    ``tensor_index`` reads (LiteRT and tflite-runtime both expose the op list)."""
    ops = getattr(interpreter, "_get_ops_details", None)
    if ops is None:
        raise OptionError("this runtime does not list a model's ops; cannot find the int8 outputs")
    producers = [o for o in ops() if o["op_name"] == "DEQUANTIZE" and tensor_index in list(o["outputs"])]
    if not producers:
        raise OptionError(f"float output tensor {tensor_index} is not produced by a DEQUANTIZE op")
    source = int(producers[0]["inputs"][0])
    detail = {t["index"]: t for t in interpreter.get_tensor_details()}[source]
    scale, zero_point = detail["quantization"]
    return float(scale), int(zero_point), np.dtype(detail["dtype"])


def _raw_run(interpreter, tensor: np.ndarray, forced: Optional[np.ndarray], out_names: list[str]):
    """Quantize ``tensor`` with the input's own parameters (or use ``forced``, a reference's quantized
    input), invoke, return ``(quantized input, [raw output integers])``: a float32 output is turned back into
    the int8 integers its DEQUANTIZE op was given (:func:`to_steps`)."""
    from edgeface import runtime

    detail = interpreter.get_input_details()[0]
    runtime.set_input(interpreter, tensor)
    own = interpreter.get_tensor(detail["index"]).copy()
    if forced is not None:
        if forced.shape != own.shape or forced.dtype != own.dtype:
            raise OptionError(f"reference input {forced.dtype}{forced.shape} does not fit {own.dtype}{own.shape}")
        interpreter.set_tensor(detail["index"], forced)
    interpreter.invoke()
    outs = []
    for name in out_names:
        d = interpreter.get_output_details()[runtime.output_index(interpreter, name)]
        value = interpreter.get_tensor(d["index"]).copy()
        if np.dtype(d["dtype"]).kind == "f":
            try:
                value = to_steps(value, *dequantized_from(interpreter, d["index"]))
            except ValueError as exc:
                raise OptionError(f"output {name}: {exc}") from exc
        outs.append(value)
    return own, outs


KERNELS = ("optimized", "reference")


def pipeline_models(models: Path, precision: str = "int8") -> dict[str, Path]:
    """The models the default pipeline of a models folder loads, by role label: ``det_<name>`` for every
    detector model of the default configuration (whole-frame models, then the tile model when it is another
    one), ``landmarks`` (when the folder lists a landmark model) and ``embedder``. Reads ``models.json`` only."""
    from edgeface.detect import resolve_detector
    from edgeface.manifest import resolve_landmarks, resolve_models

    config = resolve_detector(models, precision)
    out: dict[str, Path] = {}
    for path in (*config.whole_frame, config.tile_model):
        if Path(path) not in out.values():
            out[f"det_{_detector_label(Path(path))}"] = Path(path)
    landmarks = resolve_landmarks(models, precision)
    if landmarks is not None:
        out["landmarks"] = Path(landmarks)
    out["embedder"] = Path(resolve_models(models, precision)[1])
    return out


def _detector_label(path: Path) -> str:
    """``short_range`` for ``blazeface_short_range_int8.tflite`` (the model's name without family and precision)."""
    stem = path.stem
    for suffix in ("_int8", "_float32", "_float16"):
        stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
    return stem[len("blazeface_"):] if stem.startswith("blazeface_") else stem


def run(models: Path, data: Path, out: Path, inputs: Optional[Path] = None, threads: int = 1,
        max_crops: Optional[int] = None, kernels: str = "optimized") -> dict:
    """Run the fixed images through this platform's interpreter; write ``out`` (npz) and return its meta.

    Raw checks (groups ``<role>_<output>``): every detector model of the default configuration on the
    letterboxed whole frame of every image; the landmark model on the crop of every face the pipeline found;
    the embedder on every face crop and, when the manifest's ``flip`` is on, on its mirror image.
    ``kernels="reference"`` runs every interpreter (raw checks and pipeline) on the reference kernels."""
    from edgeface import FaceRecognizer, Gallery, read_image
    from edgeface.detect import detector_input
    from edgeface.preprocess import normalize

    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    os.environ["EDGEFACE_KERNELS"] = kernels  # read by edgeface.runtime.make_interpreter
    t0 = time.perf_counter()
    ref = _load(inputs) if inputs else None
    if ref is not None and ref["meta"].get("kernels", "optimized") != kernels:
        raise OptionError(f"{inputs}: a run with {ref['meta'].get('kernels', 'optimized')} kernels; this run uses "
                         f"{kernels} kernels")
    images = image_list()
    if ref is not None and [i["path"] for i in ref["meta"]["images"]] != [p for _, p, _ in images]:
        raise OptionError(f"{inputs}: recorded for another image list; rerun the reference")
    rec = FaceRecognizer(models, precision="int8", threads=threads)
    det, emb, lmk = rec.detector, rec.embedder, rec.embedder.landmarker
    detectors = {f"det_{_detector_label(m.path)}": m for m in det.members}
    groups = [f"{label}_{key}" for label in detectors for key in ("boxes", "scores")]
    lmk_keys = sorted(lmk.manifest["outputs"]) if lmk is not None else []
    groups += [f"lmk_{key}" for key in lmk_keys] + ["emb_out"]
    arrays: dict[str, np.ndarray] = {}
    shas = {label: m.manifest["sha256"] for label, m in detectors.items()}
    shas.update({"embedder": emb.manifest["sha256"], **({"landmarks": lmk.manifest["sha256"]} if lmk else {})})
    meta: dict = {"versions": _versions(), "cpu": cpu_features(), "threads": threads, "kernels": kernels,
                  "models": shas, "groups": groups, "detector": det.name,
                  "whole_frame": [f"det_{_detector_label(m.path)}" for m in det.models],
                  "tile_model": f"det_{_detector_label(det.tile_model.path)}", "flip": emb.flip,
                  "alignment": emb.alignment, "threshold": rec.min_cosine_similarity, "images": [], "crops": [],
                  "faces_raw": [], "inputs_from": None}
    if ref is not None:
        meta["inputs_from"] = str(inputs)
        if ref["meta"].get("models") != meta["models"]:
            raise OptionError(f"{inputs}: recorded with other models than {models}")
    decoded = {}
    # 1. raw detector outputs on the letterboxed full frame of every image, for every detector model
    t = time.perf_counter()
    for i, (_kind, rel, _person) in enumerate(images):
        image = decoded[rel] = read_image(data / rel)
        for label, m in detectors.items():
            tensor, _ = detector_input(image, m.spec.input_size, m.mean, m.std)
            forced = ref["arrays"][f"{label}_in:{i}"] if ref is not None else None
            outputs = [m.manifest["outputs"]["boxes"], m.manifest["outputs"]["scores"]]
            own, (boxes, scores) = _raw_run(m.interpreter, tensor, forced, outputs)
            arrays[f"{label}_in:{i}"], arrays[f"{label}_boxes:{i}"], arrays[f"{label}_scores:{i}"] = own, boxes, scores
    meta["seconds_detector_raw"] = round(time.perf_counter() - t, 2)
    _progress(f"raw detector ({', '.join(detectors)}) on {len(images)} images: {meta['seconds_detector_raw']} s")

    # 2. the public pipeline: enroll portraits 1-3 of each person, identify everything else
    t = time.perf_counter()
    faces_found = []  # (image index, box, keypoints) of every face found, for the raw checks
    with tempfile.TemporaryDirectory() as tmp, Gallery(Path(tmp) / "gallery.db", rec.embedder_id,
                                                         emb.dim) as gallery:
        for i, (kind, rel, person) in enumerate(images):
            image = decoded[rel]
            det.tiles = GROUP_TILES if kind == "group" else 1
            entry = {"kind": kind, "path": rel, "person": person, "tiles": det.tiles}
            if kind == "enroll":
                found = rec.embed(image)
                entry.update(boxes=[f.box.tolist() for f, _ in found], scores=[f.score for f, _ in found],
                             names=[person] * len(found), similarities=[1.0] * len(found))
                if len(found) == 1:
                    gallery.enroll(person, [found[0][1]], sources=[rel])
                else:
                    entry["error"] = f"enrollment photo has {len(found)} faces, expected 1"
                faces = [f for f, _ in found]
            else:
                ids = rec.identify(image, gallery)
                entry.update(boxes=[x.face.box.tolist() for x in ids], scores=[x.face.score for x in ids],
                             names=[x.name for x in ids], similarities=[x.similarity for x in ids])
                faces = [x.face for x in ids]
            if lmk is not None:  # the five points the embedder aligned on (the same O-Net run, repeated)
                entry["landmarks"] = [lmk.landmarks(rec.prepare(image), f.box).points.tolist() for f in faces]
            faces_found += [(i, f.box, f.keypoints) for f in faces]
            meta["images"].append(entry)
        meta["enrolled"] = {p.name: p.num_embeddings for p in gallery.people()}
    det.tiles = 1
    meta["seconds_pipeline"] = round(time.perf_counter() - t, 2)
    _progress(f"pipeline (enroll + identify, {len(faces_found)} faces): {meta['seconds_pipeline']} s")

    # 3. raw landmark outputs on the reference's O-Net crops of every face
    t = time.perf_counter()
    face_meta = ref["meta"]["faces_raw"] if ref is not None else \
        [{"image": i, "box": [float(v) for v in box]} for i, box, _ in faces_found]
    if lmk is not None:
        outputs = [lmk.manifest["outputs"][k] for k in lmk_keys]
        for j, f in enumerate(face_meta):
            if ref is not None:
                forced = ref["arrays"][f"lmk_in:{j}"]
                tensor = np.zeros(forced.shape, np.float32)  # replaced by the reference's quantized crop
            else:
                crop, _ = lmk.crop(decoded[images[f["image"]][1]], np.asarray(f["box"], np.float32))
                tensor, forced = normalize(crop, lmk.mean, lmk.std)[None], None
            own, outs = _raw_run(lmk.interpreter, tensor, forced, outputs)
            arrays[f"lmk_in:{j}"] = forced if forced is not None else own
            for k, v in zip(lmk_keys, outs):
                arrays[f"lmk_{k}:{j}"] = v
    meta["faces_raw"] = face_meta
    meta["seconds_landmarks_raw"] = round(time.perf_counter() - t, 2)
    _progress(f"raw landmarks on {len(face_meta) if lmk else 0} faces: {meta['seconds_landmarks_raw']} s")

    # 4. raw embedder outputs on the reference's face crops (and their mirror images when flip is on)
    t = time.perf_counter()
    if ref is not None:
        n = min(len(ref["meta"]["crops"]), max_crops or len(ref["meta"]["crops"]))
        crop_meta = ref["meta"]["crops"][:n]
    else:
        crop_meta = [{"image": i, "box": [float(v) for v in box], "flipped": flipped}
                     for i, box, _ in faces_found for flipped in ((False, True) if emb.flip else (False,))]
        crop_meta = crop_meta[:max_crops] if max_crops else crop_meta
        n = len(crop_meta)
    emb_outs = [emb.manifest["outputs"]["embedding"]]
    crops_of = {}
    for j in range(n):
        if ref is not None:
            forced = ref["arrays"][f"emb_in:{j}"]
            tensor = np.zeros(forced.shape, np.float32)  # replaced by the reference's quantized crop
        else:
            i, box, kps = _face_of(faces_found, crop_meta[j])
            key = (i, tuple(crop_meta[j]["box"]))
            if key not in crops_of:
                crops_of[key] = emb.crop(decoded[images[i][1]], box, kps)
            crop = crops_of[key][:, ::-1] if crop_meta[j]["flipped"] else crops_of[key]
            tensor, forced = normalize(crop, emb.mean, emb.std)[None], None
        own, (out_q,) = _raw_run(emb.interpreter, tensor, forced, emb_outs)
        arrays[f"emb_in:{j}"] = forced if forced is not None else own
        arrays[f"emb_out:{j}"] = out_q
    meta["crops"] = crop_meta
    meta["seconds_embedder_raw"] = round(time.perf_counter() - t, 2)
    _progress(f"raw embedder on {n} crops (flip {'on' if emb.flip else 'off'}): {meta['seconds_embedder_raw']} s")
    meta["seconds_total"] = round(time.perf_counter() - t0, 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, meta=np.array(json.dumps(meta)), **{k.replace(":", "__"): v
                                                                   for k, v in arrays.items()})
    return meta


def _face_of(faces_found: list, crop: dict):
    """The (image index, box, keypoints) entry of ``faces_found`` that a crop record names."""
    for i, box, kps in faces_found:
        if i == crop["image"] and [float(v) for v in box] == crop["box"]:
            return i, box, kps
    raise KeyError(f"no face {crop['box']} in image {crop['image']}")


# --------------------------------------------------------------------------------------- per-op check
#: images whose detector tensors feed the single-op detector models; crops of the first faces feed the embedder's
OP_IMAGES = ("bbt/amy/amy4.png", "bbt/group/bbt1.jpg", "lfw/images_deepfunneled/Colin_Powell/Colin_Powell_0001.jpg")
OP_CROPS = 2


def _single_op_model(model, k: int):
    """A copy of ``model`` (a flatbuffer ``ModelT``) with only operator ``k`` of subgraph 0: its variable
    inputs become the model's inputs, its outputs the model's outputs; constants keep their buffers."""
    import copy

    from tensorflow.lite.python import schema_py_generated as schema

    sg = model.subgraphs[0]
    op = sg.operators[k]
    used = [t for t in list(op.inputs) + list(op.outputs) if t >= 0]
    used = list(dict.fromkeys(used))
    new_index = {t: i for i, t in enumerate(used)}
    buffers = [schema.BufferT()]
    tensors = []
    for t in used:
        tensor = copy.copy(sg.tensors[t])
        data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
        if data is not None and len(data):
            buffers.append(model.buffers[tensor.buffer])
            tensor.buffer = len(buffers) - 1
        else:
            tensor.buffer = 0
        tensors.append(tensor)
    new_op = copy.copy(op)
    new_op.inputs = [new_index[t] if t >= 0 else -1 for t in op.inputs]
    new_op.outputs = [new_index[t] for t in op.outputs]
    new_op.intermediates = []
    variable = [t for t in dict.fromkeys(op.inputs) if t >= 0 and tensors[new_index[t]].buffer == 0]
    sub = schema.SubGraphT()
    sub.tensors, sub.operators, sub.name = tensors, [new_op], f"op{k}"
    sub.inputs = [new_index[t] for t in variable]
    sub.outputs = list(new_op.outputs)
    out = schema.ModelT()
    out.version, out.operatorCodes, out.buffers, out.subgraphs = model.version, model.operatorCodes, buffers, [sub]
    out.description = f"edgeface arm64 proof: op {k} of {sg.name or 'subgraph 0'}"
    return out, variable


def split(models: Path, data: Path, out: Path) -> dict:
    """(x86 host, needs TensorFlow) Write one single-op model per operator of every int8 model the default
    pipeline loads (:func:`pipeline_models`), and the inputs each op sees on real images (recorded with
    LiteRT's preserve_all_tensors). ``ops-run`` then runs each op alone on those inputs, so the comparison
    measures one kernel at a time. A float output (the DEQUANTIZE at a model's edge) is compared in steps of
    the integer tensor it dequantizes (``units`` in ops.json)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tensorflow.lite.tools import flatbuffer_utils

    from edgeface import FaceRecognizer, read_image, runtime
    from edgeface.detect import DetectorModel, detector_input
    from edgeface.preprocess import normalize

    files = pipeline_models(models)
    rec = FaceRecognizer(models, precision="int8", threads=1)
    emb, lmk = rec.embedder, rec.embedder.landmarker
    samples: dict[str, list] = {role: [] for role in files}
    for rel in OP_IMAGES:
        image = read_image(data / rel)
        for role, path in files.items():
            if role.startswith("det_"):
                m = DetectorModel(path, threads=1)
                samples[role].append(detector_input(image, m.spec.input_size, m.mean, m.std)[0])
        for face in rec.detect(image, max_faces=1):  # the best face's crops
            if len(samples["embedder"]) < OP_CROPS:
                crop = emb.crop(image, face.box, face.keypoints)
                samples["embedder"].append(normalize(crop, emb.mean, emb.std)[None])
                if lmk is not None:
                    samples["landmarks"].append(normalize(lmk.crop(image, face.box)[0], lmk.mean, lmk.std)[None])
    arrays, index = {}, {"models": {}}
    for role, model_path in files.items():
        it = Interpreter(model_path=str(model_path), experimental_preserve_all_tensors=True, num_threads=1,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
        recorded = []  # per sample: every tensor's value after the invoke
        for x in samples[role]:
            runtime.set_input(it, x)
            it.invoke()
            recorded.append({t["index"]: it.get_tensor(t["index"]).copy() for t in it.get_tensor_details()})
        fb = flatbuffer_utils.read_model(str(model_path))
        tensors = fb.subgraphs[0].tensors
        folder = out / role
        folder.mkdir(parents=True, exist_ok=True)
        ops = []
        for k, op in enumerate(fb.subgraphs[0].operators):
            single, variable = _single_op_model(fb, k)
            flatbuffer_utils.write_model(single, str(folder / f"op{k:03d}.tflite"))
            name = it._get_ops_details()[k]["op_name"]
            ops.append({"op": k, "name": name, "file": f"{role}/op{k:03d}.tflite", "inputs": len(variable),
                        "units": op_units(tensors, op)})
            for si, values in enumerate(recorded):
                for j, t in enumerate(variable):
                    arrays[f"{role}:{k}:{si}:{j}"] = values[t]
        index["models"][role] = {"file": model_path.name, "ops": ops, "samples": len(recorded)}
    np.savez_compressed(out / "inputs.npz", **{k.replace(":", "__"): v for k, v in arrays.items()})
    (out / "ops.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


#: flatbuffer TensorType codes of the float types (FLOAT32, FLOAT16, FLOAT64)
_FLOAT_TYPES = (0, 1, 10)


def op_units(tensors: list, op) -> list:
    """Per output of flatbuffer operator ``op``: None when it is an integer tensor (compared in its own
    steps), else the scale of the op's first quantized input (a DEQUANTIZE's float output is compared in steps
    of the integers it dequantizes); 0.0 for a float output of float inputs (compared as is)."""
    scale = 0.0
    for t in op.inputs:
        q = tensors[t].quantization if t >= 0 else None
        if q is not None and q.scale is not None and len(q.scale) and tensors[t].type not in _FLOAT_TYPES:
            scale = float(q.scale[0])
            break
    return [None if tensors[t].type not in _FLOAT_TYPES else scale for t in op.outputs]


def step_diff(a: np.ndarray, b: np.ndarray, unit: Optional[float] = None) -> float:
    """Largest |a - b| in quantization steps: integers as they are (no wraparound), floats divided by
    ``unit`` (the step of the integers they dequantize; 0 or None: the float difference itself).

    >>> step_diff(np.array([-128], np.int8), np.array([127], np.int8))
    255.0
    >>> step_diff(np.array([0.5], np.float32), np.array([0.75], np.float32), 0.25)
    1.0
    """
    if not a.size:
        return 0.0
    if a.dtype.kind == "f":
        d = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
        return d / unit if unit else d
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def ops_run(ops_dir: Path, out: Path, kernels: str = "optimized") -> dict:
    """Run every single-op model written by :func:`split` on its recorded inputs with this platform's
    interpreter; write the raw outputs to ``out`` (npz, keys ``role:op:sample:output``)."""
    from edgeface import runtime

    index = json.loads((ops_dir / "ops.json").read_text())
    with np.load(ops_dir / "inputs.npz") as z:
        inputs = {k.replace("__", ":"): z[k] for k in z.files}
    arrays = {}
    t0 = time.perf_counter()
    for role, m in index["models"].items():
        for op in m["ops"]:
            it = runtime.make_interpreter(ops_dir / op["file"], threads=1, kernels=kernels)
            ins, outs = it.get_input_details(), it.get_output_details()
            for si in range(m["samples"]):
                for j, d in enumerate(ins):
                    it.set_tensor(d["index"], inputs[f"{role}:{op['op']}:{si}:{j}"])
                it.invoke()
                for o, d in enumerate(outs):
                    arrays[f"{role}:{op['op']}:{si}:{o}"] = it.get_tensor(d["index"]).copy()
    meta = {"versions": _versions(), "cpu": cpu_features(), "kernels": kernels,
            "seconds": round(time.perf_counter() - t0, 2)}
    np.savez_compressed(out, meta=np.array(json.dumps(meta)), **{k.replace(":", "__"): v for k, v in arrays.items()})
    return meta


def compare_ops(index: dict, reference: dict, candidate: dict, tolerance: int = 1) -> dict:
    """Per op, the largest |difference| in quantization steps between two :func:`ops_run` results."""
    problems, worst = [], {"steps": 0, "op": None}
    per_role = {}
    for role, m in index["models"].items():
        counts = {"ops": len(m["ops"]), "identical": 0, "max_diff": 0}
        for op in m["ops"]:
            diffs = []
            for key in [k for k in reference["arrays"] if k.startswith(f"{role}:{op['op']}:")]:
                if key not in candidate["arrays"]:
                    problems.append(f"{key}: missing in the candidate")
                    continue
                a, b = reference["arrays"][key], candidate["arrays"][key]
                if a.shape != b.shape or a.dtype != b.dtype:
                    problems.append(f"{key}: reference {a.dtype}{a.shape} vs candidate {b.dtype}{b.shape}")
                    continue
                units = op.get("units") or []
                o = int(key.split(":")[3])
                diffs.append(step_diff(a, b, units[o] if o < len(units) else None))
            d = max(diffs, default=0.0)
            counts["identical"] += d == 0
            d = int(d) if d == int(d) else round(d, 4)  # a float edge differs by a fraction of a step
            counts["max_diff"] = max(counts["max_diff"], d)
            if d > worst["steps"]:
                worst = {"steps": d, "op": f"{role} op {op['op']} {op['name']}"}
            if d > tolerance:
                problems.append(f"{role} op {op['op']} {op['name']}: {d} steps > {tolerance}")
        per_role[role] = counts
    return {"ok": not problems, "problems": problems, "roles": per_role, "worst": worst,
            "versions": candidate["meta"]["versions"], "kernels": candidate["meta"]["kernels"]}


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _load_ops(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {"meta": json.loads(str(z["meta"])),
                "arrays": {k.replace("__", ":"): z[k] for k in z.files if k != "meta"}}


def _load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k.replace("__", ":"): z[k] for k in z.files if k != "meta"}
    return {"meta": meta, "arrays": arrays}


# --------------------------------------------------------------------------------------------- comparison
def compare_int8(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                 tolerance: int = 1, groups: tuple[str, ...] = OUTPUT_GROUPS) -> dict:
    """Compare raw quantized tensors key by key (keys ``group:index``), in integer quantization steps.

    Returns ``{"ok", "problems": [str], "groups": {group: {"tensors", "elements", "differing",
    "max_diff", "worst"}}}``. A tensor missing on either side, or with another shape or dtype, is a problem;
    a float tensor is a problem (the proof is about quantized outputs).
    """
    problems: list[str] = []
    beyond: list[str] = []  # the subset of problems that are values out of tolerance (the rest is structure)
    stats = {g: {"tensors": 0, "elements": 0, "differing": 0, "max_diff": 0, "worst": None} for g in groups}
    keys = sorted(k for k in set(reference) | set(candidate) if k.split(":")[0] in groups)
    for key in keys:
        group = key.split(":")[0]
        if key not in candidate:
            problems.append(f"{key}: missing in the candidate")
            continue
        if key not in reference:
            problems.append(f"{key}: not in the reference")
            continue
        a, b = np.asarray(reference[key]), np.asarray(candidate[key])
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{key}: reference {a.dtype}{a.shape} vs candidate {b.dtype}{b.shape}")
            continue
        if a.dtype.kind not in "iu":
            problems.append(f"{key}: {a.dtype} is not a quantized integer tensor")
            continue
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
        s = stats[group]
        s["tensors"] += 1
        s["elements"] += int(diff.size)
        s["differing"] += int(np.count_nonzero(diff))
        m = int(diff.max()) if diff.size else 0
        if s["worst"] is None or m > s["max_diff"]:
            s["max_diff"], s["worst"] = m, key
        if m > tolerance:
            beyond.append(f"{key}: max |int8 difference| {m} > {tolerance} quantization step(s) "
                          f"({int(np.count_nonzero(diff > tolerance))} of {diff.size} elements)")
            problems.append(beyond[-1])
    for g, s in stats.items():
        if s["tensors"] == 0:
            problems.append(f"{g}: no tensors to compare")
    return {"ok": not problems, "problems": problems, "value_problems": beyond, "groups": stats}


def _iou(a, b) -> float:
    from edgeface.blazeface import iou

    return float(iou(a, np.asarray(b, float)[None])[0])


def compare_faces(reference: list[dict], candidate: list[dict], min_iou: float = 0.5) -> dict:
    """Compare per-image pipeline results (``{"path", "boxes", "names"}``): same number of faces, and
    each reference face paired (greedily, best IoU first) with a candidate face of the same identity.

    Returns ``{"ok", "problems", "images", "faces", "min_iou", "max_box_shift_px", "max_landmark_shift_px"}``;
    the landmark shift (the five points the embedder aligned on, when both runs recorded them) is measured,
    not bounded: the raw landmark outputs carry the bound.
    """
    problems: list[str] = []
    values: list[str] = []  # the subset of problems that are other values (counts, boxes, names), not errors
    faces, ious, shifts, lmk_shifts, count_mismatches, name_mismatches = 0, [], [], [], 0, 0
    candidate_faces = sum(len(c["boxes"]) for c in candidate)
    if [r["path"] for r in reference] != [c["path"] for c in candidate]:
        return {"ok": False, "problems": ["the image lists differ"], "images": 0, "faces": 0,
                "count_mismatches": None, "identity_mismatches": None, "min_iou": None, "max_box_shift_px": None,
                "max_landmark_shift_px": None}
    for r, c in zip(reference, candidate):
        faces += len(r["boxes"])
        if r.get("error") != c.get("error"):
            problems.append(f"{r['path']}: reference {r.get('error') or 'ok'}, candidate {c.get('error') or 'ok'}")
        if len(r["boxes"]) != len(c["boxes"]):
            values.append(f"{r['path']}: {len(r['boxes'])} faces on the reference, {len(c['boxes'])} on the candidate")
            problems.append(values[-1])
            count_mismatches += 1
            continue
        pairs = sorted(((_iou(rb, cb), i, j) for i, rb in enumerate(r["boxes"]) for j, cb in enumerate(c["boxes"])),
                       reverse=True)
        used_r, used_c = set(), set()
        for iou, i, j in pairs:
            if i in used_r or j in used_c:
                continue
            used_r.add(i)
            used_c.add(j)
            if iou < min_iou:
                values.append(f"{r['path']}: face {i} has no candidate box with IoU >= {min_iou} (best {iou:.2f})")
                problems.append(values[-1])
                name_mismatches += 1
                continue
            ious.append(iou)
            shifts.append(float(np.max(np.abs(np.subtract(r["boxes"][i], c["boxes"][j])))))
            if r.get("landmarks") and c.get("landmarks"):
                lmk_shifts.append(float(np.max(np.abs(np.subtract(r["landmarks"][i], c["landmarks"][j])))))
            if r["names"][i] != c["names"][j]:
                name_mismatches += 1
                values.append(f"{r['path']}: face {i} is {r['names'][i]!r} on the reference, "
                              f"{c['names'][j]!r} on the candidate")
                problems.append(values[-1])
    return {"ok": not problems, "problems": problems, "value_problems": values, "images": len(reference),
            "faces": faces,
            "candidate_faces": candidate_faces, "count_mismatches": count_mismatches,
            "identity_mismatches": name_mismatches,
            "min_iou": round(min(ious), 4) if ious else None,
            "max_box_shift_px": round(max(shifts), 3) if shifts else None,
            "max_landmark_shift_px": round(max(lmk_shifts), 3) if lmk_shifts else None}


def compare(reference: dict, candidate: dict, tolerance: int = 1) -> dict:
    """Everything ``compare`` checks for one candidate run against the reference run (both from :func:`_load`)."""
    rm, cm = reference["meta"], candidate["meta"]
    problems = []
    if rm.get("models") != cm.get("models"):
        problems.append("models differ from the reference's")
    if cm.get("cpu", {}).get("sme"):
        problems.append("the CPU exposes SME (QEMU's default 'max' CPU gives wrong int8 results): "
                        "set QEMU_CPU=cortex-a72")
    rk, ck = rm.get("kernels", "optimized"), cm.get("kernels", "optimized")
    if rk != ck:
        problems.append(f"the reference ran on {rk} kernels, the candidate on {ck} kernels")
    n_crops = len(cm["crops"])  # a candidate may check the first N of the reference's crops only
    ref_arrays = {k: v for k, v in reference["arrays"].items()
                  if not k.startswith("emb_") or int(k.split(":")[1]) < n_crops}
    raw = compare_int8(ref_arrays, candidate["arrays"], tolerance, tuple(rm.get("groups", OUTPUT_GROUPS)))
    faces = compare_faces(rm["images"], cm["images"])
    in_groups = tuple(sorted({k.split(":")[0] for k in reference["arrays"]
                              if k.startswith("det_") and k.split(":")[0].endswith("_in")}))
    own_in = compare_int8(reference["arrays"], candidate["arrays"], 255, in_groups)["groups"]
    problems += raw["problems"] + faces["problems"]
    # what differs only in values (steps, faces, identities), as kernel rounding would; anything else
    # (models, CPU, kernels, missing tensors, errors) is never excused by a reference-kernel pass
    values_only = len(problems) == len(raw["value_problems"]) + len(faces["value_problems"])
    return {"ok": not problems, "values_only": values_only, "kernels": ck, "problems": problems,
            "versions": cm["versions"], "cpu": cm.get("cpu"), "crops": n_crops,
            "raw": raw["groups"], "faces": faces, "own_detector_input_vs_reference": own_in,
            "identities": [n for im in cm["images"] for n in im["names"]],
            "seconds": {k[8:]: v for k, v in cm.items() if k.startswith("seconds_")}}


def _fmt_group(s: dict) -> str:
    return f"{s['max_diff']} ({s['differing']}/{s['elements']})"


def runtime_verdicts(candidates: dict[str, dict]) -> dict[str, dict]:
    """Per runtime (``versions.runtime``): ``{"ok", "how", "candidates"}``. A runtime passes on its optimized
    kernels alone, or on its reference kernels when its optimized run differs in values only."""
    by_rt: dict[str, dict[str, dict]] = {}
    for label, c in candidates.items():
        rt = c.get("versions", {}).get("runtime") or label
        by_rt.setdefault(rt, {})[label] = c
    out = {}
    for rt, cs in by_rt.items():
        opt = [c for c in cs.values() if c.get("kernels", "optimized") == "optimized"]
        ref = [c for c in cs.values() if c.get("kernels") == "reference"]
        if any("raw" not in c for c in cs.values()) or not opt:
            ok, how = False, "a run failed" if opt else "no optimized-kernel run"
        elif all(c["ok"] for c in opt):
            ok, how = True, "optimized kernels within tolerance"
        elif ref and all(c["ok"] for c in ref) and all(c["values_only"] for c in opt):
            ok, how = True, ("reference kernels within tolerance; the optimized kernels differ by kernel rounding "
                             "(listed under the optimized run)")
        elif not all(c["values_only"] for c in opt):
            ok, how = False, "optimized run differs in more than values"
        elif not ref:
            ok, how = False, "optimized kernels out of tolerance and no reference-kernel run"
        elif all(len(c["problems"]) == len(c["faces"]["problems"]) for c in ref):
            ok, how = False, ("optimized kernels out of tolerance; the reference kernels are within tolerance on every "
                              "raw tensor but the reference-kernel pipeline differs in faces or identities (this "
                              "platform's own decoding and preprocessing feed it)")
        else:
            ok, how = False, "optimized and reference kernels out of tolerance"
        out[rt] = {"ok": ok, "how": how, "candidates": sorted(cs)}
    return out


def report(references: list[Path], candidates: dict[str, Path], out: Optional[Path], tolerance: int = 1,
           extra: Optional[dict] = None, ops_dir: Optional[Path] = None, ops_reference: Optional[Path] = None,
           ops_candidates: Optional[dict[str, Path]] = None) -> int:
    """Compare every candidate with the reference run of the same kernels; print a table, write ``out``.

    With ``ops_dir`` / ``ops_reference`` / ``ops_candidates`` (from ``split`` and ``ops-run``), every single
    op is compared too, and a runtime whose single ops are not within ``tolerance`` fails."""
    refs = {}
    for path in references:
        r = _load(path)
        refs[r["meta"].get("kernels", "optimized")] = (path, r)
    path0, ref0 = refs.get("optimized") or next(iter(refs.values()))
    rm = ref0["meta"]

    def ref_entry(path, r):
        m = r["meta"]
        return {"file": str(path), "kernels": m.get("kernels", "optimized"), "versions": m["versions"],
                "cpu": m.get("cpu"), "seconds": {k[8:]: v for k, v in m.items() if k.startswith("seconds_")},
                "faces": sum(len(i["boxes"]) for i in m["images"]),
                "identities": [n for im in m["images"] for n in im["names"]], "enrolled": m.get("enrolled")}

    result = {"tolerance_steps": tolerance, "reference": ref_entry(path0, ref0),
              "references": {k: ref_entry(p, r) for k, (p, r) in refs.items()},
              "images": [{k: im[k] for k in ("kind", "path", "person", "names")} for im in rm["images"]],
              "candidates": {}}
    for label, path in candidates.items():
        if not Path(path).is_file():
            result["candidates"][label] = {"ok": False, "problems": [f"{path}: no result (the run failed)"]}
            continue
        cand = _load(path)
        k = cand["meta"].get("kernels", "optimized")
        if k not in refs:
            result["candidates"][label] = {"ok": False, "kernels": k, "versions": cand["meta"]["versions"],
                                           "problems": [f"no reference run with {k} kernels (--reference)"]}
            continue
        result["candidates"][label] = compare(refs[k][1], cand, tolerance)
    result["runtimes"] = runtime_verdicts(result["candidates"])
    if ops_candidates:
        index = json.loads((ops_dir / "ops.json").read_text())
        oref = _load_ops(ops_reference)
        result["ops"] = {"reference": {"file": str(ops_reference), **oref["meta"]}, "candidates": {}}
        for label, path in ops_candidates.items():
            if not Path(path).is_file():
                result["ops"]["candidates"][label] = {"ok": False, "problems": [f"{path}: no result (the run failed)"]}
                continue
            c = compare_ops(index, oref, _load_ops(path), tolerance)
            result["ops"]["candidates"][label] = c
            rt = c["versions"]["runtime"]
            verdict = result["runtimes"].setdefault(rt, {"ok": False, "how": "no pipeline run", "candidates": []})
            if c["ok"]:
                verdict["how"] += f"; every single op within {tolerance} step(s) of x86 ({label})"
            else:
                verdict["ok"] = False
                verdict["how"] += f"; single ops out of tolerance ({label})"
    result["ok"] = bool(candidates) and all(v["ok"] for v in result["runtimes"].values())
    if extra:
        result.update(extra)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    v = rm["versions"]
    named = sum(n is not None for n in result["reference"]["identities"])
    print(f"reference: {v['machine']} {v['runtime']} {v['runtime_version']}, numpy {v['numpy']}; "
          f"{len(rm['images'])} images, {result['reference']['faces']} faces ({named} named), "
          f"{len(rm['crops'])} embedder crops; kernels: {', '.join(refs)}")
    print("max |int8 diff| in quantization steps (elements that differ / compared); tolerance "
          f"{tolerance}")
    head = f"{'candidate':<32} {'kernels':<9} {'runtime':<22} {'numpy':<7} {'faces':<6} {'identities':<10} result"
    print(head)
    for label, c in result["candidates"].items():
        if "raw" not in c:
            print(f"{label:<32} FAIL: {'; '.join(c['problems'])}")
            continue
        cv = c["versions"]
        f = c["faces"]
        same_ids = f["count_mismatches"] == 0 and f["identity_mismatches"] == 0
        print(f"{label:<32} {c['kernels']:<9} {cv['runtime'] + ' ' + cv['runtime_version']:<22} {cv['numpy']:<7} "
              f"{str(f.get('candidate_faces', f['faces'])):<6} {'same' if same_ids else 'DIFFER':<10} "
              f"{'PASS' if c['ok'] else 'FAIL'}")
        print("    " + ", ".join(f"{g} {_fmt_group(st)}" for g, st in c["raw"].items()))
        print(f"    boxes moved <= {f.get('max_box_shift_px')} px, landmarks <= {f.get('max_landmark_shift_px')} px")
    for label, c in result["candidates"].items():
        excused = result["runtimes"].get(c.get("versions", {}).get("runtime"), {}).get("ok") and not c["ok"]
        tag = "kernel rounding" if excused else "FAIL"
        for p in c["problems"][:20]:
            print(f"{tag} {label}: {p}", file=sys.stderr)
        if len(c["problems"]) > 20:
            print(f"{tag} {label}: ... {len(c['problems']) - 20} more in the report", file=sys.stderr)
    for label, c in (result.get("ops") or {}).get("candidates", {}).items():
        if "roles" not in c:
            print(f"single ops {label}: FAIL: {'; '.join(c['problems'])}")
            continue
        roles = ", ".join(f"{r}: {v['ops']} ops, {v['identical']} identical, max {v['max_diff']}"
                          for r, v in c["roles"].items())
        print(f"single ops {label} ({c['kernels']} kernels): {roles} -> {'PASS' if c['ok'] else 'FAIL'}")
        for p in c["problems"][:20]:
            print(f"FAIL single ops {label}: {p}", file=sys.stderr)
    for rt, verdict in result["runtimes"].items():
        print(f"{rt}: {'PASS' if verdict['ok'] else 'FAIL'} ({verdict['how']})")
    if out:
        print(f"report: {out}")
    print("arm64 proof: " + ("PASS" if result["ok"] else "FAIL"))
    return 0 if result["ok"] else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("images", help="print the fixed image list, relative to the data folder")
    s.add_argument("--data", type=Path, help="check that every image exists under this folder")
    s = sub.add_parser("models", help="print the int8 model files (and manifests) the default pipeline loads")
    s.add_argument("--models", type=Path, required=True)
    s = sub.add_parser("run", help="run the images through this platform's interpreter")
    s.add_argument("--models", type=Path, required=True)
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--inputs", type=Path, help="a reference run whose input tensors are fed to the interpreters")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--max-crops", type=int, help="raw embedder check on the first N faces only")
    s.add_argument("--kernels", choices=KERNELS, default="optimized",
                   help="optimized (deployed) or reference (portable, bit-exact across platforms, slow)")
    s = sub.add_parser("split", help="(x86, needs TensorFlow) one model per op of every int8 model, with "
                                     "the inputs each op sees on real images")
    s.add_argument("--models", type=Path, required=True)
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True, help="a folder")
    s = sub.add_parser("ops-run", help="run every single-op model of `split` on its recorded inputs")
    s.add_argument("--ops", type=Path, required=True, help="the folder written by split")
    s.add_argument("--out", type=Path, required=True, help="the raw outputs of every op (npz)")
    s.add_argument("--kernels", choices=KERNELS, default="optimized")
    s = sub.add_parser("compare", help="compare candidate runs with the reference run")
    s.add_argument("--reference", type=Path, action="append", required=True,
                   help="an x86 run; give one per kernels setting the candidates use")
    s.add_argument("--candidate", action="append", default=[], metavar="LABEL=FILE",
                   help="an arm64 run to judge (repeat); its kernels pick the --reference it is compared with")
    s.add_argument("--report", type=Path, help="write the whole comparison here (JSON)")
    s.add_argument("--tolerance", type=int, default=1, help="quantization steps (default 1)")
    s.add_argument("--extra", type=Path, help="a JSON object merged into the report (timings, disk use)")
    s.add_argument("--ops", type=Path, help="the folder written by split (for --ops-candidate)")
    s.add_argument("--ops-reference", type=Path, help="the x86 ops-run result")
    s.add_argument("--ops-candidate", action="append", default=[], metavar="LABEL=FILE",
                   help="an arm64 ops-run result (repeat); every op must be within --tolerance of the x86 one")
    a = p.parse_args(argv)
    for flag in ("reference", "inputs", "ops_reference"):
        for path in (getattr(a, flag, None) or []) if flag == "reference" else [getattr(a, flag, None)]:
            if path is not None and not path.is_file():
                p.error(f"--{flag.replace('_', '-')} {path}: no such file")
    if getattr(a, "ops", None) is not None and not (a.ops / "ops.json").is_file():
        p.error(f"--ops {a.ops}: no ops.json there (written by `check.py split`)")
    return run_cli(f"check.py {a.cmd}", _dispatch, p, a)  # a missing model / image folder: one line


def _dispatch(p: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    if a.cmd == "images":
        missing = []
        for _, rel, _ in image_list():
            print(rel)
            if a.data and not (a.data / rel).is_file():
                missing.append(rel)
        if missing:
            print(f"missing under {a.data}: {', '.join(missing)}", file=sys.stderr)
            return 1
        return 0
    if a.cmd == "models":
        for path in pipeline_models(a.models).values():
            print(path.name)
            print(path.with_suffix(".json").name)
        return 0
    if a.cmd == "run":
        meta = run(a.models, a.data, a.out, a.inputs, a.threads, a.max_crops, a.kernels)
        v = meta["versions"]
        print(f"{v['machine']} {v['runtime']} {v['runtime_version']} numpy {v['numpy']} opencv {v['opencv']}: "
              f"{len(meta['images'])} images, {sum(len(i['boxes']) for i in meta['images'])} faces, "
              f"{len(meta['crops'])} crops, {a.kernels} kernels, in {meta['seconds_total']} s -> {a.out}")
        return 0
    if a.cmd == "split":
        index = split(a.models, a.data, a.out)
        print(", ".join(f"{r}: {len(m['ops'])} ops x {m['samples']} samples" for r, m in index["models"].items())
              + f" -> {a.out}")
        return 0
    if a.cmd == "ops-run":
        meta = ops_run(a.ops, a.out, a.kernels)
        v = meta["versions"]
        print(f"{v['machine']} {v['runtime']} {v['runtime_version']}: single ops ({a.kernels} kernels) in "
              f"{meta['seconds']} s -> {a.out}")
        return 0

    def labelled(items, flag):
        out = {}
        for item in items:
            label, sep, path = item.partition("=")
            if not sep:
                p.error(f"{flag} wants LABEL=FILE, got {item!r}")
            out[label] = Path(path)
        return out

    candidates = labelled(a.candidate, "--candidate")
    ops_candidates = labelled(a.ops_candidate, "--ops-candidate")
    if ops_candidates and not (a.ops and a.ops_reference):
        p.error("--ops-candidate needs --ops and --ops-reference")
    extra = json.loads(a.extra.read_text()) if a.extra and a.extra.is_file() else None
    return report(a.reference, candidates, a.report, a.tolerance, extra, a.ops, a.ops_reference, ops_candidates)


if __name__ == "__main__":
    sys.exit(main())
