"""Detection of every face size: configurations from models.json, merging, tiles, and the labelled face-size set."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeface import detect as D
from edgeface.detect import BoxTransform, Face
from edgeface.manifest import ManifestError

KP = np.zeros((6, 2), np.float32)


def face(box, score=0.9) -> Face:
    return Face(np.asarray(box, np.float32), score, KP)


# --------------------------------------------------------------------------- pure functions

def test_box_transform_moves_and_scales_about_the_centre():
    t = BoxTransform(0.5, 2.0, 0.1, -0.25)
    assert t.apply(np.array([0, 0, 100, 100])) == pytest.approx([35, -75, 85, 125])
    assert BoxTransform().apply(np.array([1, 2, 3, 4])) == pytest.approx([1, 2, 3, 4])
    assert BoxTransform.from_manifest(None) is None
    with pytest.raises(ManifestError):
        BoxTransform.from_manifest({"scale_x": 1.0})
    with pytest.raises(ManifestError):
        BoxTransform.from_manifest({"scale_x": 9.0, "scale_y": 1.0, "shift_x": 0.0, "shift_y": 0.0})


def test_merge_models_keeps_the_preferred_box_and_drops_a_poor_rival_reading():
    short = [face([100, 100, 200, 200], 0.7),          # a large face both find
             face([550, 46, 725, 221], 0.53)]           # a short-range box twice the size of a face
    full = [face([105, 95, 205, 195], 0.95),
            face([569, 62, 654, 148], 0.94),            # ... that full range reads well
            face([10, 10, 40, 40], 0.8)]                # a small face only full range finds
    merged = D.merge_models([short, full], frame_side=400)
    boxes = [list(f.box) for f in merged]
    assert len(merged) == 3
    assert [100, 100, 200, 200] in boxes                # a large face: the preferred (short-range) reading
    assert [569, 62, 654, 148] in boxes and [10, 10, 40, 40] in boxes
    assert [f.score for f in merged] == sorted((f.score for f in merged), reverse=True)
    # the same large face in a frame where it is small: the full-range reading (better keypoints there)
    assert [105, 95, 205, 195] in [list(f.box) for f in D.merge_models([short, full], frame_side=1000)]


def test_tile_faces_never_replace_or_duplicate_a_whole_frame_face():
    whole = [face([100, 100, 500, 500], 0.8)]
    tiles = [face([150, 150, 250, 250], 0.99),  # an eye region of the large face, seen up close
             face([700, 100, 730, 130], 0.9)]   # a new small face
    merged = D.add_tile_faces(whole, tiles)
    assert [list(f.box) for f in merged] == [[700, 100, 730, 130], [100, 100, 500, 500]]


def test_faces_cut_by_an_inner_tile_edge_are_left_to_other_tiles():
    faces = [face([0, 50, 20, 70]), face([40, 40, 60, 60]), face([185, 10, 200, 25])]
    # a tile at (100, 0) of side 200 in a 400 x 400 image: the left and right edges are inner edges
    kept = D.whole_in_tile(faces, (100, 0, 200), (400, 400))
    assert [list(f.box) for f in kept] == [[140, 40, 160, 60]]
    # a tile that is the whole image has no inner edge
    kept = D.whole_in_tile(faces, (0, 0, 200), (200, 200))
    assert len(kept) == 3


@pytest.mark.parametrize("h,w", [(720, 1280), (480, 640), (1080, 1920), (300, 4000)])
def test_pyramid_tiles_hold_every_face_between_min_face_and_the_whole_frame(h, w):
    min_face, frac = 20, 0.08
    windows = D.pyramid_windows(h, w, min_face, frac)
    assert all(0 <= x and 0 <= y and x + s <= w and y + s <= h for x, y, s in windows)
    rng = np.random.default_rng(0)
    whole_min = frac * max(h, w)
    for side in np.geomspace(min_face, min(whole_min, 0.8 * min(h, w)), 12):  # any face the whole frame misses
        for _ in range(20):
            x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
            # ... is whole in a tile where it is at least frac of the tile
            assert any(tx <= x and ty <= y and x + side <= tx + s and y + side <= ty + s
                       and side >= frac * s - 1e-6 for tx, ty, s in windows), (side, x, y)


def test_pyramid_is_empty_for_small_frames_and_validates():
    assert D.pyramid_windows(250, 250, 20, 0.08) == []
    for bad in ({"min_face": 0}, {"face_fraction": 0.0}, {"overlap": 1.0}):
        with pytest.raises(ValueError):
            D.pyramid_windows(500, 500, **{"min_face": 20, **bad})


def test_resolve_detector_names_from_the_index(tmp_path):
    (tmp_path / "models.json").write_text(json.dumps({
        "int8": {"detector": "s8.tflite", "embedder": "e.tflite"},
        "detectors": {"short_range": {"int8": "s8.tflite"}, "full_range": {"int8": "f8.tflite"}},
        "detector_configs": {"auto": {"whole_frame": ["short_range", "full_range"], "tile_model": "full_range",
                                      "min_face": 20, "tile_face_fraction": 0.08}},
        "default_detector": "auto"}))
    auto = D.resolve_detector(tmp_path, "int8")
    assert auto == D.DetectorConfig("auto", (tmp_path / "s8.tflite", tmp_path / "f8.tflite"),
                                    tmp_path / "f8.tflite", 20, 0.08)
    assert D.resolve_detector(tmp_path, "int8", "full_range").whole_frame == (tmp_path / "f8.tflite",)
    with pytest.raises(ManifestError, match="offers: auto, short_range, full_range"):
        D.resolve_detector(tmp_path, "int8", "tiny")
    with pytest.raises(ManifestError, match="no float32 model"):
        D.resolve_detector(tmp_path, "float32", "auto")


def test_an_index_without_configurations_keeps_its_single_default(tmp_path):
    (tmp_path / "models.json").write_text(json.dumps({"int8": {"detector": "s8.tflite", "embedder": "e.tflite"}}))
    config = D.resolve_detector(tmp_path, "int8")
    assert config.whole_frame == (tmp_path / "s8.tflite",) and config.min_face == 0


# --------------------------------------------------------------------------- real models, real photos

@pytest.fixture(scope="module")
def scenes(data_root):
    from edgeface.benchmarks import face_sizes

    return face_sizes.scenes(data_root)


@pytest.fixture(scope="module")
def default_detector(models_dir):
    from edgeface import FaceRecognizer

    return FaceRecognizer(models_dir).detector


@pytest.mark.slow
def test_default_detection_finds_every_face_size(default_detector, scenes, index):
    """Issue 10: with no flags, >= 95 % of faces >= 20 px of groups and far-away people, no large face lost."""
    from edgeface.benchmarks import face_sizes

    assert index["default_detector"] == "auto" and default_detector.name == "auto"
    per_scene = {s.name: face_sizes.score(np.array([f.box for f in default_detector.detect(s.image)]), s)
                 for s in scenes}
    summary = face_sizes.summarize(per_scene)
    assert summary["faces"] > 200
    assert summary["recall"] >= 0.95, summary
    assert summary["large_lost"] == 0, summary["lost"]
    assert summary["false_detections"] <= 2, summary


@pytest.mark.slow
def test_tiles_keep_the_large_face_of_a_press_photo(models_dir, scenes):
    """The press photo that ``--tiles 3`` once turned into four false small faces and no real one."""
    from edgeface import FaceRecognizer
    from edgeface.blazeface import iou

    press = next(s for s in scenes if s.name == "lfw_press")
    for tiles in (1, 3):
        faces = FaceRecognizer(models_dir, detector="short_range", tiles=tiles).detect(press.image)
        assert len(faces) == 1 and iou(faces[0].box, press.faces)[0] > 0.5, (tiles, faces)


@pytest.mark.slow
def test_full_range_boxes_are_mapped_onto_the_short_range_geometry(models_dir, data_root):
    """The box crop recipe was fitted to short-range boxes: full-range boxes of the same faces must agree."""
    from edgeface.blazeface import iou
    from edgeface.detect import DetectorModel, resolve_detector
    from edgeface.preprocess import read_image

    paths = sorted((data_root / "lfw" / "images_deepfunneled").glob("A*/*_0001.jpg"))[:40]
    short = DetectorModel(resolve_detector(models_dir, "int8", "short_range").whole_frame[0])
    full = DetectorModel(resolve_detector(models_dir, "int8", "full_range").whole_frame[0])
    assert full.box_transform is not None and full.box_transform.shift_y > 0.02  # full-range boxes sit higher
    mapped, raw = [], []
    transform = full.box_transform
    for p in paths:
        image = read_image(p)
        a = short.faces(image)
        full.box_transform = transform
        b = full.faces(image)
        full.box_transform = None
        c = full.faces(image)
        if a and b and c:
            mapped.append(iou(a[0].box, np.array([f.box for f in b])).max())
            raw.append(iou(a[0].box, np.array([f.box for f in c])).max())
    assert len(mapped) >= 35
    assert np.median(mapped) > max(0.8, np.median(raw) + 0.01), (np.median(mapped), np.median(raw))


@pytest.mark.slow
def test_device_models_detector_is_chosen_by_name_and_checked_at_start(models_dir):
    from edgeface.device import config as C
    from edgeface.device.app import StartupError, load_recognizer

    cfg = C.from_dict({"models": {"dir": str(models_dir), "detector": "short_range", "min_face": 0}})
    rec = load_recognizer(cfg)
    assert rec.detector.name == "short_range" and len(rec.detector.members) == 1
    assert load_recognizer(C.from_dict({"models": {"dir": str(models_dir)}})).detector.name == "auto"
    with pytest.raises(StartupError, match=r"\[models\] detector: unknown detector 'tiny'.*auto"):
        load_recognizer(C.from_dict({"models": {"dir": str(models_dir), "detector": "tiny"}}))


@pytest.mark.slow
def test_huge_photos_cost_about_as_many_tiles_as_a_1280_px_frame(default_detector):
    hd = len(default_detector.windows(720, 1280))
    assert hd > 20 and len(default_detector.windows(250, 250)) == 0
    assert len(default_detector.windows(3000, 4000)) <= 1.5 * hd
    explicit = D.FaceDetector(default_detector.config, min_face=40)  # an explicit size holds on any frame
    assert len(explicit.windows(3000, 4000)) > 2 * hd
