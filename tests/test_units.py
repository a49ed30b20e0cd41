"""Pure functions of the runtime glue: manifests, tiling, face choice, crops, runtime selection."""
import json

import numpy as np
import pytest

from edgeface import manifest, runtime
from edgeface.detect import Face, merge_faces, tile_windows
from edgeface.embed import face_crop, l2_normalize
from edgeface.lfw import central_face


def _manifest(**over):
    data = {"role": "embedder", "family": "x", "precision": "int8",
            "input": {"shape": [1, 160, 160, 3], "dtype": "uint8", "color": "RGB", "mean": 127.5, "std": 128},
            "outputs": {"embedding": "out"},
            "embedder": {"embedding_size": 4, "crop": {"method": "box_margin", "margin": 0.2, "size": 160},
                         "min_cosine_similarity": 0.4}}
    data.update(over)
    return data


def test_manifest_roundtrip_and_hash_check(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"model bytes")
    manifest.write_manifest(model, _manifest())
    m = manifest.read_manifest(model)
    assert m["sha256"] == manifest.sha256_file(model) and m["model_file"] == "m.tflite"
    model.write_bytes(b"model bytes, truncated or swapped")
    with pytest.raises(manifest.ManifestError, match="does not match"):
        manifest.read_manifest(model)


def test_manifest_rejects_unknown_and_missing_keys(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    with pytest.raises(manifest.ManifestError, match="unknown keys"):
        manifest.write_manifest(model, _manifest(surprise=1))
    bad = _manifest()
    del bad["outputs"]
    with pytest.raises(manifest.ManifestError, match="missing keys"):
        manifest.write_manifest(model, bad)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(manifest.ManifestError, match="unreadable"):
        manifest.read_manifest(model)
    with pytest.raises(manifest.ManifestError, match="not found"):
        manifest.read_manifest(tmp_path / "other.tflite")


def test_resolve_models_reads_index(tmp_path):
    (tmp_path / "models.json").write_text(json.dumps({"int8": {"detector": "d.tflite", "embedder": "e.tflite"}}))
    assert manifest.resolve_models(tmp_path, "int8") == (tmp_path / "d.tflite", tmp_path / "e.tflite")
    with pytest.raises(manifest.ManifestError, match="float32"):
        manifest.resolve_models(tmp_path, "float32")
    with pytest.raises(ValueError):
        manifest.resolve_models(tmp_path, "fp8")


@pytest.mark.parametrize("h,w,grid", [(768, 1366, 2), (469, 675, 3), (100, 100, 2), (50, 400, 4)])
def test_tiles_cover_the_image_and_stay_inside(h, w, grid):
    tiles = tile_windows(h, w, grid)
    covered = np.zeros((h, w), bool)
    for x, y, s in tiles:
        assert 0 <= x and 0 <= y and x + s <= w and y + s <= h
        covered[y:y + s, x:x + s] = True
    assert covered.all()
    with pytest.raises(ValueError):
        tile_windows(h, w, 0)


def test_merge_faces_fuses_duplicates_from_tiles():
    kp = np.zeros((6, 2), np.float32)
    a = Face(np.array([10, 10, 50, 50], np.float32), 0.9, kp)
    b = Face(np.array([12, 12, 52, 52], np.float32), 0.8, kp + 2)
    c = Face(np.array([100, 100, 140, 140], np.float32), 0.7, kp)
    merged = merge_faces([c, a, b], 0.3)
    assert len(merged) == 2 and merged[0].score == pytest.approx(0.9)
    assert 10 < merged[0].box[0] < 12  # score-weighted average


def test_central_face_prefers_the_subject_over_a_border_face():
    kp = np.zeros((6, 2))
    border = Face(np.array([0, 0, 90, 90]), 0.99, kp)
    subject = Face(np.array([80, 80, 170, 170]), 0.8, kp)
    assert central_face([border, subject], (250, 250, 3)) == 1
    assert central_face([], (250, 250, 3)) is None


def test_face_crop_recipes():
    img = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    box = np.array([50, 60, 130, 150], np.float32)
    kps = np.array([[75, 90], [105, 90], [90, 110], [90, 130], [55, 95], [125, 95]], np.float32)
    assert face_crop(img, box, None, {"method": "box_margin", "margin": 0.2, "size": 160}).shape == (160, 160, 3)
    assert face_crop(img, box, kps, {"method": "similarity", "size": 112}).shape == (112, 112, 3)
    with pytest.raises(ValueError, match="unknown crop method"):
        face_crop(img, box, kps, {"method": "magic", "size": 112})


def test_l2_normalize_is_safe_on_zero():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(out[0], [0.6, 0.8]) and np.all(np.isfinite(out))


def test_runtime_selection_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown runtime"):
        runtime.get_runtime("onnx")
    monkeypatch.setenv("EDGEFACE_RUNTIME", "tflite_runtime")
    try:
        import tflite_runtime  # noqa: F401 - imported only to probe that the optional package is installed
    except ImportError:
        with pytest.raises(runtime.RuntimeNotFoundError, match="tflite_runtime"):
            runtime.get_runtime()


def test_make_interpreter_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        runtime.make_interpreter(tmp_path / "none.tflite")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="junk.tflite"):
        runtime.make_interpreter(junk)
    with pytest.raises(ValueError, match="accelerator"):
        runtime.make_interpreter(junk, accelerator="gpu")


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_missing_edgetpu_library_is_a_clear_error(tmp_path):
    """No libedgetpu here: a DelegateError saying what to install, and no "Exception ignored" noise after it."""
    import ctypes
    import gc

    try:
        ctypes.CDLL(runtime.EDGETPU_LIBRARY)
        pytest.skip("an Edge TPU runtime is installed on this machine")
    except OSError:
        pass
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0" * 64)
    with pytest.raises(runtime.DelegateError, match="libedgetpu1-std"):
        runtime.make_interpreter(model, accelerator="edgetpu")
    gc.collect()


def test_data_root_is_absolute_even_when_edgeface_data_is_relative(tmp_path, monkeypatch):
    """The README sets EDGEFACE_DATA=../shared/data: tools that run elsewhere (a browser uploading a photo,
    a subprocess with another cwd) need the absolute path."""
    from edgeface.paths import data_root

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("EDGEFACE_DATA", "../shared/data")
    assert data_root() == tmp_path / "shared" / "data" and data_root().is_absolute()
    monkeypatch.delenv("EDGEFACE_DATA")
    assert data_root() == tmp_path / "shared" / "data"
