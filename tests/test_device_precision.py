"""``[models] precision = "auto"``: the door runs the faster of int8 and float32 on this CPU, measured at start."""
from __future__ import annotations

import json
import shutil

import pytest

from edgeface.device import config as C
from edgeface.device.precision import FLOAT_MARGIN, choose_precision, pick
from edgeface.errors import EdgefaceError


def test_pick_keeps_int8_unless_float32_is_clearly_faster():
    assert pick({"int8": 10.0, "float32": 10.0 * FLOAT_MARGIN}) == "float32"
    assert pick({"int8": 10.0, "float32": 9.5}) == "int8"  # 5 % faster is a tie: int8 stays
    assert pick({"int8": 7.0, "float32": 9.8}) == "int8"
    assert pick({"int8": 12.0, "float32": 8.0}) == "float32"  # a CPU without int8 dot products


def test_auto_is_the_default_and_a_config_can_fix_the_precision():
    assert C.DeviceConfig().models.precision == "auto"
    assert C.from_dict({"models": {"precision": "float32"}}).models.precision == "float32"
    with pytest.raises(C.ConfigError, match="precision"):
        C.from_dict({"models": {"precision": "int4"}})


@pytest.mark.slow
def test_choose_precision_measures_both_on_the_real_models(models_dir):
    c = choose_precision(models_dir, threads=1)
    assert set(c.frame_ms) == {"int8", "float32"} and all(v > 0 for v in c.frame_ms.values())
    assert c.precision == pick(c.frame_ms)  # the measurement decides (int8 on this VNNI x86; a Pi may differ)
    assert f"{c.frame_ms['int8']:.1f} ms in int8" in c.reason and "float32" in c.reason
    tpu = choose_precision(models_dir, accelerator="edgetpu")
    assert tpu.precision == "int8" and tpu.frame_ms == {} and "Edge TPU" in tpu.reason


@pytest.mark.slow
def test_choose_precision_never_switches_silently_when_a_listed_model_is_broken(models_dir, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder)
    index = json.loads((folder / "models.json").read_text())
    (folder / index["int8"]["embedder"]).unlink()  # a listed int8 model is missing: an error, not float32
    with pytest.raises(EdgefaceError, match=index["int8"]["embedder"]):
        choose_precision(folder)
    del index["int8"]  # a folder built with one precision only runs that one, and says so
    (folder / "models.json").write_text(json.dumps(index))
    only = choose_precision(folder)
    assert only.precision == "float32" and only.frame_ms == {} and "float32 models only" in only.reason


@pytest.mark.slow
def test_doctor_and_the_recognizer_say_which_precision_runs_and_why(models_dir, tmp_path):
    from edgeface.device.app import StartupError, load_recognizer
    from edgeface.device.cli import doctor

    base = {"source": {"kind": "folder", "uri": str(tmp_path)}, "models": {"dir": str(models_dir)},
            "gallery": {"path": str(tmp_path / "g.db")}, "door": {"pin_factory": "mock"}}
    cfg = C.from_dict(base)
    checks = {c["check"]: c for c in doctor(cfg)}
    rec = load_recognizer(cfg)
    assert rec.precision in ("int8", "float32") and rec.precision_choice.frame_ms
    assert checks["precision"]["ok"] and checks["precision"]["detail"].startswith("auto: ")
    assert "measured on this CPU as the models load" in checks["precision"]["detail"]
    assert "(auto: " in checks["models"]["detail"]
    fixed = C.from_dict({**base, "models": {"dir": str(models_dir), "precision": "float32"}})
    rec = load_recognizer(fixed)
    assert rec.precision == "float32" and rec.precision_choice.frame_ms == {}  # nothing measured
    checks = {c["check"]: c for c in doctor(fixed)}
    assert "precision" not in checks and "(float32)" in checks["models"]["detail"]
    missing = C.from_dict({**base, "models": {"dir": str(tmp_path / "none")}})
    with pytest.raises(StartupError, match="models.json not found: build the models first"):
        load_recognizer(missing)
