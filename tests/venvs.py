"""Side virtual environments for tests whose tools cannot share the project's environment.

``tflite-support`` 0.4.4 pins ``protobuf<4`` (TensorFlow 2.21 needs a newer one) and ``mediapipe`` brings
``opencv-contrib-python``, which would overwrite the project's ``opencv-python-headless`` ``cv2``. Each gets a
venv of its own, built once under ``<cache root>/venvs/<name>-<key>`` (:mod:`edgeface.paths`; ``key`` hashes
the requirements and the Python version, so changed requirements build a new one) and reused by later runs and by CI.

``python -m tests.venvs`` builds them all (``.ci/run`` calls it, so a CI run fails loudly at install time
instead of skipping).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgeface.paths import cache_root

REPO = Path(__file__).resolve().parents[1]
ROOT = cache_root() / "venvs"

#: name -> pinned requirements. mediapipe: its Python Tasks run the same C++ task graphs as Android.
REQUIREMENTS = {
    "mediapipe": ("mediapipe==1.2.3",),
    # tflite-support's MetadataDisplayer; needs the Debian package libusb-1.0-0 (its wheel links libusb).
    "tflite-support": ("tflite-support==0.4.4", "numpy<2"),
}


def key(name: str) -> str:
    h = hashlib.sha256(repr((REQUIREMENTS[name], sys.version_info[:2])).encode())
    return h.hexdigest()[:12]


def venv_python(name: str) -> Path:
    """The ``python`` of the side venv ``name``, built on first use (a lock keeps parallel runs apart)."""
    if name not in REQUIREMENTS:
        raise KeyError(f"unknown side venv {name!r}; known: {sorted(REQUIREMENTS)}")
    root = ROOT / f"{name}-{key(name)}"
    python = root / "bin" / "python"
    done = root / ".complete"
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(ROOT / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return python
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *REQUIREMENTS[name]], check=True)
        done.write_text("\n".join(REQUIREMENTS[name]) + "\n")
    return python


def run_json(name: str, script: Path, payload: dict, timeout: int = 900) -> dict:
    """Run ``script`` in the side venv with ``payload`` as JSON on stdin; its stdout is JSON."""
    import json

    r = subprocess.run([str(venv_python(name)), str(script)], input=json.dumps(payload), capture_output=True,
                       text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=""))
    if r.returncode != 0:
        raise RuntimeError(f"{script.name} in the {name} venv failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.splitlines()[-1])


if __name__ == "__main__":
    for n in sys.argv[1:] or sorted(REQUIREMENTS):
        print(f"{n}: {venv_python(n)}")
