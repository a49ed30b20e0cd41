#!/usr/bin/env python3
"""arm64 proof, check script: run the int8 pipeline on a fixed list of real images, then compare platforms.

Runs unchanged on the x86 host and inside the arm64 (qemu-user) Raspberry Pi OS root. It uses only the
edgeface public API (``FaceRecognizer``, ``Gallery``, ``read_image``, ``edgeface.runtime``,
``edgeface.detect.detector_input``) and numpy::

    check.py images --data DATA                      # the fixed image list (paths relative to DATA)
    check.py run --models M --data DATA --out x86.npz                       # reference (x86)
    check.py run --models M --data DATA --inputs x86.npz --out arm64.npz    # same input tensors as x86
    check.py run ... --kernels reference                                    # portable reference kernels
    check.py compare --reference x86.npz [--reference x86-ref.npz] --candidate litert=arm64.npz [...] \
                     --report report.json

``run`` records, per image: the detector's quantized input tensor and its raw int8 outputs (boxes and
score logits, the integers the interpreter returns, never dequantized); for every face the reference found,
the embedder's quantized input crop and its raw int8 embedding; and the public pipeline's result: boxes
and identities against a gallery enrolled from the shared 8-person set (portraits 1-3 of each person;
portraits 4-5, the group photos and some LFW photos are identified). With ``--inputs`` the interpreters
are fed the reference's input tensors, so the raw outputs compare the interpreters alone; the pipeline
runs on this platform's own decoding and preprocessing.

A candidate passes when every raw int8 output tensor is within ``--tolerance`` (default 1) quantization
step of the reference run made with the same kernels, every image has the same number of faces, and every
face has the same identity.

Kernels: the runtimes' optimized kernels are platform code (x86 SIMD vs ARM NEON) and may round an op's
result one step differently. A deep int8 network can grow such a step (the int8 BlazeFace does, by tens of
steps). ``--kernels reference`` runs the portable reference kernels instead, which must give the same
integers on every platform. So a **runtime** passes ``compare`` when its optimized-kernel run passes, or
when its reference-kernel run passes and its optimized-kernel run differs only in values (raw steps, faces,
identities), not in models, CPU or errors: then the install computes exactly what x86 computes, and what is
left is the runtime's kernel rounding, which the report lists. The exit status is 1 if any runtime fails.
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


def _raw_run(interpreter, tensor: np.ndarray, forced: Optional[np.ndarray], out_names: list[str]):
    """Quantize ``tensor`` with the input's own parameters (or use ``forced``, a reference's quantized
    input), invoke, return ``(quantized input, [raw output integers])``."""
    from edgeface import runtime

    detail = interpreter.get_input_details()[0]
    runtime.set_input(interpreter, tensor)
    own = interpreter.get_tensor(detail["index"]).copy()
    if forced is not None:
        if forced.shape != own.shape or forced.dtype != own.dtype:
            raise ValueError(f"reference input {forced.dtype}{forced.shape} does not fit {own.dtype}{own.shape}")
        interpreter.set_tensor(detail["index"], forced)
    interpreter.invoke()
    outs = []
    for name in out_names:
        d = interpreter.get_output_details()[runtime.output_index(interpreter, name)]
        outs.append(interpreter.get_tensor(d["index"]).copy())
    return own, outs


KERNELS = ("optimized", "reference")


def run(models: Path, data: Path, out: Path, inputs: Optional[Path] = None, threads: int = 1,
        max_crops: Optional[int] = None, kernels: str = "optimized") -> dict:
    """Run the fixed images through this platform's interpreter; write ``out`` (npz) and return its meta.

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
        raise SystemExit(f"{inputs}: a run with {ref['meta'].get('kernels', 'optimized')} kernels; this run uses "
                         f"{kernels} kernels")
    images = image_list()
    if ref is not None and [i["path"] for i in ref["meta"]["images"]] != [p for _, p, _ in images]:
        raise SystemExit(f"{inputs}: recorded for another image list; rerun the reference")
    rec = FaceRecognizer(models, precision="int8", threads=threads)
    det, emb = rec.detector, rec.embedder
    det_outs = [det.manifest["outputs"]["boxes"], det.manifest["outputs"]["scores"]]
    emb_outs = [emb.manifest["outputs"]["embedding"]]
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"versions": _versions(), "cpu": cpu_features(), "threads": threads, "kernels": kernels,
                  "detector_sha256": det.manifest["sha256"], "embedder_sha256": emb.manifest["sha256"],
                  "threshold": rec.min_cosine_similarity, "images": [], "crops": [], "inputs_from": None}
    if ref is not None:
        meta["inputs_from"] = str(inputs)
        if (ref["meta"]["detector_sha256"], ref["meta"]["embedder_sha256"]) != (meta["detector_sha256"],
                                                                                meta["embedder_sha256"]):
            raise SystemExit(f"{inputs}: recorded with other models than {models}")
    decoded = {}
    # 1. raw detector outputs on the letterboxed full frame of every image
    t = time.perf_counter()
    for i, (kind, rel, person) in enumerate(images):
        image = decoded[rel] = read_image(data / rel)
        tensor, _ = detector_input(image, det.input_size, det.mean, det.std)
        forced = ref["arrays"][f"det_in:{i}"] if ref is not None else None
        own, (boxes, scores) = _raw_run(det.interpreter, tensor, forced, det_outs)
        arrays[f"det_in:{i}"], arrays[f"det_boxes:{i}"], arrays[f"det_scores:{i}"] = own, boxes, scores
    meta["seconds_detector_raw"] = round(time.perf_counter() - t, 2)
    _progress(f"raw detector on {len(images)} images: {meta['seconds_detector_raw']} s")

    # 2. the public pipeline: enroll portraits 1-3 of each person, identify everything else
    t = time.perf_counter()
    crops = []  # (image index, box, keypoints) of every face found, for the raw embedder check
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
            crops += [(i, f.box, f.keypoints) for f in faces]
            meta["images"].append(entry)
        meta["enrolled"] = {p.name: p.num_embeddings for p in gallery.people()}
    det.tiles = 1
    meta["seconds_pipeline"] = round(time.perf_counter() - t, 2)
    _progress(f"pipeline (enroll + identify, {len(crops)} faces): {meta['seconds_pipeline']} s")

    # 3. raw embedder outputs on the reference's face crops
    t = time.perf_counter()
    if ref is not None:
        n = min(len(ref["meta"]["crops"]), max_crops or len(ref["meta"]["crops"]))
        crop_meta = ref["meta"]["crops"][:n]
    else:
        crops = crops[:max_crops] if max_crops else crops
        n = len(crops)
        crop_meta = [{"image": i, "box": [float(v) for v in box]} for i, box, _ in crops]
    for j in range(n):
        if ref is not None:
            forced = ref["arrays"][f"emb_in:{j}"]
            tensor = np.zeros(forced.shape, np.float32)  # replaced by the reference's quantized crop
        else:
            i, box, kps = crops[j]
            crop = emb.crop(decoded[images[i][1]], box, kps)
            tensor, forced = normalize(crop, emb.mean, emb.std)[None], None
        own, (out_q,) = _raw_run(emb.interpreter, tensor, forced, emb_outs)
        arrays[f"emb_in:{j}"] = forced if forced is not None else own
        arrays[f"emb_out:{j}"] = out_q
    meta["crops"] = crop_meta
    meta["seconds_embedder_raw"] = round(time.perf_counter() - t, 2)
    _progress(f"raw embedder on {n} crops: {meta['seconds_embedder_raw']} s")
    meta["seconds_total"] = round(time.perf_counter() - t0, 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, meta=np.array(json.dumps(meta)), **{k.replace(":", "__"): v
                                                                   for k, v in arrays.items()})
    return meta


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


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
            problems.append(f"{key}: max |int8 difference| {m} > {tolerance} quantization step(s) "
                            f"({int(np.count_nonzero(diff > tolerance))} of {diff.size} elements)")
    for g, s in stats.items():
        if s["tensors"] == 0:
            problems.append(f"{g}: no tensors to compare")
    return {"ok": not problems, "problems": problems, "groups": stats}


def _iou(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def compare_faces(reference: list[dict], candidate: list[dict], min_iou: float = 0.5) -> dict:
    """Compare per-image pipeline results (``{"path", "boxes", "names"}``): same number of faces, and
    each reference face paired (greedily, best IoU first) with a candidate face of the same identity.

    Returns ``{"ok", "problems", "images", "faces", "min_iou", "max_box_shift_px"}``.
    """
    problems: list[str] = []
    faces, ious, shifts, count_mismatches, name_mismatches = 0, [], [], 0, 0
    if [r["path"] for r in reference] != [c["path"] for c in candidate]:
        return {"ok": False, "problems": ["the image lists differ"], "images": 0, "faces": 0,
                "count_mismatches": None, "identity_mismatches": None, "min_iou": None, "max_box_shift_px": None}
    for r, c in zip(reference, candidate):
        faces += len(r["boxes"])
        if r.get("error") != c.get("error"):
            problems.append(f"{r['path']}: reference {r.get('error') or 'ok'}, candidate {c.get('error') or 'ok'}")
        if len(r["boxes"]) != len(c["boxes"]):
            problems.append(f"{r['path']}: {len(r['boxes'])} faces on the reference, {len(c['boxes'])} on the candidate")
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
                problems.append(f"{r['path']}: face {i} has no candidate box with IoU >= {min_iou} (best {iou:.2f})")
                name_mismatches += 1
                continue
            ious.append(iou)
            shifts.append(float(np.max(np.abs(np.subtract(r["boxes"][i], c["boxes"][j])))))
            if r["names"][i] != c["names"][j]:
                name_mismatches += 1
                problems.append(f"{r['path']}: face {i} is {r['names'][i]!r} on the reference, "
                                f"{c['names'][j]!r} on the candidate")
    return {"ok": not problems, "problems": problems, "images": len(reference), "faces": faces,
            "count_mismatches": count_mismatches, "identity_mismatches": name_mismatches,
            "min_iou": round(min(ious), 4) if ious else None,
            "max_box_shift_px": round(max(shifts), 3) if shifts else None}


def compare(reference: dict, candidate: dict, tolerance: int = 1) -> dict:
    """Everything ``compare`` checks for one candidate run against the reference run (both from :func:`_load`)."""
    rm, cm = reference["meta"], candidate["meta"]
    problems = []
    if (rm["detector_sha256"], rm["embedder_sha256"]) != (cm["detector_sha256"], cm["embedder_sha256"]):
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
    raw = compare_int8(ref_arrays, candidate["arrays"], tolerance)
    faces = compare_faces(rm["images"], cm["images"])
    own_in = compare_int8(reference["arrays"], candidate["arrays"], 255, ("det_in",))["groups"]["det_in"]
    problems += raw["problems"] + faces["problems"]
    # what differs only in values (steps, faces, identities), as kernel rounding would; anything else
    # (models, CPU, kernels, missing tensors, errors) is never excused by a reference-kernel pass
    values_only = all(p in raw["problems"] and "max |int8 difference|" in p
                      or p in faces["problems"] and ("faces on the reference" in p or "on the candidate" in p
                                                     or "has no candidate box" in p)
                      for p in problems)
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
        else:
            ok, how = False, ("optimized kernels out of tolerance" +
                              ("" if ref else " and no reference-kernel run") if all(c["values_only"] for c in opt)
                              else "optimized run differs in more than values")
        out[rt] = {"ok": ok, "how": how, "candidates": sorted(cs)}
    return out


def report(references: list[Path], candidates: dict[str, Path], out: Optional[Path], tolerance: int = 1,
           extra: Optional[dict] = None) -> int:
    """Compare every candidate with the reference run of the same kernels; print a table, write ``out``."""
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
    head = f"{'candidate':<28} {'kernels':<9} {'runtime':<22} {'numpy':<7} {'det boxes':<18} {'det scores':<16} " \
           f"{'embeddings':<14} {'faces':<6} {'identities':<10} result"
    print(head)
    for label, c in result["candidates"].items():
        if "raw" not in c:
            print(f"{label:<28} FAIL: {'; '.join(c['problems'])}")
            continue
        cv = c["versions"]
        f = c["faces"]
        same_ids = f["count_mismatches"] == 0 and f["identity_mismatches"] == 0
        print(f"{label:<28} {c['kernels']:<9} {cv['runtime'] + ' ' + cv['runtime_version']:<22} {cv['numpy']:<7} "
              f"{_fmt_group(c['raw']['det_boxes']):<18} {_fmt_group(c['raw']['det_scores']):<16} "
              f"{_fmt_group(c['raw']['emb_out']):<14} {str(f['faces']):<6} "
              f"{'same' if same_ids else 'DIFFER':<10} {'PASS' if c['ok'] else 'FAIL'}")
    for label, c in result["candidates"].items():
        excused = result["runtimes"].get(c.get("versions", {}).get("runtime"), {}).get("ok") and not c["ok"]
        tag = "kernel rounding" if excused else "FAIL"
        for p in c["problems"][:20]:
            print(f"{tag} {label}: {p}", file=sys.stderr)
        if len(c["problems"]) > 20:
            print(f"{tag} {label}: ... {len(c['problems']) - 20} more in the report", file=sys.stderr)
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
    s = sub.add_parser("run", help="run the images through this platform's interpreter")
    s.add_argument("--models", type=Path, required=True)
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--inputs", type=Path, help="a reference run whose input tensors are fed to the interpreters")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--max-crops", type=int, help="raw embedder check on the first N faces only")
    s.add_argument("--kernels", choices=KERNELS, default="optimized",
                   help="optimized (deployed) or reference (portable, bit-exact across platforms, slow)")
    s = sub.add_parser("compare", help="compare candidate runs with the reference run")
    s.add_argument("--reference", type=Path, action="append", required=True,
                   help="an x86 run; give one per kernels setting the candidates use")
    s.add_argument("--candidate", action="append", default=[], metavar="LABEL=FILE")
    s.add_argument("--report", type=Path)
    s.add_argument("--tolerance", type=int, default=1, help="quantization steps (default 1)")
    s.add_argument("--extra", type=Path, help="a JSON object merged into the report (timings, disk use)")
    a = p.parse_args(argv)
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
    if a.cmd == "run":
        meta = run(a.models, a.data, a.out, a.inputs, a.threads, a.max_crops, a.kernels)
        v = meta["versions"]
        print(f"{v['machine']} {v['runtime']} {v['runtime_version']} numpy {v['numpy']} opencv {v['opencv']}: "
              f"{len(meta['images'])} images, {sum(len(i['boxes']) for i in meta['images'])} faces, "
              f"{len(meta['crops'])} crops, {a.kernels} kernels, in {meta['seconds_total']} s -> {a.out}")
        return 0
    candidates = {}
    for item in a.candidate:
        label, sep, path = item.partition("=")
        if not sep:
            p.error(f"--candidate wants LABEL=FILE, got {item!r}")
        candidates[label] = Path(path)
    extra = json.loads(a.extra.read_text()) if a.extra and a.extra.is_file() else None
    return report(a.reference, candidates, a.report, a.tolerance, extra)


if __name__ == "__main__":
    sys.exit(main())
