"""Representative-dataset builder: deterministic, DevTrain-only, clear errors, celebrity fallback."""
import logging
from pathlib import Path

import numpy as np
import pytest

from edgeface.calibration_data import builder


def test_lfw_devtrain_is_deterministic_and_excludes_test_people(data_root):
    lfw = data_root / "lfw"
    a = builder.lfw_devtrain(lfw, count=50, seed=7)
    b = builder.lfw_devtrain(lfw, count=50, seed=7)
    c = builder.lfw_devtrain(lfw, count=50, seed=8)
    assert a.files == b.files and a.id == b.id and a.id != c.id
    assert len(a.files) == 50 and list(a.files) == sorted(a.files)
    test_people = {l.split()[0] for l in (lfw / "peopleDevTest.txt").read_text().splitlines()[1:] if l.strip()}
    assert not {f.parent.name for f in a.files} & test_people


def test_detector_canvases_include_mosaics():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (100, 80, 3), dtype=np.uint8) for _ in range(8)]
    canvases = list(builder.detector_canvases(images, 128))
    assert len(canvases) == 8 + 2 and all(c.shape == (128, 128, 3) for c in canvases)


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(builder.CalibrationError, match="not found"):
        builder.folder(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(builder.CalibrationError, match=str(tmp_path)):
        builder.folder(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(builder.CalibrationError, match="could be read"):
        builder.load_images(builder.folder(tmp_path))


def test_face_crops_without_any_face_is_an_error():
    with pytest.raises(builder.CalibrationError, match="no face"):
        builder.face_crops([np.zeros((10, 10, 3), np.uint8)], lambda img: [], lambda img, f: img)


@pytest.mark.slow
def test_falls_back_to_celebrity_photos_with_a_warning(monkeypatch, tmp_path, caplog):
    from edgeface.converters.calibration import default_set

    monkeypatch.setenv("EDGEFACE_DATA", str(tmp_path / "no-data"))
    with caplog.at_level(logging.WARNING):
        cset = default_set(count=40)
    assert cset.source == "celebrity" and len(cset.files) == 40
    assert any("5-celebrity" in r.message for r in caplog.records)
    assert all(Path(f).suffix.lower() in builder.IMAGE_SUFFIXES for f in cset.files)
