"""Landmark alignment (the embedder crop recipe) and open-set operating points: pure functions first, then
the real MobileFaceNet upstream file, the built default models and a real LFW photo."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeface import preprocess
from edgeface.embed import (
    ARCFACE_TEMPLATE_112,
    KEYPOINT_NAMES,
    OpenSetPoint,
    face_crop,
    landmark_recipe,
    open_set_point,
)

from conftest import lfw_image

TEMPLATE = np.array(ARCFACE_TEMPLATE_112, np.float32)


def _similar(points: np.ndarray, angle: float, scale: float, shift) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return (points @ (scale * np.array([[c, -s], [s, c]])).T + np.asarray(shift)).astype(np.float32)


# --------------------------------------------------------------------------- alignment (pure)
def test_landmark_recipe_fields_and_validation():
    r = landmark_recipe(fallback={"method": "box_margin", "margin": 0.2, "size": 112}, source="test")
    assert r["method"] == "landmarks" and r["size"] == 112 and r["source"] == "test"
    assert r["points"] == ["right_eye", "left_eye", "nose_tip", "mouth_center"]
    assert len(r["template"]) == 4 and r["template"][3] == [56.1396, 92.2848]  # mouth corners averaged
    assert json.loads(json.dumps(r)) == r  # goes into a JSON manifest as is
    with pytest.raises(ValueError, match="unknown keypoints.*chin"):
        landmark_recipe(points=("right_eye", "chin"), template=((1, 2), (3, 4)))
    with pytest.raises(ValueError, match="as many template points"):
        landmark_recipe(points=("right_eye", "left_eye"), template=((1, 2),))


@pytest.mark.parametrize("angle,scale,shift", [(0.0, 1.0, (0, 0)), (0.3, 2.5, (140, 60)), (-0.5, 0.7, (20, 90))])
def test_landmark_crop_puts_the_keypoints_on_the_template(angle, scale, shift):
    """Keypoints that are an exact similarity of the template come out exactly on it (Umeyama fit)."""
    pts = _similar(TEMPLATE, angle, scale, shift)
    m = preprocess.similarity_transform(pts, TEMPLATE)
    mapped = np.hstack([pts, np.ones((4, 1), np.float32)]) @ m.T
    np.testing.assert_allclose(mapped, TEMPLATE, atol=1e-3)
    # and the crop really samples the image there: a white dot on each keypoint lands on the template
    image = np.zeros((400, 400, 3), np.uint8)
    for x, y in pts:
        image[int(round(y)) - 2:int(round(y)) + 3, int(round(x)) - 2:int(round(x)) + 3] = 255
    kps = np.vstack([pts, [[0, 0], [1, 1]]])  # six BlazeFace keypoints; the ears are not used
    crop = face_crop(image, np.array([0, 0, 10, 10.0]), kps, landmark_recipe())
    assert crop.shape == (112, 112, 3)
    for x, y in TEMPLATE:
        assert crop[int(round(y)), int(round(x))].max() > 100


def test_landmark_crop_uses_the_named_keypoints_in_order():
    """Swapping the two eyes mirrors the face: the recipe's point names fix which keypoint goes where."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    pts = _similar(TEMPLATE, 0.1, 1.8, (60, 40))
    kps = np.vstack([pts, [[0, 0], [1, 1]]])
    recipe = landmark_recipe()
    a = face_crop(image, None, kps, recipe)
    swapped = kps.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert not np.array_equal(a, face_crop(image, None, swapped, recipe))
    reordered = dict(recipe, points=["left_eye", "right_eye", "nose_tip", "mouth_center"],
                     template=[recipe["template"][1], recipe["template"][0]] + recipe["template"][2:])
    np.testing.assert_array_equal(a, face_crop(image, None, kps, reordered))
    assert KEYPOINT_NAMES.index("mouth_center") == 3


def test_landmark_crop_without_keypoints_uses_the_box_fallback_or_fails():
    image = np.full((200, 200, 3), 90, np.uint8)
    box = np.array([50, 50, 150, 150], np.float32)
    fallback = {"method": "box_rect", "width": 1.282, "height": 1.282, "shift_y": -0.2, "size": 112}
    crop = face_crop(image, box, None, landmark_recipe(fallback=fallback))
    np.testing.assert_array_equal(crop, face_crop(image, box, None, fallback))
    with pytest.raises(ValueError, match="needs keypoints"):
        face_crop(image, box, None, landmark_recipe())
    with pytest.raises(ValueError, match="shape"):
        face_crop(image, box, np.zeros((2, 2)), landmark_recipe())


# --------------------------------------------------------------------------- open-set points (pure)
POINTS = {"fpir_0.01@10": {"min_cosine_similarity": 0.30}, "fpir_0.01@100": {"min_cosine_similarity": 0.36},
          "fpir_0.01@1000": {"min_cosine_similarity": 0.42}, "far_0.001": {"min_cosine_similarity": 0.33}}


@pytest.mark.parametrize("size,name", [(1, "fpir_0.01@10"), (10, "fpir_0.01@10"), (11, "fpir_0.01@100"),
                                       (158, "fpir_0.01@1000"), (1000, "fpir_0.01@1000")])
def test_open_set_point_picks_the_smallest_calibrated_gallery_that_covers_the_enrolled(size, name):
    p = open_set_point(POINTS, "fpir_0.01", size)
    assert isinstance(p, OpenSetPoint) and p.name == name
    assert p.min_cosine_similarity == POINTS[name]["min_cosine_similarity"] and str(size) in p.reason


def test_open_set_point_beyond_the_largest_gallery_or_named_or_missing():
    p = open_set_point(POINTS, "fpir_0.01", 5000)
    assert p.name == "fpir_0.01@1000" and "higher than 0.01" in p.reason
    assert open_set_point(POINTS, "fpir_0.01@100", 5000).min_cosine_similarity == 0.36
    with pytest.raises(KeyError, match="fpir_0.001"):
        open_set_point(POINTS, "fpir_0.001", 10)
    with pytest.raises(KeyError, match="fpir_0.01@50"):
        open_set_point(POINTS, "fpir_0.01@50", 10)


def test_open_set_thresholds_from_scores():
    pytest.importorskip("tensorflow")
    from edgeface.converters.openset import thresholds_from_scores

    distractors = np.linspace(0.0, 0.99, 100)  # best gallery score of 100 strangers
    own = np.array([0.99, 0.985, 0.5, 0.2])
    other = np.array([0.1, 0.99, 0.1, 0.1])  # the second probe's best match is someone else
    out = thresholds_from_scores(distractors, own, other, rates=(0.01, 0.5))
    assert out[0.01]["fpir"] == 0.01 and 0.98 < out[0.01]["min_cosine_similarity"] <= 0.99
    assert out[0.01]["fnir"] == 0.75  # 0.99 found; 0.985 loses to another entry; 0.5 and 0.2 below
    assert out[0.5]["fpir"] == 0.5 and out[0.5]["fnir"] == 0.5  # now 0.5 is found too (threshold ~0.49)
    assert out[0.5]["min_cosine_similarity"] < out[0.01]["min_cosine_similarity"]


def test_open_set_protocol_nests_galleries_and_keeps_distractors_apart():
    pytest.importorskip("tensorflow")
    from edgeface.converters.openset import protocol

    people = [(f"p{i}", 1 + i % 3) for i in range(400)]
    roles = protocol(people, sizes=(10, 100), distractors=50)
    gallery = [n for n, _ in roles["gallery"]]
    assert len(gallery) == 100 and len(set(gallery)) == 100
    assert {n for n, _ in roles["distractors"]}.isdisjoint(gallery) and len(roles["distractors"]) == 50
    counts = dict(people)
    assert all(counts[n] >= 2 for n in gallery[:10])  # the small galleries have mated probes
    assert {n for n, _ in roles["mated"]} == {n for n in gallery if counts[n] >= 2}
    assert roles == protocol(people, sizes=(10, 100), distractors=50)  # seeded
    with pytest.raises(ValueError, match="1000-person"):
        protocol(people, sizes=(1000,))


# --------------------------------------------------------------------------- device: naming open-set points
class _Embedder:
    section = {"min_cosine_similarity": 0.25, "operating_points": POINTS}


def test_device_resolves_fpir_operating_points_for_the_gallery_size():
    from edgeface.device import config as C
    from edgeface.device.threshold import ThresholdError, manifest_threshold

    assert manifest_threshold(_Embedder, "fpir_0.01", 8) == 0.30
    assert manifest_threshold(_Embedder, "fpir_0.01", 158) == 0.42
    assert manifest_threshold(_Embedder, "fpir_0.01") == 0.42  # gallery unknown: the strictest
    assert manifest_threshold(_Embedder, "fpir_0.01@100", 8) == 0.36
    with pytest.raises(ThresholdError, match="rebuild"):
        manifest_threshold(_Embedder, "fpir_0.001", 8)
    cfg = C.from_dict({"recognition": {"operating_point": "fpir_0.01@100"}})
    assert cfg.recognition.operating_point == "fpir_0.01@100"
    assert C.from_dict({"recognition": {"operating_point": "fpir_0.01"}}).recognition.operating_point == "fpir_0.01"
    with pytest.raises(C.ConfigError, match="operating_point"):
        C.from_dict({"recognition": {"operating_point": "fpir_0.5"}})


# --------------------------------------------------------------------------- the real upstream model
@pytest.fixture(scope="module")
def mobilefacenet_file():
    pytest.importorskip("tensorflow")
    from edgeface.converters import mobilefacenet
    from edgeface.paths import cache_root

    return mobilefacenet.upstream_file(cache_root())


@pytest.mark.slow
@pytest.mark.parametrize("style,equalize", [("signed", True), ("signed", False), ("relu_split", True),
                                            ("negative_part", True), ("prelu", False)])
def test_mobilefacenet_rebuild_matches_the_upstream_tflite(mobilefacenet_file, data_root, style, equalize):
    """The tf_keras rebuild (batch 1, PReLU rewritten, channels equalized or not) computes what the batch-2
    upstream TFLite computes."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeface.converters import mobilefacenet
    from edgeface.converters.tflite_rebuild import op_names

    image = preprocess.read_image(lfw_image("Aaron_Peirsol", 1))
    crops = np.stack([preprocess.crop_box(image, [70, 80, 180, 190], 112, 0.2),
                      preprocess.crop_box(image, [60, 70, 190, 200], 112, 0.1)])
    x = preprocess.normalize(crops, 127.5, 128.0)
    it = Interpreter(str(mobilefacenet_file))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    ref = it.get_tensor(it.get_output_details()[0]["index"])
    scales = None
    if equalize:
        from edgeface.converters.tflite_rebuild import prelu_channel_scales

        scales = prelu_channel_scales(mobilefacenet_file, x)
        assert len(scales) == 33  # every PReLU sits between two rescalable convolutions
        spread = [float(s.max() / s.min()) for s in scales.values()]
        assert max(spread) > 20  # what equalization is for: channel ranges that differ by 20x and more
    model = mobilefacenet.keras_model(mobilefacenet_file, prelu=style, channel_scales=scales)
    assert model.input_shape == (1, 112, 112, 3) and model.output_shape == (1, 192)
    got = np.concatenate([model(x[i:i + 1], training=False).numpy() for i in range(2)])
    np.testing.assert_allclose(got, ref, atol=1e-3 * np.abs(ref).max())
    names = {type(layer).__name__ for layer in model.layers}
    assert ("PReLU" in names) == (style == "prelu")
    if style == "signed":  # one 1x1 depthwise (a fused ReLU) and an Add per PReLU, nothing else added
        depthwise_1x1 = [la for la in model.layers if la.name.endswith("_negpart")]
        assert len(depthwise_1x1) == 33 and sum(la.name.endswith("_add") for la in model.layers) >= 33
    from tensorflow.lite.tools import flatbuffer_utils

    assert op_names(flatbuffer_utils.read_model(str(mobilefacenet_file))).count("ABS") == 33  # 33 PReLUs


def test_signed_prelu_block_refuses_slopes_above_one_without_the_producer_flip():
    """``x + relu((a - 1) x)`` is a PReLU only where a <= 1; a lone block cannot flip its producer's sign."""
    pytest.importorskip("tensorflow")
    import tf_keras as keras

    from edgeface.converters.tflite_rebuild import prelu_block

    x = keras.Input((2, 2, 3), batch_size=1)
    slopes = np.array([0.25, -2.0, 0.5], np.float32)
    model = keras.Model(x, prelu_block(x, slopes, "p", style="signed"))
    v = np.linspace(-3, 3, 12, dtype=np.float32).reshape(1, 2, 2, 3)
    np.testing.assert_allclose(model(v).numpy(), np.where(v > 0, v, slopes * v), atol=1e-6)
    with pytest.raises(ValueError, match="slope is > 1"):
        prelu_block(x, np.array([0.25, 2.0, 0.5], np.float32), "q", style="signed")


# --------------------------------------------------------------------------- the built default models
@pytest.mark.slow
def test_default_embedder_manifest_records_the_landmark_recipe_and_open_set_points(models_dir, index):
    from edgeface.manifest import read_manifest

    for precision in ("int8", "float32"):
        m = read_manifest(models_dir / index[precision]["embedder"])
        assert m["family"] == "mobilefacenet" and m["embedder"]["embedding_size"] == 192
        crop = m["embedder"]["crop"]
        # five ArcFace points from the landmark model; without one, the detector's four; without keypoints, a box
        assert crop["method"] == "landmarks" and crop["size"] == 112 and len(crop["template"]) == 5
        assert crop["points"] == ["right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
        four = crop["fallback"]
        assert four["points"] == ["right_eye", "left_eye", "nose_tip", "mouth_center"] and len(four["template"]) == 4
        assert four["fallback"]["method"] == "box_rect"
        assert m["input"]["shape"] == [1, 112, 112, 3] and m["upstream"]["registry"] == "npm"
        pts = m["embedder"]["operating_points"]
        thr = [pts[f"fpir_0.01@{n}"]["min_cosine_similarity"] for n in (10, 100, 1000)]
        assert thr == sorted(thr), "a larger gallery needs a stricter threshold for the same stranger rate"
        assert all(pts[f"fpir_0.01@{n}"]["fpir"] <= 0.01 for n in (10, 100, 1000))
        assert "peopleDevTrain" in m["embedder"]["open_set_source"]
    m8 = read_manifest(models_dir / index["int8"]["embedder"])
    quant = m8["embedder"]["quantization"]
    assert "channels equalized" in quant["method"] and m8["calibration"]["num_crops"] > 100
    # post-training by default (embedder.QAT_FAMILIES is empty; --qat-steps N trains on the same exact input)
    assert "quantization-aware" not in quant["method"]
    # then its conv biases corrected against the float model (52 ops: the 33 fused-ReLU depthwise ops keep theirs)
    assert "bias correction" in quant["method"] and quant["bias_correction"]["ops"] == 52
    # the int8 input takes pixels exactly: (x - 128) / 128 is its uint8 quantization (scale 1/128, zero point 128)
    assert m8["input"]["mean"] == 128.0 and m8["input"]["std"] == 128.0


@pytest.mark.slow
def test_default_int8_embedder_fits_the_edge_tpu_cache_and_its_op_list(models_dir, index):
    from ai_edge_litert.interpreter import Interpreter

    from edgeface.converters import edgetpu

    path = models_dir / index["int8"]["embedder"]
    assert path.stat().st_size <= 8 * 1024 * 1024
    ops = {d["op_name"] for d in Interpreter(str(path))._get_ops_details()}
    # QUANTIZE / DEQUANTIZE: the uint8 input and the float32 output at the edge (tests/test_pipeline.py)
    assert "PRELU" not in ops and ops <= {"QUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RELU", "RESHAPE",
                                          "DEQUANTIZE"}
    report = edgetpu.check_model(path, compile=False)
    assert report["ready"], edgetpu.format_report(report)


@pytest.mark.slow
def test_real_lfw_face_is_aligned_eyes_level_and_int8_agrees_with_float(recognizer, float_recognizer):
    """On a real LFW photo the detector's keypoints land near the template, and both precisions agree."""
    image = preprocess.read_image(lfw_image("Colin_Powell", 1))
    (face,) = [f for f in float_recognizer.detect(image)][:1]
    crop = float_recognizer.embedder.crop(image, face.box, face.keypoints)
    assert crop.shape == (112, 112, 3) and crop.mean() > 40  # a face, not a black border
    m = preprocess.similarity_transform(face.keypoints[:4], TEMPLATE)
    mapped = np.hstack([face.keypoints[:4], np.ones((4, 1))]) @ m.T
    assert np.abs(mapped - TEMPLATE).max() < 6  # BlazeFace's points fit the ArcFace layout within 6 px of 112
    assert abs(mapped[0, 1] - mapped[1, 1]) < 3  # eyes level after alignment
    other = preprocess.read_image(lfw_image("Colin_Powell", 2))
    strangers = [preprocess.read_image(lfw_image(n, 1)) for n in ("Tony_Blair", "George_W_Bush", "Serena_Williams")]
    sims = {}
    for name, rec in (("int8", recognizer), ("float32", float_recognizer)):
        same = rec.verify(image, other).similarity
        diff = [rec.verify(image, s).similarity for s in strangers]
        assert same > rec.min_cosine_similarity and same > max(diff) + 0.1, (name, same, diff)
        sims[name] = [same] + diff
    # int8 pair scores stay within 0.15 of float (Powell-Blair: 0.43 int8 vs 0.30 float, the int8 gap of issue 10)
    np.testing.assert_allclose(sims["int8"], sims["float32"], atol=0.15)


@pytest.mark.slow
def test_flip_averages_the_crop_and_its_mirror_as_the_manifest_asks(models_dir, index, tmp_path):
    """Test-time flip: the default manifest asks for it; the embedding is the normalized mean of the crop's and
    its mirror's, so a mirrored face gets the same embedding; flip=False is one plain run."""
    import shutil

    from edgeface import FaceRecognizer
    from edgeface.embed import FaceEmbedder
    from edgeface.manifest import ManifestError, read_manifest

    path = models_dir / index["int8"]["embedder"]
    assert read_manifest(path)["embedder"]["flip"] is True
    on, off = FaceEmbedder(path), FaceEmbedder(path, flip=False)
    assert on.flip and not off.flip
    rec = FaceRecognizer(models_dir, flip=False)
    image = preprocess.read_image(lfw_image("Colin_Powell", 1))
    (face,) = rec.detect(image)[:1]
    crop = on.crop(image, face.box, face.keypoints)
    mirror = np.ascontiguousarray(crop[:, ::-1])
    plain, mirrored = off.embed_crop(crop), off.embed_crop(mirror)
    expected = (plain + mirrored) / np.linalg.norm(plain + mirrored)
    np.testing.assert_allclose(on.embed_crop(crop), expected, atol=1e-6)
    np.testing.assert_allclose(on.embed_crop(mirror), on.embed_crop(crop), atol=1e-6)
    assert float(plain @ mirrored) < 0.999  # the mirror is a different input, so the average is not a no-op
    # a manifest's flip must be a boolean
    bad = tmp_path / path.name
    shutil.copy(path, bad)
    m = read_manifest(path, verify_hash=False)
    m["embedder"]["flip"] = "yes"
    (tmp_path / (path.stem + ".json")).write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="embedder.flip"):
        FaceEmbedder(bad)
    m["embedder"]["flip"], m["embedder"]["flip_band"] = True, -0.1
    (tmp_path / (path.stem + ".json")).write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="embedder.flip_band"):
        FaceEmbedder(bad)


@pytest.mark.slow
def test_embedding_mean_is_one_centre_for_both_precisions_subtracted_from_every_run(models_dir, index, tmp_path):
    """The default build records the float model's mean embedding in both manifests; each model run's normalized
    output has it subtracted and is normalized again; centred and uncentred embeddings are different spaces."""
    import shutil

    from edgeface import FaceRecognizer
    from edgeface.embed import FaceEmbedder, l2_normalize
    from edgeface.manifest import ManifestError, read_manifest

    paths = {p: models_dir / index[p]["embedder"] for p in ("int8", "float32")}
    means = {p: read_manifest(path)["embedder"].get("embedding_mean") for p, path in paths.items()}
    assert means["int8"] is not None and means["int8"] == means["float32"], "one centre for both precisions"
    centre = np.asarray(means["int8"], np.float32)
    assert centre.shape == (read_manifest(paths["int8"])["embedder"]["embedding_size"],)
    assert 0.05 < np.linalg.norm(centre) < 0.3  # what all faces share; far from a unit vector
    emb = FaceEmbedder(paths["int8"], flip=False)
    rec = FaceRecognizer(models_dir, flip=False)
    image = preprocess.read_image(lfw_image("Colin_Powell", 1))
    (face,) = rec.detect(image)[:1]
    crop = emb.crop(image, face.box, face.keypoints)
    raw = emb._run(crop)
    np.testing.assert_allclose(emb.embed_crop(crop), l2_normalize(l2_normalize(raw) - centre), atol=1e-6)
    assert float(emb.embed_crop(crop) @ l2_normalize(raw)) < 0.999  # centring changes the vector
    assert FaceEmbedder(paths["float32"]).space_id == emb.space_id and ":c" in emb.space_id
    # the same model without the centre: another space (a gallery refuses to mix them)
    plain = tmp_path / paths["int8"].name
    shutil.copy(paths["int8"], plain)
    m = read_manifest(paths["int8"], verify_hash=False)
    m["embedder"].pop("embedding_mean")
    (tmp_path / (plain.stem + ".json")).write_text(json.dumps(m))
    uncentred = FaceEmbedder(plain, flip=False)
    assert uncentred.center is None and uncentred.space_id != emb.space_id
    np.testing.assert_allclose(uncentred.embed_crop(crop), l2_normalize(raw), atol=1e-6)
    for bad in (means["int8"][:-1], [0.5] * len(means["int8"]), [float("nan")] + means["int8"][1:], "zero"):
        m["embedder"]["embedding_mean"] = bad
        (tmp_path / (plain.stem + ".json")).write_text(json.dumps(m))
        with pytest.raises(ManifestError, match="embedder.embedding_mean"):
            FaceEmbedder(plain)


@pytest.mark.slow
def test_embedding_mean_from_too_few_faces_is_refused_and_changes_no_manifest(models_dir, index, tmp_path):
    """The build's centring step on the first 10 DevTrain pairs (18 faces, under the 100 it needs): a
    CalibrationError naming the count, and the manifests keep the centre they had."""
    import shutil

    from edgeface.calibration_data.builder import CalibrationError
    from edgeface.converters.thresholds import calibrate_embedding_mean
    from edgeface.detect import resolve_detector

    from conftest import LFW

    for f in models_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    paths = [tmp_path / index[p]["embedder"] for p in ("float32", "int8")]
    before = [p.with_suffix(".json").read_bytes() for p in paths]
    with pytest.raises(CalibrationError, match=r"only \d+ faces .* \(need 100\)"):
        calibrate_embedding_mean(resolve_detector(tmp_path, "float32"), paths, LFW, limit=10)
    assert [p.with_suffix(".json").read_bytes() for p in paths] == before


def test_needs_mirror_only_where_the_mirror_could_change_the_answer():
    from edgeface.gallery import Match
    from edgeface.recognizer import needs_mirror

    thr, band = 0.45, 0.05
    assert not needs_mirror([], thr, band) and not needs_mirror([Match("a", float("nan"))], thr, band)
    assert not needs_mirror([Match("a", 0.80), Match("b", 0.30)], thr, band)  # clearly someone
    assert not needs_mirror([Match("a", 0.30), Match("b", 0.29)], thr, band)  # clearly no one, however close
    assert needs_mirror([Match("a", 0.47)], thr, band) and needs_mirror([Match("a", 0.42)], thr, band)
    assert needs_mirror([Match("a", 0.80), Match("b", 0.77)], thr, band)  # the name could change
    assert not needs_mirror([Match("a", 0.80), Match("b", 0.77)], thr, 0.0)  # band 0: never
    assert needs_mirror([Match("a", 0.99)], thr, float("inf"))  # inf: always


@pytest.mark.slow
def test_identify_crop_runs_the_mirror_only_near_the_threshold(models_dir, index, tmp_path):
    """The device's decision path: one model run for a face far from the threshold (the flipped gallery
    decides), the mirror too when the one-run score is near it; with the mirror the result is exactly the
    always-flipped one."""
    from edgeface import FaceRecognizer, Gallery
    from edgeface.manifest import read_manifest
    from edgeface.recognizer import identify_crop

    m = read_manifest(models_dir / index["int8"]["embedder"])["embedder"]
    assert m["flip"] is True and m["flip_band"] == 0.05
    rec = FaceRecognizer(models_dir)
    assert rec.embedder.flip and rec.embedder.flip_band == 0.05
    gallery = Gallery(tmp_path / "g.db", rec.embedder_id, rec.embedder.dim)
    empty = identify_crop(rec.embedder, np.zeros((112, 112, 3), np.uint8), gallery, 0.5)
    assert empty.match.name is None and np.isnan(empty.match.similarity) and not empty.mirrored
    for name in ("Colin_Powell", "Tony_Blair"):
        image = preprocess.read_image(lfw_image(name, 1))
        gallery.enroll(name, [rec.embed(image)[0][1]])  # enrollment embeddings are always flipped
    image = preprocess.read_image(lfw_image("Colin_Powell", 2))
    (face,) = rec.detect(image)[:1]
    crop = rec.embedder.crop(image, face.box, face.keypoints)
    thr = rec.min_cosine_similarity
    timings = {}
    far = identify_crop(rec.embedder, crop, gallery, thr, timings)
    one_run = rec.embedder.embed_crop(crop, flip=False)
    assert far.match.name == "Colin_Powell" and far.match.similarity > thr + 0.05 and not far.mirrored
    np.testing.assert_allclose(far.embedding, one_run, atol=1e-6)
    assert timings["embed"] > 0 and timings["match"] > 0
    # the same face judged at a threshold just above its one-run score: near it, so the mirror runs
    near = identify_crop(rec.embedder, crop, gallery, min(1.0, far.match.similarity + 0.01))
    assert near.mirrored
    np.testing.assert_allclose(near.embedding, rec.embedder.embed_crop(crop), atol=1e-6)  # = always flipped
    np.testing.assert_allclose(near.match.similarity, float(gallery.match(rec.embedder.embed_crop(crop))[0]
                                                            .similarity), atol=1e-6)
    always = FaceRecognizer(models_dir, flip_band=float("inf"))
    assert identify_crop(always.embedder, crop, gallery, thr).mirrored
    assert [i.name for i in rec.identify(image, gallery)][:1] == ["Colin_Powell"]
    gallery.close()
