"""Integration: the real built models on real photos from ../shared/data."""

import numpy as np
import pytest

from edgeface import Gallery, read_image
from edgeface.blazeface import iou
from edgeface.embed import FaceEmbedder
from edgeface.manifest import read_manifest, resolve_models

from conftest import BBT, lfw_image

pytestmark = pytest.mark.slow


def test_index_and_manifests(models_dir, index):
    for precision in ("int8", "float32"):
        det, emb = resolve_models(models_dir, precision)
        for path in (det, emb):
            m = read_manifest(path)  # verifies sha256 too
            assert m["precision"] == precision and m["upstream"]["sha256"]
    det8, emb8 = resolve_models(models_dir, "int8")
    assert det8.stat().st_size <= 300 * 1024, "int8 detector must stay <= 300 KB"
    assert emb8.stat().st_size <= 8 * 1024 * 1024, "the default int8 embedder must fit the Edge TPU's ~8 MB cache"
    m = read_manifest(emb8)
    assert m["calibration"]["source"] == "lfw-devtrain"
    assert -1 < m["embedder"]["min_cosine_similarity"] < 1 and "LFW" in m["embedder"]["threshold_source"]
    # calibrated on the faces the device crops: with the folder's default detector configuration
    default = index.get("default_detector")
    assert f"detector {default}" in m["embedder"]["threshold_source"]
    assert f"detector {default}" in m["embedder"]["open_set_source"]


def test_every_op_of_int8_models_is_integer(models_dir):
    """uint8 input, then int8 all the way; the only float tensors are the outputs of the final DEQUANTIZE ops."""
    from ai_edge_litert.interpreter import Interpreter

    for path in resolve_models(models_dir, "int8"):
        it = Interpreter(str(path))
        ops = it._get_ops_details()
        (inp,) = it.get_input_details()
        outputs = {d["index"] for d in it.get_output_details()}
        assert inp["dtype"] == np.uint8 and ops[0]["op_name"] == "QUANTIZE", path.name
        dequantize = [o for o in ops if o["op_name"] == "DEQUANTIZE"]
        assert len(dequantize) == len(outputs) and all(set(o["outputs"]) <= outputs for o in dequantize), path.name
        assert all(it.get_output_details()[i]["dtype"] == np.float32 for i in range(len(outputs))), path.name
        float_tensors = [d["name"] for d in it.get_tensor_details()
                         if d["dtype"] == np.float32 and d["index"] not in outputs]
        assert not float_tensors, f"{path.name}: float tensors {float_tensors[:5]}"
        assert [o["op_name"] for o in ops].count("QUANTIZE") == 1, path.name


def test_int8_detector_matches_float_on_lfw(recognizer, float_recognizer, data_root):
    names = sorted(p.name for p in (data_root / "lfw" / "images_deepfunneled").iterdir() if p.is_dir())[:60]
    found_f = found_q = 0
    ious = []
    for name in names:
        image = read_image(lfw_image(name, 1))
        f = float_recognizer.detect(image)
        q = recognizer.detect(image)
        found_f += bool(f)
        found_q += bool(f) and bool(q)
        if f and q:
            ious.append(iou(f[0].box, q[0].box[None])[0])
    assert found_f >= 58
    assert found_q >= found_f - 1
    assert np.median(ious) >= 0.8


def test_faces_found_in_lfw_with_sane_keypoints(recognizer):
    image = read_image(lfw_image("Aaron_Peirsol", 1))
    faces = recognizer.detect(image)
    assert faces, "no face found"
    f = faces[0]
    cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
    assert abs(cx - 125) < 30 and abs(cy - 125) < 40  # deep-funneled faces are centred in 250x250
    eyes_y = f.keypoints[:2, 1].mean()
    assert eyes_y < f.keypoints[3, 1], "eyes must be above the mouth"
    assert f.keypoints[0, 0] < f.keypoints[1, 0], "subject's right eye is on the image's left"


def test_same_person_scores_above_different(recognizer):
    def emb(name, n):
        return recognizer.embed(read_image(lfw_image(name, n)), 1)[0][1]

    same = [emb("George_W_Bush", 1) @ emb("George_W_Bush", k) for k in (2, 3, 4)]
    same += [emb("Colin_Powell", 1) @ emb("Colin_Powell", k) for k in (2, 3)]
    diff = [emb("George_W_Bush", 1) @ emb(o, 1) for o in ("Colin_Powell", "Tony_Blair", "Hugo_Chavez")]
    assert min(same) > max(diff)
    assert min(same) > recognizer.min_cosine_similarity > max(diff)


def test_int8_embeddings_close_to_float(models_dir, data_root):
    _, e8 = resolve_models(models_dir, "int8")
    _, e32 = resolve_models(models_dir, "float32")
    q, f = FaceEmbedder(e8), FaceEmbedder(e32)
    assert q.space_id == f.space_id
    from edgeface.detect import FaceDetector

    det = FaceDetector(resolve_models(models_dir, "float32")[0])
    # held-out identities: DevTest people are never in the calibration set
    people = [l.split()[0] for l in (data_root / "lfw" / "peopleDevTest.txt").read_text().splitlines()[1:41]]
    cos = []
    for name in people:
        image = read_image(lfw_image(name, 1))
        faces = det.detect(image, 1)
        if faces:
            crop = f.crop(image, faces[0].box, faces[0].keypoints)
            cos.append(float(q.embed_crop(crop) @ f.embed_crop(crop)))
    assert len(cos) >= 35
    # MobileFaceNet int8 (QAT) keeps mean cosine ~0.97 to its float model (FaceNet int8 kept >= 0.98); the
    # remaining gap is a known miss of issue 10, see benchmarks/README.md "Embedder candidates"
    assert np.mean(cos) >= 0.95 and min(cos) >= 0.88


def test_equalize_option_recovers_dark_hazy_probes(models_dir, data_root):
    """The `enhance="equalize"` option measured by `edgeface bench preprocess`, on real pairs: a probe darkened
    and flattened (an unlit, hazy entrance) fails verification without it and passes with it."""
    from edgeface import evaluate
    from edgeface.benchmarks.preprocess_study import degrade
    from edgeface.recognizer import FaceRecognizer

    pairs = [p for p in evaluate.read_pairs(data_root / "lfw" / "pairsDevTest.txt") if p.same][:12]
    plain, equalized = FaceRecognizer(models_dir), FaceRecognizer(models_dir, enhance="equalize")
    with pytest.raises(ValueError, match="sharpen"):
        FaceRecognizer(models_dir, enhance="sharpen")
    passed = {"plain": 0, "equalized": 0}
    gain = []
    for p in pairs:
        enrolled = read_image(lfw_image(p.name1, p.n1))
        probe = degrade(read_image(lfw_image(p.name2, p.n2)), "dark_low_contrast")
        a, b = plain.verify(enrolled, probe), equalized.verify(enrolled, probe)
        passed["plain"] += a.same
        passed["equalized"] += b.same
        gain.append(b.similarity - a.similarity)
    # measured on these 12 pairs: the 'signed' MobileFaceNet int8 12 equalized, 10 plain, similarity +0.2 on
    # average (FaceNet int8 on the first 6: 6 equalized, 2 plain); the better the model, the fewer plain fail
    assert passed["equalized"] == len(pairs) and passed["plain"] < passed["equalized"], passed
    assert np.mean(gain) >= 0.08 and min(gain) > -0.05, np.round(gain, 3)


def test_lfw_devtest_quick_accuracy(recognizer):
    from edgeface.lfw import evaluate_lfw

    r = evaluate_lfw(recognizer, recognizer_lfw_root(), recognizer_lfw_root() / "pairsDevTest.txt", limit=200)
    assert r["pairs"] == 200
    assert r["accuracy_mean"] >= 0.93 and r["roc_auc"] >= 0.97
    assert r["images_without_face"] <= 2


def recognizer_lfw_root():
    from conftest import LFW

    return LFW


def test_gallery_names_people_in_group_photos(models_dir, tmp_path):
    from edgeface import FaceRecognizer

    recognizer = FaceRecognizer(models_dir, tiles=2)
    people = sorted(p.name for p in BBT.iterdir() if p.is_dir() and p.name != "group")
    assert len(people) == 8
    with Gallery(tmp_path / "bbt.db", recognizer.embedder_id, recognizer.embedder.dim) as g:
        for name in people:
            embs = []
            for photo in sorted((BBT / name).glob("*.png")):
                faces = recognizer.embed(read_image(photo), 1)
                if faces:
                    embs.append(faces[0][1])
            assert len(embs) >= 3, f"{name}: too few portraits with a face"
            g.enroll(name, np.stack(embs))
        named = {}
        for photo in sorted((BBT / "group").glob("*.jpg")):
            for ident in recognizer.identify(read_image(photo), g):
                if ident.name:
                    named.setdefault(photo.name, []).append(ident.name)
        total = sum(len(v) for v in named.values())
        distinct = {n for v in named.values() for n in v}
        # every group photo shows several cast members; each name at most once per photo
        assert total >= 8 and len(distinct) >= 5, named
        for photo, names in named.items():
            assert len(names) == len(set(names)), f"{photo}: a person named twice: {names}"


def test_reference_kernels_are_selectable_and_deterministic(models_dir, index, monkeypatch):
    """``kernels="reference"`` really swaps the kernels (the raw int8 outputs change on a real LFW photo)
    and gives the same integers again; the deployed kernels agree with it on which anchors are faces."""
    from edgeface import runtime
    from edgeface.detect import detector_input

    path = models_dir / index["int8"]["detector"]
    man = read_manifest(path)
    tensor, _ = detector_input(read_image(lfw_image("Colin_Powell", 1)), man["input"]["shape"][1],
                               man["input"]["mean"], man["input"]["std"])

    def raw(it):
        runtime.set_input(it, tensor)
        it.invoke()
        return runtime.get_output(it, runtime.output_index(it, man["outputs"]["scores"]))

    ref = raw(runtime.make_interpreter(path, threads=1, kernels="reference"))
    monkeypatch.setenv("EDGEFACE_KERNELS", "reference")
    again = raw(runtime.make_interpreter(path, threads=1))
    monkeypatch.delenv("EDGEFACE_KERNELS")
    optimized = raw(runtime.make_interpreter(path, threads=1))
    assert np.array_equal(ref, again)
    assert not np.array_equal(ref, optimized)  # else the option selected nothing
    faces_ref, faces_opt = ref.ravel() > 0, optimized.ravel() > 0  # logit > 0: score > 0.5
    assert faces_ref.sum() >= 2 and np.mean(faces_ref == faces_opt) > 0.99
    with pytest.raises(ValueError, match="kernels"):
        runtime.make_interpreter(path, kernels="fast")
    with pytest.raises(ValueError, match="edgetpu"):
        runtime.make_interpreter(path, kernels="reference", accelerator="edgetpu")


def test_set_pixels_gives_the_tensor_of_normalize_then_quantize(models_dir, index):
    """The lookup-table input path feeds every model of the build (int8 and float32 detectors, O-Net,
    embedders) exactly the tensor of the float path, on a real face crop, its mirror image and every value."""
    import cv2

    from edgeface import preprocess, runtime

    image = read_image(lfw_image("Colin_Powell", 1))
    files = sorted(p for p in models_dir.glob("*.tflite"))
    assert len(files) >= 6
    for path in files:
        man = read_manifest(path)
        it = runtime.make_interpreter(path, threads=1)
        detail = it.get_input_details()[0]
        h, w = (int(v) for v in detail["shape"][1:3])
        crop = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        every = np.resize(np.arange(256, dtype=np.uint8), crop.shape)
        for pixels in (crop, crop[:, ::-1], every):
            runtime.set_input(it, preprocess.normalize(pixels, man["input"]["mean"], man["input"]["std"])[None])
            want = it.get_tensor(detail["index"]).copy()
            runtime.set_pixels(it, pixels, man["input"]["mean"], man["input"]["std"])
            got = it.get_tensor(detail["index"])
            assert got.dtype == want.dtype and np.array_equal(got, want), path.name
        with pytest.raises(ValueError, match="uint8"):
            runtime.set_pixels(it, crop.astype(np.float32), man["input"]["mean"], man["input"]["std"])
        with pytest.raises(ValueError, match="shape"):
            runtime.set_pixels(it, crop[1:], man["input"]["mean"], man["input"]["std"])
