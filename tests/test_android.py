"""Android readiness of the built models, tried as an app developer would.

* MediaPipe Tasks (``mediapipe`` wheel: its Python Tasks run the same C++ task graphs as Android) load the int8
  models: ``FaceDetector`` finds the faces ``edgeface detect`` finds, ``ImageEmbedder`` on edgeface's own crops
  gives FaceRecognizer's embeddings and decisions;
* tflite-support's ``MetadataDisplayer`` reads the metadata ``edgeface build`` wrote into every model, and it
  says what the manifest says;
* the core runtime is quantization-exact across the two int8 interfaces (uint8 in / float32 out against the
  int8-tensor twin).

mediapipe and tflite-support run in side venvs (tests/venvs.py: built once, cached under .cache/venvs).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import venvs  # tests/venvs.py (pytest puts tests/ on sys.path)

from edgeface import FaceRecognizer, evaluate
from edgeface.detect import BoxTransform
from edgeface.embed import l2_normalize
from edgeface.lfw import crop_files, pair_files, pair_scores
from edgeface.manifest import read_manifest

pytestmark = pytest.mark.slow
SIDECAR = Path(__file__).parent / "sidecar"
PAIRS = "pairsDevTest.txt"


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def dev_test(data_root):
    lfw = data_root / "lfw"
    pairs = evaluate.first_pairs(evaluate.read_pairs(lfw / PAIRS), 200)
    return lfw, pairs


#: Score band above the detection threshold where the int8 detector's score is unstable: MediaPipe resamples
#: the frame with its own warp, and on a face cut by the image border that moves an int8 score by up to 0.18
#: (0.03 for the float model on the same images).
BORDERLINE = 0.15


def _detect_both(models_dir, model, images, min_score, iou_threshold, precision, spec):
    r = subprocess.run([sys.executable, "-m", "edgeface.cli", "detect", "--models", str(models_dir), "--json",
                        "--precision", precision, "--detector", spec, *map(str, images)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ours = {json.loads(line)["image"]: [(f["box"], f["score"]) for f in json.loads(line)["faces"]]
            for line in r.stdout.splitlines() if line.startswith("{")}
    assert len(ours) == len(images)
    theirs = venvs.run_json("mediapipe", SIDECAR / "mediapipe_tasks.py", {"detector": {
        "model": str(model), "images": [str(p) for p in images], "min_score": min_score - BORDERLINE,
        "iou_threshold": iou_threshold}})["detections"]
    # a full-range manifest maps its boxes onto the short-range geometry (detector.box_transform): an app
    # does the same with MediaPipe's boxes before cropping, so compare mapped boxes
    transform = BoxTransform.from_manifest(read_manifest(model)["detector"].get("box_transform"), str(model))
    if transform is not None:
        theirs = {path: [[*transform.apply(np.array(f[:4], np.float32)).tolist(), f[4]] for f in found]
                  for path, found in theirs.items()}
    matches, extra = [], 0  # (image, edgeface score, MediaPipe score or None, IoU)
    for path, faces in ours.items():
        found = theirs[path]
        for box, score in faces:
            best = max(found, key=lambda f: _iou(box, f[:4]), default=None)
            hit = best is not None and _iou(box, best[:4]) >= 0.5
            matches.append((Path(path).name, score, best[4] if hit else None, _iou(box, best[:4]) if hit else 0.0))
        extra += sum(1 for f in found if f[4] >= min_score and all(_iou(b, f[:4]) < 0.5 for b, _ in faces))
    return matches, extra


@pytest.mark.parametrize("spec, precision", [("short_range", "int8"), ("short_range", "float32"),
                                             ("full_range", "int8")])
def test_mediapipe_face_detector_finds_the_faces_edgeface_detect_finds(models_dir, index, dev_test, spec, precision,
                                                                       tmp_path):
    """MediaPipe's FaceDetector on 100 whole LFW photos (it letterboxes and resamples them itself)."""
    lfw, pairs = dev_test
    images = pair_files(pairs, lfw)[:100]
    model = models_dir / index["detectors"][spec][precision]
    section = read_manifest(model)["detector"]
    thr = section["min_score"]
    matches, extra = _detect_both(models_dir, model, images, thr, section["iou_threshold"], precision, spec)
    assert len(matches) >= 100, "every LFW image has its subject"
    ious = [m[3] for m in matches if m[2] is not None and m[2] >= thr]
    missed = [m for m in matches if m[2] is None or m[2] < thr]
    assert np.median(ious) >= 0.9, f"median IoU {np.median(ious):.3f} over {len(ious)} faces"
    assert extra <= 0.02 * len(matches), f"MediaPipe found {extra} faces edgeface did not ({len(matches)} faces)"
    if precision == "float32":
        assert not missed, f"MediaPipe missed {len(missed)} of {len(matches)} faces: {missed}"
        return
    # int8: no clear face is missed; a borderline one (edgeface score < threshold + BORDERLINE, e.g. a face cut
    # by the image border) may score below the threshold in MediaPipe, but MediaPipe still sees it
    assert all(m[1] < thr + BORDERLINE for m in missed), f"clear faces missed: {missed}"
    assert all(m[2] is not None for m in missed), f"faces MediaPipe does not see at all: {missed}"
    assert len(missed) <= 0.02 * len(matches), f"{len(missed)} of {len(matches)} faces missed: {missed}"


@pytest.mark.parametrize("precision", ["int8", "float32"])
def test_mediapipe_image_embedder_matches_face_recognizer(models_dir, index, dev_test, tmp_path, precision):
    """int8: uint8 pixels in, float32 out. float32: MediaPipe normalizes with the metadata's mean/std."""
    lfw, pairs = dev_test
    # the model itself, one run per crop: an app that follows the manifest's "flip" embeds the mirrored crop
    # too and averages, exactly as FaceEmbedder does (tests/test_alignment_openset.py)
    rec = FaceRecognizer(models_dir, precision=precision, flip=False)
    files = pair_files(pairs, lfw)
    crops = crop_files(rec.detect, files, rec.embedder.section["crop"], landmarker=rec.embedder.landmarker)
    assert all(c is not None for c in crops.values()), "a face was not found"
    ours = {p: rec.embedder.embed_crop(c) for p, c in crops.items()}
    np.savez(tmp_path / "crops.npz", crops=np.stack([crops[p] for p in files]))
    result = venvs.run_json("mediapipe", SIDECAR / "mediapipe_tasks.py", {"embedder": {
        "model": str(models_dir / index[precision]["embedder"]), "crops": str(tmp_path / "crops.npz"),
        "out": str(tmp_path / "embeddings.npz")}})
    theirs = dict(zip(files, np.load(result["embeddings"])["embeddings"]))
    assert theirs[files[0]].shape == ours[files[0]].shape
    np.testing.assert_allclose([np.linalg.norm(v) for v in theirs.values()], 1.0, atol=1e-4)  # l2_normalize
    # the app then centres each run as the manifest says: normalize(embedding - embedding_mean)
    centre = np.asarray(rec.embedder.section["embedding_mean"], np.float32)
    theirs = {p: l2_normalize(v - centre) for p, v in theirs.items()}
    cos = np.array([float(np.dot(ours[p], theirs[p])) for p in files])
    threshold = rec.embedder.min_cosine_similarity
    a, b = pair_scores(pairs, ours, lfw), pair_scores(pairs, theirs, lfw)
    flips = int(((a >= threshold) != (b >= threshold)).sum())
    print(f"cosine min {cos.min():.4f} median {np.median(cos):.4f}, {flips} flips")
    # int8: the manifest's normalization (x - 128) / 128 is exactly the uint8 input's quantization, so MediaPipe
    # (raw pixels) and edgeface (normalize, then quantize) feed the same codes to the same int8 kernels
    assert cos.min() >= (0.999 if precision == "int8" else 0.99), \
        f"cosine MediaPipe vs FaceRecognizer: min {cos.min():.4f}, median {np.median(cos):.4f}"
    assert len(pairs) == 200 and flips <= (0 if precision == "int8" else 2), \
        f"{flips} of 200 decisions differ at {threshold}"


def test_core_runtime_is_quantization_exact_across_the_two_int8_interfaces(models_dir, index, dev_test, tmp_path):
    """FaceRecognizer on the uint8-in / float32-out models and on their int8-tensor twins: identical numbers."""
    from edgeface.converters import quantize, variants

    lfw, pairs = dev_test
    twins = {}
    for role in ("detector", "embedder"):
        src = models_dir / index["int8"][role]
        for f in (src, src.with_suffix(".json")):
            shutil.copyfile(f, tmp_path / f.name)
        twins[role] = variants.build_int8_io(tmp_path / src.name)
        assert quantize.interface(twins[role])["input"] == "int8"
    a = FaceRecognizer(models_dir, precision="int8")
    # the twins sit in a folder without models.json: name the same landmark model explicitly
    b = FaceRecognizer(detector_path=twins["detector"], embedder_path=twins["embedder"],
                       landmarks_path=models_dir / index["landmarks"]["onet"]["int8"])
    assert a.embedder.alignment == b.embedder.alignment == "five-point landmark model"
    from edgeface import read_image

    for path in pair_files(pairs, lfw)[:12]:
        img = read_image(path)
        fa, fb = a.embed(img), b.embed(img)
        assert len(fa) == len(fb) >= 1
        for (face_a, emb_a), (face_b, emb_b) in zip(fa, fb):
            np.testing.assert_array_equal(face_a.box, face_b.box)
            assert face_a.score == face_b.score
            np.testing.assert_array_equal(emb_a, emb_b)


def test_metadata_displayer_reads_every_model_and_it_matches_the_manifest(models_dir, index):
    from ai_edge_litert.interpreter import Interpreter

    from edgeface.converters import common

    models = common.index_models(models_dir)
    assert len(models) >= 8  # float32 and int8 of two detectors, the landmark model and the embedder
    assert {read_manifest(m)["role"] for m in models} == {"detector", "landmarks", "embedder"}
    shown = venvs.run_json("tflite-support", SIDECAR / "metadata_displayer.py",
                           {"models": [str(m) for m in models]})
    for model in models:
        manifest = read_manifest(model)  # the sha256 was updated after the metadata was written
        md, custom = shown[str(model)]["metadata"], shown[str(model)]["custom"]
        assert manifest["family"] in md["name"] and manifest["precision"] in md["name"], md["name"]
        assert md["license"] == manifest["license"] and md["author"] == "edgeface"
        (sg,) = md["subgraph_metadata"]
        (inp,) = sg["input_tensor_metadata"]
        _, h, w, c = manifest["input"]["shape"]
        props = inp["content"]["content_properties"]
        assert inp["content"]["content_properties_type"] == "ImageProperties" and props["color_space"] == "RGB"
        assert props["default_size"] == {"width": w, "height": h}
        (unit,) = inp["process_units"]
        assert unit["options_type"] == "NormalizationOptions"
        assert unit["options"] == {"mean": [manifest["input"]["mean"]] * c, "std": [manifest["input"]["std"]] * c}
        names = {v: k for k, v in manifest["outputs"].items()}
        order = [names[d["name"]] for d in Interpreter(str(model)).get_output_details()]
        assert [o["name"] for o in sg["output_tensor_metadata"]] == order
        assert all(o["description"] for o in sg["output_tensor_metadata"])
        embedded = json.loads(custom["edgeface_manifest"])
        assert embedded == {k: v for k, v in manifest.items() if k not in ("sha256", "model_file")}
        if manifest["role"] in ("embedder", "landmarks"):  # the crop the model must be fed travels with it
            crop = manifest[manifest["role"]]["crop"]
            recipe = json.dumps({k: v for k, v in crop.items() if k != "source"})
            assert crop["method"] in inp["description"] and recipe in inp["description"]
        if manifest["role"] == "landmarks":  # what each output means, from the manifest
            meaning = manifest["landmarks"]["output_meaning"]
            assert [o["description"] for o in sg["output_tensor_metadata"]] == [meaning[k] for k in order]
        if manifest["input"]["dtype"] == "uint8":
            assert "feed the RGB pixels 0..255 as they are" in inp["description"]
