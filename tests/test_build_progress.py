"""`edgeface build` progress: native (TensorFlow C++) stderr goes to a log file, Python output stays on the
console, one `[m:ss] stage` line per stage, and a closing table of the files written."""
import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import logging, os, sys, warnings
    from edgeface.converters.stages import quiet_native_log, stage
    logging.basicConfig(level=logging.WARNING)
    with quiet_native_log(sys.argv[1], verbose=sys.argv[2] == "1"):
        stage("converting")
        os.write(2, b"I tensorflow/core/util/port.cc:153] oneDNN custom operations are on\\n")
        logging.getLogger("edgeface.x").warning("our own warning")
        print("python line", file=sys.stderr)
        warnings.warn_explicit("Statistics for quantized inputs were expected", UserWarning, "convert.py", 846,
                               module="tensorflow.lite.python.convert")
        if sys.argv[3] == "1":
            raise SystemExit("failed")
""")


def _run(tmp_path, verbose=False, fail=False):
    log = tmp_path / "build.log"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(log), str(int(verbose)), str(int(fail))],
                       capture_output=True, text=True, timeout=60)
    return r, log


def test_native_log_goes_to_the_file_and_python_output_stays(tmp_path):
    r, log = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "oneDNN" not in r.stderr and "oneDNN" in log.read_text()
    assert "Statistics for quantized inputs" not in r.stderr  # TensorFlow's Python warnings are its log too
    lines = r.stderr.splitlines()
    assert lines[0] == "[0:00] converting" and "python line" in lines and "WARNING:edgeface.x:our own warning" in lines


def test_verbose_shows_everything_and_a_failure_names_the_log(tmp_path):
    r, log = _run(tmp_path, verbose=True)
    assert "oneDNN" in r.stderr and "Statistics for quantized inputs" in r.stderr and not log.exists()
    r, log = _run(tmp_path, fail=True)
    assert r.returncode == 1 and f"TensorFlow's log of this run: {log}" in r.stderr


@pytest.mark.slow  # needs built models
def test_closing_table_lists_every_file_with_size_and_threshold(models_dir):
    from edgeface.converters.commands import built_table

    index = json.loads((models_dir / "models.json").read_text())
    table = built_table(models_dir, index).splitlines()
    for precision in ("int8", "float32"):
        for role in ("detector", "embedder"):
            row = next(line for line in table if index[precision][role] in line)
            threshold = "min_cosine_similarity 0." if role == "embedder" else "min_score 0."
            assert precision in row and threshold in row
            assert row.split()[4] in ("KB", "MB")


def test_negative_qat_steps_is_one_line_before_any_work(tmp_path):
    out = tmp_path / "models"
    r = subprocess.run([sys.executable, "-m", "edgeface.cli", "build", "--out", str(out), "--qat-steps", "-1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "qat_steps must be >= 0" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()  # nothing written, nothing fetched


def test_centring_without_threshold_calibration_is_one_line_before_any_work(tmp_path):
    out = tmp_path / "models"
    r = subprocess.run([sys.executable, "-m", "edgeface.cli", "build", "--out", str(out), "--center-embeddings",
                        "--no-threshold-calibration"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "needs the threshold calibration" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("edgeface: error: centring"), r.stderr  # one line
    assert not out.exists()  # nothing written, nothing fetched
