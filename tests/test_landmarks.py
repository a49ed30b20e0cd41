"""Five-point landmarks (MTCNN O-Net): the crop/decode geometry and the five-point alignment (pure, synthetic
inputs), then the built models on real LFW faces (slow)."""
import json
import shutil

import numpy as np
import pytest

from edgeface import preprocess
from edgeface.embed import (
    ARCFACE_FIVE_POINTS,
    ARCFACE_FIVE_TEMPLATE_112,
    face_crop,
    landmark_recipe,
    needs_landmark_model,
)
from edgeface.landmarks import (
    FIVE_POINT_NAMES,
    Landmarks,
    Region,
    crop_region,
    decode_points,
    landmark_region,
)
from edgeface.manifest import ManifestError, resolve_landmarks, validate

from conftest import lfw_image

FIVE = np.array(ARCFACE_FIVE_TEMPLATE_112, np.float32)
FOUR_POINT = landmark_recipe(fallback={"method": "box_rect", "width": 1.282, "height": 1.282, "shift_y": -0.2,
                                       "size": 112})
FIVE_POINT = landmark_recipe(112, ARCFACE_FIVE_TEMPLATE_112, ARCFACE_FIVE_POINTS, fallback=FOUR_POINT)


# --------------------------------------------------------------------------- geometry (pure)
def test_landmark_region_is_a_scaled_square_around_the_shifted_box_centre():
    assert landmark_region([100, 50, 200, 150], 1.0, 0.0) == Region(100, 50, 100)
    assert landmark_region([100, 50, 200, 150], 1.2, -0.1) == Region(90, 30, 120)  # 0.1 widths up
    assert landmark_region([10.4, 10.4, 20.4, 20.4], 2.0, 0.5) == Region(5, 10, 20)
    with pytest.raises(ValueError, match="x2 > x1"):
        landmark_region([50, 50, 50, 80], 1.2, 0.0)


def test_crop_region_pads_outside_the_image_with_black():
    image = np.full((100, 80, 3), 200, np.uint8)
    inside = crop_region(image, Region(10, 20, 48), 48)
    np.testing.assert_array_equal(inside, image[20:68, 10:58])  # same size: an exact copy
    corner = crop_region(image, Region(-40, -40, 80), 40)  # the image fills the bottom-right quarter
    assert corner.shape == (40, 40, 3)
    assert corner[:19, :19].max() == 0 and corner[21:, 21:].min() == 200
    assert crop_region(image, Region(500, 500, 30), 48).max() == 0  # wholly outside: black, not an error


def test_decode_points_maps_crop_fractions_to_image_pixels():
    region = Region(40, 60, 200)
    raw = np.array([0.0, 1.0, 0.5, 0.25, 0.75, 0.0, 0.0, 0.5, 1.0, 1.0], np.float32)
    pts = decode_points(raw, region)
    np.testing.assert_allclose(pts, [[40, 60], [240, 60], [140, 160], [90, 260], [190, 260]])
    with pytest.raises(ValueError, match="10 values"):
        decode_points(np.zeros(8), region)


def test_crop_and_decode_invert_each_other():
    """A point at crop-fraction f of the region, decoded, is where that crop pixel came from in the image."""
    image = np.zeros((300, 300, 3), np.uint8)
    image[149:152, 99:102] = 255  # a dot at (100, 150)
    region = landmark_region([60, 90, 180, 210], 1.16, -0.038)
    crop = crop_region(image, region, region.side)  # no resampling: pixel-exact
    y, x = np.argwhere(crop[..., 0] == 255).mean(axis=0)
    back = decode_points(np.r_[[x / region.side] * 5, [y / region.side] * 5], region)
    np.testing.assert_allclose(back[0], [100, 150], atol=1e-4)


# --------------------------------------------------------------------------- five-point alignment (pure)
class _FixedLandmarker:
    """Stands in for a landmark model: returns fixed points and records the boxes it was asked about."""

    def __init__(self, points):
        self.points, self.boxes = np.asarray(points, np.float32), []

    def landmarks(self, image, box):
        self.boxes.append(box)
        return Landmarks(self.points, 1.0)


def _similar(points, angle, scale, shift):
    c, s = np.cos(angle), np.sin(angle)
    return (np.asarray(points, np.float32) @ (scale * np.array([[c, s], [-s, c]], np.float32))
            + np.asarray(shift, np.float32))


def test_five_point_recipe_names_the_mouth_corners_and_checks_its_names():
    assert needs_landmark_model(FIVE_POINT) and not needs_landmark_model(FOUR_POINT)
    assert FIVE_POINT["points"] == list(FIVE_POINT_NAMES) and len(FIVE_POINT["template"]) == 5
    assert FIVE_POINT["fallback"] == FOUR_POINT
    with pytest.raises(ValueError, match="unknown keypoints"):
        landmark_recipe(112, ARCFACE_FIVE_TEMPLATE_112[:3], ("right_eye", "left_mouth_corner", "mouth_center"))


@pytest.mark.parametrize("angle,scale,shift", [(0.0, 1.0, (0, 0)), (0.25, 2.2, (120, 70))])
def test_five_point_crop_puts_the_landmark_models_points_on_the_template(angle, scale, shift):
    pts = _similar(FIVE, angle, scale, shift)
    image = np.zeros((420, 420, 3), np.uint8)
    for x, y in pts:
        image[int(round(y)) - 2:int(round(y)) + 3, int(round(x)) - 2:int(round(x)) + 3] = 255
    lm = _FixedLandmarker(pts)
    box = np.array([1, 2, 3, 4.0])
    wrong_kps = np.zeros((6, 2), np.float32)  # the detector's keypoints are not used by a five-point recipe
    crop = face_crop(image, box, wrong_kps, FIVE_POINT, lm)
    assert crop.shape == (112, 112, 3) and len(lm.boxes) == 1 and lm.boxes[0] is box
    for x, y in FIVE:
        assert crop[int(round(y)), int(round(x))].max() > 100
    np.testing.assert_array_equal(crop, preprocess.align_face(image, pts, FIVE, 112))


def test_five_point_crop_without_a_landmark_model_uses_the_four_point_fallback():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    kps = np.vstack([_similar(np.array(FOUR_POINT["template"]), 0.1, 1.5, (50, 40)), [[0, 0], [1, 1]]])
    box = np.array([60, 60, 200, 200], np.float32)
    np.testing.assert_array_equal(face_crop(image, box, kps, FIVE_POINT), face_crop(image, box, kps, FOUR_POINT))
    # a four-point recipe never asks the landmark model
    lm = _FixedLandmarker(np.zeros((5, 2)))
    np.testing.assert_array_equal(face_crop(image, box, kps, FOUR_POINT, lm), face_crop(image, box, kps, FOUR_POINT))
    assert lm.boxes == []
    with pytest.raises(ValueError, match="needs a landmark model"):
        face_crop(image, box, kps, {k: v for k, v in FIVE_POINT.items() if k != "fallback"})


def _landmark_manifest(**changes) -> dict:
    data = {"format": "edgeface-manifest/1", "role": "landmarks", "family": "mtcnn-onet", "model_file": "x.tflite",
            "sha256": "0" * 64, "precision": "float32",
            "input": {"shape": [1, 48, 48, 3], "dtype": "float32", "color": "RGB", "mean": 127.5, "std": 128.0},
            "outputs": {"landmarks": "a", "score": "b"},
            "landmarks": {"points": list(FIVE_POINT_NAMES),
                          "crop": {"method": "box_square", "size": 48, "scale": 1.16, "shift_y": -0.038}}}
    data.update(changes)
    return data


def test_landmark_manifest_validation():
    validate(_landmark_manifest())
    with pytest.raises(ManifestError, match="outputs.landmarks"):
        validate(_landmark_manifest(outputs={"score": "b"}))
    with pytest.raises(ManifestError, match="crop.size"):
        validate(_landmark_manifest(landmarks={"points": list(FIVE_POINT_NAMES),
                                               "crop": {"method": "box_square", "size": 40, "scale": 1.16,
                                                        "shift_y": 0}}))
    with pytest.raises(ManifestError, match="crop.method"):
        validate(_landmark_manifest(landmarks={"points": list(FIVE_POINT_NAMES), "crop": {"method": "warp"}}))
    with pytest.raises(ManifestError, match="landmarks.points"):
        validate(_landmark_manifest(landmarks={"points": "five", "crop": {}}))


# --------------------------------------------------------------------------- the built models (slow)
LFW_FACES = [("Aaron_Peirsol", 1), ("Abdullah_Gul", 3), ("Ann_Veneman", 2), ("Colin_Powell", 5),
             ("George_W_Bush", 10), ("Gloria_Macapagal_Arroyo", 4), ("Hugo_Chavez", 7), ("Jennifer_Capriati", 2),
             ("Laura_Bush", 3), ("Serena_Williams", 4), ("Tony_Blair", 12), ("Vladimir_Putin", 6)]


@pytest.fixture(scope="module")
def lfw_faces(models_dir, index):
    """(image, best BlazeFace face) of a dozen LFW photos, float short-range detector."""
    from edgeface.detect import FaceDetector

    det = FaceDetector(models_dir / index["detectors"]["short_range"]["float32"])
    out = []
    for name, n in LFW_FACES:
        image = preprocess.read_image(lfw_image(name, n))
        faces = det.detect(image)
        assert faces, f"{name} {n}: no face"
        out.append((image, faces[0]))
    return out


def _landmarker(models_dir, precision):
    from edgeface.landmarks import FaceLandmarker

    path = resolve_landmarks(models_dir, precision)
    assert path is not None, "the build writes a landmarks section into models.json"
    return FaceLandmarker(path)


@pytest.mark.slow
def test_onet_points_land_on_blazefaces_eyes_and_nose(models_dir, lfw_faces):
    lm = _landmarker(models_dir, "float32")
    for image, face in lfw_faces:
        got = lm.landmarks(image, face.box)
        width = face.box[2] - face.box[0]
        assert got.points.shape == (5, 2) and got.score > 0.9
        # eyes and nose within 12 % of the box width of BlazeFace's (LFW faces are frontal-ish)
        err = np.linalg.norm(got.points[:3] - face.keypoints[:3], axis=1) / width
        assert err.max() < 0.12, (err, face.keypoints[:3], got.points[:3])
        # the subject's right eye and mouth corner are on the image's left; the mouth is below the nose
        assert got.points[0, 0] < got.points[1, 0] and got.points[3, 0] < got.points[4, 0]
        mouth = got.points[3:].mean(axis=0)
        assert mouth[1] > got.points[2, 1]
        assert np.linalg.norm(mouth - face.keypoints[3]) / width < 0.15


@pytest.mark.slow
def test_int8_onet_points_agree_with_float(models_dir, lfw_faces):
    f32, i8 = _landmarker(models_dir, "float32"), _landmarker(models_dir, "int8")
    assert i8.manifest["input"]["dtype"] == "uint8"
    diffs = np.array([np.linalg.norm(f32.landmarks(img, face.box).points - i8.landmarks(img, face.box).points,
                                     axis=1) for img, face in lfw_faces])
    assert np.median(diffs) < 1.5 and diffs.max() < 4.0, diffs


@pytest.mark.slow
def test_built_onet_matches_the_upstream_onnx(models_dir, lfw_faces):
    """The rebuild (transpose folded into the weights) computes the upstream graph: float exactly, int8 closely."""
    from edgeface.converters import onet

    crops = np.stack([_landmarker(models_dir, "float32").crop(img, face.box)[0] for img, face in lfw_faces])
    f32 = onet.check_against_reference(models_dir / "onet_float32.tflite", crops)
    assert max(f32.values()) < 1e-4, f32
    i8 = onet.check_against_reference(models_dir / "onet_int8.tflite", crops)
    assert i8["landmarks"] < 0.03 and i8["score"] < 0.05, i8


@pytest.mark.slow
def test_recognizer_aligns_on_the_landmark_model_when_the_recipe_asks(models_dir, index, tmp_path, lfw_faces):
    """A five-point embedder recipe gets its points from the folder's landmark model; without it the recognizer
    falls back to the four detector keypoints and says so (what doctor shows)."""
    from edgeface.recognizer import FaceRecognizer

    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder)
    emb = folder / index["float32"]["embedder"]
    manifest = json.loads(emb.with_suffix(".json").read_text())
    recipe = manifest["embedder"]["crop"]
    manifest["embedder"]["crop"] = landmark_recipe(112, ARCFACE_FIVE_TEMPLATE_112, ARCFACE_FIVE_POINTS,
                                                   fallback=recipe)
    emb.with_suffix(".json").write_text(json.dumps(manifest))
    rec = FaceRecognizer(folder, precision="float32", detector="short_range")
    assert rec.embedder.alignment == "five-point landmark model"
    image, face = lfw_faces[0]
    crop = rec.embedder.crop(image, face.box, face.keypoints)
    points = rec.embedder.landmarker.landmarks(image, face.box).points
    np.testing.assert_array_equal(crop, preprocess.align_face(image, points, FIVE, 112))
    old = face_crop(image, face.box, face.keypoints, recipe)
    a, b = rec.embedder.embed_crop(crop), rec.embedder.embed_crop(old)
    assert 0.8 < float(a @ b) < 0.9999  # a different, close crop of the same face
    idx = json.loads((folder / "models.json").read_text())
    del idx["landmarks"]
    (folder / "models.json").write_text(json.dumps(idx))
    rec = FaceRecognizer(folder, precision="float32", detector="short_range")
    assert rec.embedder.landmarker is None and "fallback" in rec.embedder.alignment
    np.testing.assert_array_equal(rec.embedder.crop(image, face.box, face.keypoints), old)


@pytest.mark.slow
def test_int8_onet_is_all_int8_ops_the_edge_tpu_maps(models_dir):
    from ai_edge_litert.interpreter import Interpreter

    from edgeface.converters import edgetpu

    path = resolve_landmarks(models_dir, "int8")
    ops = {d["op_name"] for d in Interpreter(str(path))._get_ops_details()}
    assert "PRELU" not in ops and "TRANSPOSE" not in ops  # PReLU split into int8 convs, transpose in the weights
    report = edgetpu.check_model(path, compile=False)
    assert report["ready"], edgetpu.format_report(report)


@pytest.mark.slow
def test_doctor_reports_the_alignment_and_warns_on_the_four_point_fallback(models_dir, index, tmp_path):
    from edgeface.device import config
    from edgeface.device.cli import doctor

    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder)
    base = {"source": {"kind": "folder", "uri": str(tmp_path)},
            "models": {"dir": str(folder)}, "gallery": {"path": str(tmp_path / "g.db")},
            "door": {"pin_factory": "mock"}}
    cfg = config.from_dict(base)
    check = next(c for c in doctor(cfg) if c["check"] == "alignment")
    assert check["ok"] and not check.get("warning") and "five-point landmark model" in check["detail"]
    assert "onet_int8.tflite" in check["detail"]
    idx = json.loads((folder / "models.json").read_text())
    del idx["landmarks"]
    (folder / "models.json").write_text(json.dumps(idx))
    check = next(c for c in doctor(cfg) if c["check"] == "alignment")
    assert check["ok"] and check["warning"] and "no landmark model" in check["detail"]
    # test-time flip: as the manifest's thresholds were calibrated, or a warning when [models] flip differs
    check = next(c for c in doctor(cfg) if c["check"] == "flip")
    assert check["ok"] and not check.get("warning") and "flip on" in check["detail"]
    off = config.from_dict({**base, "models": {"dir": str(folder), "flip": False}})
    check = next(c for c in doctor(off) if c["check"] == "flip")
    assert check["ok"] and check["warning"] and "flip off" in check["detail"] and "differs" in check["detail"]
