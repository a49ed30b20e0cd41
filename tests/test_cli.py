"""The `edgeface` command on real models and real photos, including bad input."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import BBT, lfw_image

pytestmark = pytest.mark.slow


def run(*args, models=None):
    cmd = [sys.executable, "-m", "edgeface.cli", *map(str, args)]
    if models is not None:
        cmd += ["--models", str(models)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_help_teaches_every_subcommand():
    r = run("--help")
    assert r.returncode == 0 and "examples:" in r.stdout
    for sub in ("build", "detect", "embed", "verify", "enroll", "identify", "gallery", "eval"):
        h = run(sub, "--help")
        assert h.returncode == 0 and "usage: edgeface " + sub in h.stdout


def test_detect_json_shape(models_dir):
    r = run("detect", "--json", lfw_image("Aaron_Peirsol", 1), models=models_dir)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    face = out["faces"][0]
    assert len(face["box"]) == 4 and 0 < face["score"] <= 1
    assert np.array(face["keypoints"]).shape == (6, 2)


def test_verify_json_same_and_different(models_dir):
    same = json.loads(run("verify", "--json", lfw_image("Colin_Powell", 1), lfw_image("Colin_Powell", 2),
                          models=models_dir).stdout)
    # (Colin_Powell_0001 vs Tony_Blair_0001 is a false accept of the MobileFaceNet int8 model at its
    # accuracy-optimal threshold: 0.431 vs 0.393; float 0.30)
    diff = json.loads(run("verify", "--json", lfw_image("Colin_Powell", 1), lfw_image("Serena_Williams", 1),
                          models=models_dir).stdout)
    assert set(same) == {"faces", "similarity", "threshold", "same"}
    assert same["faces"][0] >= 1 and same["same"] is True and diff["same"] is False
    assert same["similarity"] > same["threshold"] > diff["similarity"]


def test_bad_inputs_are_named_and_the_run_goes_on(models_dir, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "readme.png"
    text.write_text("hello")
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.cvtColor(cv2.imread(str(lfw_image("Aaron_Peirsol", 1))), cv2.COLOR_BGR2GRAY))
    alpha = tmp_path / "alpha.png"
    bgr = cv2.imread(str(lfw_image("Aaron_Peirsol", 1)))
    cv2.imwrite(str(alpha), np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]))
    missing = tmp_path / "missing.jpg"
    good = lfw_image("Aaron_Peirsol", 1)
    r = run("detect", "--json", empty, text, missing, gray, alpha, good, models=models_dir)
    assert r.returncode == 1
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 3
    for bad, line in zip((empty, text, missing), errors):
        assert line.startswith("edgeface: error: ") and str(bad) in line
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["image"] for x in results] == [str(gray), str(alpha), str(good)]
    assert all(len(x["faces"]) >= 1 for x in results), "grayscale / alpha images must still work"


def test_enroll_identify_and_manage_gallery(models_dir, tmp_path):
    db = tmp_path / "people.db"
    penny = sorted((BBT / "penny").glob("*.png"))
    group = BBT / "group" / "bbt4.jpg"
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 127, np.uint8))
    r = run("enroll", "--json", "--gallery", db, "--name", "penny", *penny, group, blank, models=models_dir)
    out = json.loads(r.stdout)
    assert out["enrolled"] >= 3
    reasons = {x["source"]: x["reason"] for x in out["rejected"]}
    assert "faces found" in reasons[str(group)] and reasons[str(blank)] == "no face found"
    assert r.returncode == 1  # some photos were rejected
    r = run("enroll", "--gallery", db, "--name", "raj", *sorted((BBT / "raj").glob("*.png")), models=models_dir)
    assert r.returncode == 0, r.stderr
    listing = json.loads(run("gallery", "list", "--json", "--gallery", db).stdout)
    assert {p["name"] for p in listing["people"]} == {"penny", "raj"}
    assert run("gallery", "rename", "raj", "rajesh", "--gallery", db).returncode == 0
    r = run("identify", "--json", "--gallery", db, penny[0], lfw_image("Tony_Blair", 1), models=models_dir)
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert results[0]["faces"][0]["name"] == "penny"
    assert results[1]["faces"][0]["name"] is None
    assert run("gallery", "remove", "penny", "--gallery", db).returncode == 0
    r = run("gallery", "remove", "penny", "--gallery", db)
    assert r.returncode == 2 and "penny" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_gallery_from_another_embedder_is_refused(models_dir, tmp_path):
    from edgeface import Gallery

    db = tmp_path / "other.db"
    Gallery(db, "some-other-model:123", 128).close()
    r = run("identify", "--gallery", db, lfw_image("Tony_Blair", 1), models=models_dir)
    assert r.returncode == 2 and "other.db" in r.stderr and "some-other-model" in r.stderr


def test_missing_models_folder_says_how_to_build(tmp_path):
    r = run("detect", lfw_image("Tony_Blair", 1), models=tmp_path / "nowhere")
    assert r.returncode == 2 and "edgeface build" in r.stderr
